"""When a worker may start, and when restarts must stop: pure functions of
the configuration, a slot's history and now.

Three rules decide, and all are ours to test with a fake clock:

- the start delay (ServerEngine's ``start_worker_delay``): starts are spaced
  by ``delay + r*delay*rand - delay*rand/2`` (r uniform in [0, 1)) counted
  from the previous start of any slot;
- the crash-loop backoff: the first restart of a slot whose worker died
  unexpectedly is immediate; if it dies again, the next waits ``base``,
  then ``2*base``, ``4*base``... capped at ``maximum``.  A worker that
  lived ``reset`` seconds clears the count; ``base == 0`` turns it off;
- the restart intensity (Erlang/OTP's, systemd's ``StartLimitBurst``):
  ``max_count`` restarts within any ``window`` seconds are allowed, and the
  next one stops the server instead, so that what runs it (systemd, an
  orchestrator, a supervisor) can take over.  ``max_count == 0`` turns it
  off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


def start_spacing(delay: float, rand_ratio: float, r: float) -> float:
    """The gap to keep after the previous start, for a random draw r."""
    if delay <= 0:
        return 0.0
    return delay + r * delay * rand_ratio - delay * rand_ratio / 2


def backoff_delay(failures: int, base: float, maximum: float) -> float:
    """The wait before restarting a slot that has failed `failures` times in
    a row: none after the first failure, then base, doubling, capped."""
    if base <= 0 or failures <= 1:
        return 0.0
    # 2**failures overflows a float long before it matters: cap the exponent.
    return min(base * 2.0 ** min(failures - 2, 64), maximum)


def failures_after_exit(failures: int, lived: float, reset: float, stop_requested: bool) -> int:
    """The slot's failure count once its worker has exited after `lived`
    seconds.  An exit pyse asked for is no failure; a long life clears it."""
    if stop_requested:
        return 0
    if lived >= reset:
        return 1
    return failures + 1


@dataclass(frozen=True)
class StartTiming:
    delay: float
    rand_ratio: float
    backoff_base: float
    backoff_max: float
    backoff_reset: float

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "StartTiming":
        """From a validated configuration."""
        return cls(delay=config["start_worker_delay"],
                   rand_ratio=config["start_worker_delay_rand"],
                   backoff_base=config["restart_backoff_base"],
                   backoff_max=config["restart_backoff_max"],
                   backoff_reset=config["restart_backoff_reset"])


def earliest_start(timing: StartTiming, last_start: float | None, r: float,
                   died_at: float | None, failures: int) -> float:
    """The earliest time a waiting slot may start (compare it with now).

    last_start: the previous start of any slot (None: none yet);
    died_at/failures: when this slot's worker exited and its failure count."""
    t = 0.0
    if last_start is not None:
        t = last_start + start_spacing(timing.delay, timing.rand_ratio, r)
    if died_at is not None:
        t = max(t, died_at + backoff_delay(failures, timing.backoff_base, timing.backoff_max))
    return t


@dataclass
class SlotHistory:
    """The life of one worker slot so far: what the backoff needs."""

    started_at: Optional[float] = None
    died_at: Optional[float] = None
    failures: int = 0           # unexpected exits in a row
    starts: int = 0
    #: the latest exit, for status: (how it ended, e.g. "signal SIGKILL";
    #: its exit code or None; when)
    last_exit: Optional[tuple[str, Optional[int], float]] = None

    def record_start(self, now: float) -> None:
        self.started_at = now
        self.starts += 1

    def record_failed_start(self, now: float) -> None:
        """A start that failed in the parent (before_fork raised, fork
        failed): a crash like any other."""
        self.died_at = now
        self.failures += 1

    def record_exit(self, timing: StartTiming, now: float, stop_requested: bool) -> float:
        """Counts the exit; returns the backoff before the next start."""
        lived = now - (self.started_at if self.started_at is not None else now)
        self.failures = failures_after_exit(self.failures, lived, timing.backoff_reset,
                                            stop_requested)
        self.died_at = now
        return backoff_delay(self.failures, timing.backoff_base, timing.backoff_max)


class RestartIntensity:
    """Restarts after unexpected exits, counted over a sliding window:
    ``allow(now)`` records a restart and says whether it may happen."""

    def __init__(self, max_count: int, window: float) -> None:
        self.max_count = max_count
        self.window = window
        self.restarts: list[float] = []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "RestartIntensity":
        return cls(config["restart_max_count"], config["restart_max_window"])

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.max_count = config["restart_max_count"]
        self.window = config["restart_max_window"]

    def allow(self, now: float) -> bool:
        """True (and the restart is counted) unless max_count restarts
        already happened within the last `window` seconds."""
        if self.max_count <= 0:
            return True
        self.restarts = [t for t in self.restarts if t > now - self.window]
        if len(self.restarts) >= self.max_count:
            return False
        self.restarts.append(now)
        return True
