"""The one importer of the compiled core (``pyse._core``).

Everything above this module speaks Python: floats for times, lists of
:class:`Event` for what happened, :class:`OSError` for a failed syscall (its
message says what the core was doing).  Below it, C return codes and cffi
structs.
"""
from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass, fields
from typing import Iterable, NamedTuple, Optional

from pyse._core import ffi, lib

UNSET = float(lib.PYSE_UNSET)


class EventKind(enum.IntEnum):
    SIGNAL = lib.PYSE_EV_SIGNAL
    EXITED = lib.PYSE_EV_EXITED
    HEARTBEAT = lib.PYSE_EV_HEARTBEAT
    CLOSED = lib.PYSE_EV_CLOSED
    HEARTBEAT_TIMEOUT = lib.PYSE_EV_HEARTBEAT_TIMEOUT
    GRACEFUL_TIMEOUT = lib.PYSE_EV_GRACEFUL_TIMEOUT
    KILL = lib.PYSE_EV_KILL
    TIMER = lib.PYSE_EV_TIMER
    WAKEUP = lib.PYSE_EV_WAKEUP
    PARENT_GONE = lib.PYSE_EV_PARENT_GONE


class Promotion(enum.IntEnum):
    NONE = lib.PYSE_PROMOTED_NONE
    HEARTBEAT = lib.PYSE_PROMOTED_HEARTBEAT
    GRACEFUL = lib.PYSE_PROMOTED_GRACEFUL


class Event(NamedTuple):
    """One thing the loop saw.  ``status`` is the raw wait status for EXITED,
    the signal number for SIGNAL and KILL; ``err`` is the errno of a failed
    kill (KILL) or read (CLOSED), else 0."""

    kind: EventKind
    pid: int
    status: int
    err: int


@dataclass(frozen=True)
class KillConfig:
    """Timing of the kill escalation for one child (SPEC section 5)."""

    heartbeat_timeout: float = 180.0
    graceful_interval: float = 15.0
    graceful_increment: float = 10.0
    graceful_timeout: float = 600.0
    immediate_interval: float = 10.0
    immediate_increment: float = 10.0
    immediate_timeout: float = 600.0
    graceful_signal: int = int(signal.SIGTERM)
    immediate_signal: int = int(signal.SIGQUIT)

    @classmethod
    def from_config(cls, config: dict, prefix: str = "worker_") -> "KillConfig":
        """Reads ``<prefix>heartbeat_timeout``, ``<prefix>graceful_kill_*`` and
        ``<prefix>immediate_kill_*`` from a validated configuration."""

        def get(key: str, default: float) -> float:
            value = config.get(prefix + key)
            return float(default if value is None else value)

        d = cls()
        return cls(
            heartbeat_timeout=get("heartbeat_timeout", d.heartbeat_timeout),
            graceful_interval=get("graceful_kill_interval", d.graceful_interval),
            graceful_increment=get("graceful_kill_interval_increment", d.graceful_increment),
            graceful_timeout=get("graceful_kill_timeout", d.graceful_timeout),
            immediate_interval=get("immediate_kill_interval", d.immediate_interval),
            immediate_increment=get("immediate_kill_interval_increment", d.immediate_increment),
            immediate_timeout=get("immediate_kill_timeout", d.immediate_timeout),
        )

    def to_c(self):
        c = ffi.new("struct pyse_kill_config *")
        for f in fields(self):
            setattr(c, f.name, getattr(self, f.name))
        return c


def _raise_oserror() -> None:
    err = ffi.errno
    context = ffi.string(lib.pyse_error_context()).decode()
    raise OSError(err, f"{context}: {os.strerror(err)}")


def _check(result: int) -> int:
    if result < 0:
        _raise_oserror()
    return result


def _time(t: Optional[float]) -> Optional[float]:
    return None if t == UNSET else t


def now() -> float:
    """CLOCK_MONOTONIC in seconds: the clock every deadline of the loop uses
    (the same clock as :func:`time.monotonic` on Linux)."""
    return lib.pyse_now()


class Monitor:
    """The pure escalation state of one child: decides, never sends.

    Tests drive it with a fake clock; the loop runs the same C code."""

    def __init__(self, now: float, watch_heartbeat: bool = True) -> None:
        self._m = ffi.new("struct pyse_monitor *")
        lib.pyse_monitor_init(self._m, now, int(watch_heartbeat))

    def graceful_stop(self, now: float) -> None:
        lib.pyse_monitor_graceful_stop(self._m, now)

    def immediate_stop(self, now: float) -> None:
        lib.pyse_monitor_immediate_stop(self._m, now)

    def heartbeat(self, now: float) -> None:
        lib.pyse_monitor_heartbeat(self._m, now)

    def child_gone(self) -> None:
        self._m.gone = 1

    def tick(self, config: KillConfig, now: float) -> tuple[int, Promotion]:
        """Returns (signal to send now or 0, why it was promoted this tick)."""
        promoted = ffi.new("int *")
        signo = lib.pyse_monitor_tick(self._m, config.to_c(), now, promoted)
        return signo, Promotion(promoted[0])

    def deadline(self, config: KillConfig) -> Optional[float]:
        return _time(lib.pyse_monitor_deadline(self._m, config.to_c()))

    @property
    def next_kill(self) -> Optional[float]:
        return _time(self._m.next_kill)

    @property
    def graceful_start(self) -> Optional[float]:
        return _time(self._m.graceful_start)

    @property
    def immediate_start(self) -> Optional[float]:
        return _time(self._m.immediate_start)

    @property
    def kill_count(self) -> int:
        return self._m.kill_count


