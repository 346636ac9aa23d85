"""One launch of an engine (``Launch``) and the measurements taken on a
launch of a few workers: respawn, churn, graceful stop, orphans.

Times of worker events are the workers' own CLOCK_MONOTONIC readings; times
of deaths are when the bench's pidfd poll returned.  Every launch runs in a
new session, and leaving its ``with`` block SIGKILLs its process group and
every worker it saw, then reaps them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from engines import Engine
from procfs import read_memory
from watcher import BenchError, Event, Watcher, now, reap_children

STOP_TIMEOUT = 20.0


def ready_timeout(workers: int) -> float:
    """ServerEngine and gunicorn take ~55 ms per worker to boot."""
    return 30.0 + 0.25 * workers


class Launch:
    counter = 0

    def __init__(self, engine: Engine, watcher: Watcher, tmp: Path, workers: int,
                 mode: str = "normal", port: Optional[int] = None) -> None:
        Launch.counter += 1
        self.engine, self.watcher, self.workers = engine, watcher, workers
        self.dir = tmp / f"{engine.key}-{Launch.counter}"
        self.dir.mkdir()
        cmd, extra_env = engine.command(self.dir, workers, mode, port)
        env = dict(os.environ, BENCH_EVENTS=str(watcher.path), **extra_env)
        self.output = open(self.dir / "output.log", "wb")
        self.mark = self.scanned = len(watcher.events)
        self.ready_times: list[float] = []    # first ready of each worker, in arrival order
        self.t_launch = now()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        watcher.watch(self.proc.pid)

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_everything()

    # -- what the events say ----------------------------------------------------
    def events(self, kind: str) -> list[Event]:
        return self.watcher.since(self.mark, kind)

    def worker_pids(self) -> list[int]:
        """Every worker that reported ready during this launch."""
        return [pid for pid, i in self.watcher.ready_index.items() if i >= self.mark]

    def gone_at(self, pid: int) -> Optional[float]:
        """When ``pid`` died, counting only a death after its own ready line
        (a recycled pid may have died once already as some other process)."""
        i = self.watcher.gone_index.get(pid)
        return self.watcher.events[i].t if i is not None and i >= self.mark else None

    def live_workers(self) -> list[int]:
        return [p for p in self.worker_pids() if self.gone_at(p) is None]

    def server_log(self) -> str:
        log = self.dir / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def describe(self) -> str:
        tail = self.server_log().splitlines()[-5:]
        return f"{self.engine.title} (logs in {self.dir}): " + " | ".join(tail)

    def server_rss_kb(self) -> int:
        return read_memory(self.proc.pid).rss_kb

    # -- waiting ---------------------------------------------------------------
    def _scan_ready(self) -> None:
        events = self.watcher.events
        self.ready_times += [e.t for e in events[self.scanned:] if e.kind == "ready"]
        self.scanned = len(events)

    def wait_ready(self, timeout: Optional[float] = None) -> float:
        """Waits for the first ``workers`` workers to report ready; returns
        the time from launch to the last of them (the boot)."""
        n = self.workers
        timeout = timeout or ready_timeout(n)

        def ready() -> Optional[list[float]]:
            self._scan_ready()
            if self.gone_at(self.proc.pid) is not None:
                raise BenchError(f"the master exited during start: {self.describe()}")
            return self.ready_times[:n] if len(self.ready_times) >= n else None
        times = self.watcher.wait_for(ready, timeout, f"{n} ready workers of {self.engine.title}")
        return max(times) - self.t_launch

    def wait_gone(self, pids: list[int], timeout: float, what: str) -> dict[int, float]:
        if not pids:
            return {}   # wait_for takes an empty result for "not yet"

        def all_gone() -> Optional[dict[int, float]]:
            times = {p: self.gone_at(p) for p in pids}
            return times if all(t is not None for t in times.values()) else None  # type: ignore[misc]
        try:
            return self.watcher.wait_for(all_gone, timeout, what)
        except BenchError as e:
            alive = [p for p in pids if self.gone_at(p) is None]
            roles = ", ".join(("master " if p == self.proc.pid else "worker ") + str(p)
                              for p in alive[:10])
            raise BenchError(f"{e}; still alive: {roles}; {self.describe()}") from None

    def kill_everything(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: everything already exited
        live = self.live_workers()
        for pid in live:
            self.watcher.kill(pid, signal.SIGKILL)  # one that left the group
        self.proc.wait()
        try:
            self.wait_gone(live, 10.0, "the SIGKILLed workers")
        except BenchError as e:
            # Cleaning up must not hide the measurement's own outcome.
            print(f"warning: {e}", file=sys.stderr)
        finally:
            reap_children()
            self.output.close()


# -- the measurements ------------------------------------------------------------
def graceful_stop(run: Launch) -> float:
    """TERM to the master; time until the master and every worker are gone."""
    pids = [run.proc.pid, *run.live_workers()]
    t0 = now()
    run.proc.send_signal(signal.SIGTERM)
    times = run.wait_gone(pids, STOP_TIMEOUT, f"{run.engine.title} to stop")
    return max(times.values()) - t0


def boot_then_stop(run: Launch) -> float:
    run.wait_ready()
    return graceful_stop(run)


@dataclass(frozen=True)
class Respawn:
    latency: float            # kill -> replacement ready
    to_fork: Optional[float]  # kill -> the master's "fork" line (before_fork)


def respawn_latencies(run: Launch, kills: int, gap: float) -> list[Respawn]:
    """SIGKILL a worker, time until its replacement reports ready; again,
    ``gap`` seconds after the replacement is ready (gunicorn's master sleeps
    up to 100 ms after each fork: a kill back-to-back with a respawn would
    time that sleep, not the reaction to a death)."""
    run.wait_ready()
    live = run.live_workers()
    watcher = run.watcher
    latencies: list[Respawn] = []
    for i in range(kills):
        if latencies:
            watcher.drain_until(now() + gap)
        slot = i % len(live)
        mark = len(watcher.events)
        t0 = now()
        if not watcher.kill(live[slot], signal.SIGKILL):
            raise BenchError(f"worker {live[slot]} was gone before the kill: {run.describe()}")
        replacement = watcher.wait_for(
            lambda: next((e for e in watcher.events[mark:] if e.kind == "ready"), None),
            10.0, f"the replacement of a killed {run.engine.title} worker (kill {i + 1})")
        fork = next((e for e in watcher.events[mark:] if e.kind == "fork"), None)
        latencies.append(Respawn(replacement.t - t0, fork.t - t0 if fork else None))
        live[slot] = replacement.pid
    return latencies


def kill_as_started(run: Launch, done: Callable[[int], bool],
                    started: Callable[[int, Event], None]) -> int:
    """Kills every worker the moment the bench reads its ready line (and,
    first, every live one), so the server does nothing but replace workers,
    until ``done(starts)``; calls ``started(starts, event)`` for each."""
    run.wait_ready()
    watcher = run.watcher
    position = len(watcher.events)
    for pid in run.live_workers():
        watcher.kill(pid, signal.SIGKILL)
    starts = 0
    while not done(starts):
        watcher.poll(0.2)
        if run.gone_at(run.proc.pid) is not None:
            raise BenchError(f"the master died during the churn: {run.describe()}")
        events = watcher.events
        for e in events[position:]:
            if e.kind == "ready":
                watcher.kill(e.pid, signal.SIGKILL)
                starts += 1
                started(starts, e)
        position = len(events)
    return starts


def churn_rate(run: Launch, warmup: float, window: float) -> float:
    """Starts per second, counted by the workers' own timestamps in
    ``window`` seconds after ``warmup``."""
    t0 = now()
    counted = []
    kill_as_started(run, lambda starts: now() >= t0 + warmup + window,
                    lambda starts, e: counted.append(t0 + warmup <= e.t < t0 + warmup + window))
    return sum(counted) / window


@dataclass
class ChurnMemory:
    starts: int
    seconds: float
    rss_kb: list[tuple[int, int]] = field(default_factory=list)  # (starts so far, server RSS)


def churn_memory(run: Launch, target: int, cap: float, samples: int) -> ChurnMemory:
    """Churns to ``target`` starts (or ``cap`` seconds) and reads the
    server's RSS before and ``samples`` times on the way."""
    every = max(1, target // samples)
    t0 = now()
    result = ChurnMemory(0, 0.0)

    def sample(starts: int, event: Event) -> None:
        if starts % every == 0 and starts <= target:
            result.rss_kb.append((starts, run.server_rss_kb()))
    run.wait_ready()
    result.rss_kb.append((0, run.server_rss_kb()))
    result.starts = kill_as_started(run, lambda starts: starts >= target or now() >= t0 + cap,
                                    sample)
    result.seconds = now() - t0
    return result


@dataclass
class Orphans:
    workers: int
    alive_after_1s: int
    all_gone_after: Optional[float]   # None: still alive at the end of the window
    window: float


def orphans_after_master_kill(run: Launch, window: float) -> Orphans:
    """SIGKILL the master; count live workers 1 s later; wait up to
    ``window`` more seconds for the rest."""
    run.wait_ready()
    workers = run.live_workers()
    t0 = now()
    run.proc.kill()
    run.watcher.drain_until(t0 + 1.0)
    alive = sum(1 for p in workers if (run.gone_at(p) or float("inf")) > t0 + 1.0)
    try:
        times = run.wait_gone(workers, window, "orphans to exit")
        gone_after: Optional[float] = max(times.values()) - t0
    except BenchError:
        gone_after = None
    return Orphans(len(workers), alive, gone_after, 1.0 + window)