class Loop:
    """The supervision loop of one process (see csrc/loop.c)."""

    MAX_EVENTS = 128

    def __init__(self, reap_any: bool = False) -> None:
        loop = lib.pyse_loop_new(int(reap_any))
        if loop == ffi.NULL:
            _raise_oserror()
        self._loop = loop
        self._events = ffi.new("struct pyse_event[]", self.MAX_EVENTS)
        self._wakeup_pipe: Optional[tuple[int, int]] = None
        self._previous_wakeup_fd: Optional[int] = None

    # -- signals ---------------------------------------------------------
    def own_signals(self, signals: Iterable[int]) -> None:
        """Takes over these signals (and SIGCHLD): they become SIGNAL events."""
        sigs = [int(s) for s in signals]
        _check(lib.pyse_loop_own_signals(self._loop, ffi.new("int[]", sigs), len(sigs)))

    def release_signals(self) -> None:
        _check(lib.pyse_loop_release_signals(self._loop))

    def watch_python_signals(self) -> None:
        """Wakes the wait when a signal with a Python handler arrives, so the
        handler runs promptly (main thread only, like signal.set_wakeup_fd)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wakeup_pipe = (r, w)
        _check(lib.pyse_loop_set_wakeup_fd(self._loop, r))

    def wake_on_readable(self, fd: int) -> None:
        """Makes fd this loop's wakeup fd (instead of watch_python_signals):
        when it turns readable, wait() drains it and returns a WAKEUP event.
        For a loop waited on by one thread that others must be able to wake."""
        _check(lib.pyse_loop_set_wakeup_fd(self._loop, fd))

    def set_lifeline_fd(self, fd: int, orphan_kill_delay: float = 0.0) -> None:
        """Watches fd's hangup (PARENT_GONE); with orphan_kill_delay > 0 the
        hangup also arms a SIGKILL of this process that many seconds later."""
        _check(lib.pyse_loop_set_lifeline_fd(self._loop, fd))
        _check(lib.pyse_loop_set_orphan_kill_delay(self._loop, orphan_kill_delay))

    # -- children --------------------------------------------------------
    def add_child(self, pid: int, heartbeat_fd: int, config: KillConfig,
                  now: Optional[float] = None) -> None:
        """Monitors pid.  The loop takes ownership of heartbeat_fd (-1: none)."""
        t = lib.pyse_now() if now is None else now
        _check(lib.pyse_loop_add_child(self._loop, pid, heartbeat_fd, config.to_c(), t))

    def set_child_config(self, pid: int, config: KillConfig) -> None:
        _check(lib.pyse_loop_set_child_config(self._loop, pid, config.to_c()))

    def stop_child(self, pid: int, immediate: bool, now: Optional[float] = None) -> None:
        t = lib.pyse_now() if now is None else now
        _check(lib.pyse_loop_stop_child(self._loop, pid, int(immediate), t))

    def monitor(self, pid: int) -> dict:
        m = ffi.new("struct pyse_monitor *")
        _check(lib.pyse_loop_get_monitor(self._loop, pid, m))
        return {
            "last_heartbeat": m.last_heartbeat,
            "next_kill": _time(m.next_kill),
            "graceful_start": _time(m.graceful_start),
            "immediate_start": _time(m.immediate_start),
            "kill_count": m.kill_count,
        }

    def __len__(self) -> int:
        return lib.pyse_loop_child_count(self._loop)

    # -- waiting ---------------------------------------------------------
    def wait(self, deadline: Optional[float] = None) -> list[Event]:
        """Blocks (without the GIL) until events arrive or deadline passes."""
        d = UNSET if deadline is None else deadline
        n = _check(lib.pyse_loop_wait(self._loop, d, self._events, self.MAX_EVENTS))
        evs = self._events
        return [Event(EventKind(evs[i].kind), evs[i].pid, evs[i].status, evs[i].err)
                for i in range(n)]

    # -- teardown --------------------------------------------------------
    def close(self) -> None:
        if self._loop is None:
            return
        if self._wakeup_pipe is not None:
            signal.set_wakeup_fd(-1 if self._previous_wakeup_fd is None
                                 else self._previous_wakeup_fd)
            for fd in self._wakeup_pipe:
                os.close(fd)
            self._wakeup_pipe = None
        lib.pyse_loop_free(self._loop)
        self._loop = None

    def abandon_in_child(self, close_fds: Iterable[int] = ()) -> None:
        """In a freshly forked child: drop the parent's loop (restore signal
        dispositions, close its fds) and close close_fds too."""
        fds = [int(fd) for fd in close_fds]
        if self._wakeup_pipe is not None:
            # The wakeup fd is process state inherited from the parent.
            signal.set_wakeup_fd(-1)
            fds.extend(self._wakeup_pipe)
            self._wakeup_pipe = None
        _check(lib.pyse_child_after_fork(self._loop, ffi.new("int[]", fds), len(fds)))
        lib.pyse_loop_free(self._loop)
        self._loop = None

    def __enter__(self) -> "Loop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def child_after_fork(close_fds: Iterable[int] = ()) -> None:
    """Child-side fd hygiene when no loop was inherited."""
    fds = [int(fd) for fd in close_fds]
    _check(lib.pyse_child_after_fork(ffi.NULL, ffi.new("int[]", fds), len(fds)))


def set_parent_death_signal(signo: int, expected_ppid: int) -> bool:
    """PR_SET_PDEATHSIG; returns True if the parent is already gone."""
    return bool(_check(lib.pyse_set_parent_death_signal(int(signo), expected_ppid)))


def prepare_orphan_kill(parent_pid: int, seconds: float) -> None:
    """Creates this process's orphan SIGKILL timer, armed (by C, from a
    signal handler if need be) once parent_pid is no longer the parent."""
    _check(lib.pyse_prepare_orphan_kill(parent_pid, float(seconds)))
