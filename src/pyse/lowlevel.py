"""The one importer of the compiled core (``pyse._core``).

Everything above this module speaks Python: float seconds of
CLOCK_MONOTONIC for times, lists of :class:`Event` for what happened,
:class:`OSError` for a failed syscall (its message says what the core was
doing, naming the pid or fd).  Below it, C return codes, cffi structs and
int64 nanoseconds.  This module knows the C API, not pyse's configuration
keys.
"""
from __future__ import annotations

import enum
import os
import signal
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple, NoReturn, Optional

from pyse._core import ffi, lib

if TYPE_CHECKING:  # pragma: no cover
    from pyse._core import KillConfigPointer, LoopPointer

NS_PER_SECOND = 1_000_000_000
#: the longest duration the core is given: 30 years; longer means "never"
#: in practice, and keeps every sum of times far from int64's end
MAX_SECONDS = 1e9
NO_TIME = lib.PYSE_NO_TIME


def seconds_to_ns(seconds: float) -> int:
    """A duration or time in integer nanoseconds; negative durations (the
    configuration's -1, "never") stay -1."""
    if seconds < 0:
        return -1
    return round(min(float(seconds), MAX_SECONDS) * NS_PER_SECOND)


def ns_to_seconds(ns: int) -> float:
    return ns / NS_PER_SECOND


class EventKind(enum.IntEnum):
    SIGNAL = lib.PYSE_EV_SIGNAL
    EXITED = lib.PYSE_EV_EXITED
    HEARTBEAT = lib.PYSE_EV_HEARTBEAT          # the child's first beat: it is up
    CLOSED = lib.PYSE_EV_CLOSED
    HEARTBEAT_TIMEOUT = lib.PYSE_EV_HEARTBEAT_TIMEOUT
    GRACEFUL_TIMEOUT = lib.PYSE_EV_GRACEFUL_TIMEOUT
    KILL = lib.PYSE_EV_KILL
    TIMER = lib.PYSE_EV_TIMER
    WAKEUP = lib.PYSE_EV_WAKEUP
    PARENT_GONE = lib.PYSE_EV_PARENT_GONE
    FD_READY = lib.PYSE_EV_FD_READY


READABLE = lib.PYSE_READABLE
WRITABLE = lib.PYSE_WRITABLE


class Promotion(enum.IntEnum):
    NONE = lib.PYSE_PROMOTED_NONE
    HEARTBEAT = lib.PYSE_PROMOTED_HEARTBEAT
    GRACEFUL = lib.PYSE_PROMOTED_GRACEFUL


class Event(NamedTuple):
    """One thing the loop saw.  ``pid`` is the child (the fd for FD_READY);
    ``status`` is the raw wait status for EXITED, the signal number for
    SIGNAL and KILL, READABLE/WRITABLE bits for FD_READY; ``err`` is the
    errno of a failed kill (KILL) or read (CLOSED), else 0."""

    kind: EventKind
    pid: int
    status: int
    err: int


@dataclass(frozen=True)
class KillConfig:
    """Timing of the kill escalation of one child, in seconds (-1 for a
    timeout: never).  The values come from the configuration (see
    :func:`pyse.process_manager.kill_config`); the signals are pyse's."""

    heartbeat_timeout: float
    graceful_interval: float
    graceful_increment: float
    graceful_timeout: float
    immediate_interval: float
    immediate_increment: float
    immediate_timeout: float
    graceful_signal: int = int(signal.SIGTERM)
    immediate_signal: int = int(signal.SIGQUIT)

    def to_c(self) -> KillConfigPointer:
        c = ffi.new("struct pyse_kill_config *")
        for f in fields(self):
            value = getattr(self, f.name)
            setattr(c, f.name, value if f.name.endswith("_signal") else seconds_to_ns(value))
        return c


def _raise_oserror() -> NoReturn:
    err = ffi.errno
    context = ffi.string(lib.pyse_error_context()).decode(errors="replace")
    raise OSError(err, f"{context}: {os.strerror(err)}")


def _check(result: int) -> int:
    if result < 0:
        _raise_oserror()
    return result


def now_ns() -> int:
    """CLOCK_MONOTONIC in integer nanoseconds."""
    out = ffi.new("int64_t *")
    _check(lib.pyse_clock_now(out))
    return out[0]


def now() -> float:
    """CLOCK_MONOTONIC in seconds: the clock every deadline of the loop uses
    (the same clock as :func:`time.monotonic` on Linux)."""
    return now_ns() / NS_PER_SECOND


def _time(t: int) -> Optional[int]:
    return None if t == NO_TIME else t


class Monitor:
    """The pure escalation state of one child: decides, never sends.  Times
    are integer nanoseconds, as in the core.

    Tests drive it with a fake clock; the loop runs the same C code."""

    def __init__(self, now: int, watch_heartbeat: bool = True) -> None:
        self._m = ffi.new("struct pyse_monitor *")
        lib.pyse_monitor_init(self._m, now, int(watch_heartbeat))

    def graceful_stop(self, now: int) -> None:
        lib.pyse_monitor_graceful_stop(self._m, now)

    def immediate_stop(self, now: int) -> None:
        lib.pyse_monitor_immediate_stop(self._m, now)

    def heartbeat(self, now: int) -> None:
        lib.pyse_monitor_heartbeat(self._m, now)

    def child_gone(self) -> None:
        self._m.gone = 1

    def tick(self, config: KillConfig, now: int) -> tuple[int, Promotion]:
        """Returns (signal to send now or 0, why it was promoted this tick)."""
        promoted = ffi.new("int *")
        signo = lib.pyse_monitor_tick(self._m, config.to_c(), now, promoted)
        return signo, Promotion(promoted[0])

    def deadline(self, config: KillConfig) -> Optional[int]:
        return _time(lib.pyse_monitor_deadline(self._m, config.to_c()))

    @property
    def next_kill(self) -> Optional[int]:
        return _time(self._m.next_kill)

    @property
    def graceful_start(self) -> Optional[int]:
        return _time(self._m.graceful_start)

    @property
    def immediate_start(self) -> Optional[int]:
        return _time(self._m.immediate_start)

    @property
    def last_heartbeat(self) -> int:
        return self._m.last_heartbeat

    @property
    def kill_count(self) -> int:
        return self._m.kill_count


def _ns_or_now(t: Optional[float]) -> int:
    return now_ns() if t is None else round(t * NS_PER_SECOND)


class Loop:
    """The supervision loop of one process (see csrc/loop.c)."""

    MAX_EVENTS = 128

    def __init__(self, reap_any: bool = False) -> None:
        loop = lib.pyse_loop_new(int(reap_any))
        if loop == ffi.NULL:
            _raise_oserror()
        self._loop: Optional[LoopPointer] = loop
        self._events = ffi.new("struct pyse_event[]", self.MAX_EVENTS)
        self._wakeup_pipe: Optional[tuple[int, int]] = None
        self._previous_wakeup_fd: Optional[int] = None
        #: whether this loop owns signals (SIGCHLD at least): without it,
        #: a child's death is seen only at the next wake-up
        self.owns_signals = False

    @property
    def _live_loop(self) -> LoopPointer:
        # close() and abandon_in_child() end the C loop; a call after them
        # gets this error rather than cffi's TypeError about None.
        if self._loop is None:
            raise ValueError("the supervision loop is closed")
        return self._loop

    # -- signals ---------------------------------------------------------
    def own_signals(self, signals: Iterable[int]) -> None:
        """Takes over these signals (and SIGCHLD) and unblocks them in the
        calling thread: they become SIGNAL events."""
        sigs = [int(s) for s in signals]
        _check(lib.pyse_loop_own_signals(self._live_loop, ffi.new("int[]", sigs), len(sigs)))
        self.owns_signals = True

    def release_signals(self) -> None:
        _check(lib.pyse_loop_release_signals(self._live_loop))
        self.owns_signals = False

    def watch_python_signals(self) -> None:
        """Wakes the wait when a signal with a Python handler arrives, so the
        handler runs promptly (main thread only, like signal.set_wakeup_fd)."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._wakeup_pipe = (r, w)
        _check(lib.pyse_loop_set_wakeup_fd(self._live_loop, r))

    def wake_on_readable(self, fd: int) -> None:
        """Makes fd this loop's wakeup fd (instead of watch_python_signals):
        when it turns readable, wait() drains it and returns a WAKEUP event.
        For a loop waited on by one thread that others must be able to wake."""
        _check(lib.pyse_loop_set_wakeup_fd(self._live_loop, fd))

    # -- the parent ------------------------------------------------------
    def set_lifeline_fd(self, fd: int, orphan_kill_delay: float = 0.0) -> None:
        """Watches fd's hangup (PARENT_GONE); with orphan_kill_delay > 0 the
        hangup also arms a SIGKILL of this process that many seconds later."""
        _check(lib.pyse_loop_set_lifeline_fd(self._live_loop, fd,
                                             max(0, seconds_to_ns(orphan_kill_delay))))

    def set_parent_heartbeat(self, fd: int, interval: float) -> None:
        """Beats toward the parent through fd (non-blocking; -1: none): a
        stamp on every entry into wait() once ``interval`` has passed since
        the last one.  A wait returns (maybe with no event) when a beat is
        due, so that the beat proves the caller runs; EPIPE is PARENT_GONE."""
        if fd >= 0:
            os.set_blocking(fd, False)
        _check(lib.pyse_loop_set_parent_heartbeat(self._live_loop, fd, seconds_to_ns(interval)))

    # -- fds ---------------------------------------------------------------
    def watch_fd(self, fd: int, readable: bool = True, writable: bool = False) -> None:
        """FD_READY events while fd is readable/writable (level-triggered:
        until the caller reads, writes, or stops watching it).  The fd stays
        the caller's; stop watching it before closing it."""
        events = (READABLE if readable else 0) | (WRITABLE if writable else 0)
        _check(lib.pyse_loop_watch_fd(self._live_loop, fd, events))

    def unwatch_fd(self, fd: int) -> None:
        _check(lib.pyse_loop_watch_fd(self._live_loop, fd, 0))

    # -- children --------------------------------------------------------
    def add_child(self, pid: int, heartbeat_fd: int, config: KillConfig,
                  now: Optional[float] = None, *, stamped: bool = True,
                  heartbeat_optional: bool = False) -> None:
        """Monitors pid.  The loop takes ownership of heartbeat_fd (-1: none).
        stamped: the child beats with stamps (pyse's own children); else any
        bytes are a beat.  heartbeat_optional: the heartbeat timeout applies
        only once the child has beaten (programs that may never)."""
        flags = ((lib.PYSE_CHILD_STAMPED_BEATS if stamped else 0)
                 | (lib.PYSE_CHILD_HEARTBEAT_OPTIONAL if heartbeat_optional else 0))
        _check(lib.pyse_loop_add_child(self._live_loop, pid, heartbeat_fd, flags, config.to_c(),
                                       _ns_or_now(now)))

    def set_child_config(self, pid: int, config: KillConfig) -> None:
        _check(lib.pyse_loop_set_child_config(self._live_loop, pid, config.to_c()))

    def stop_child(self, pid: int, immediate: bool, now: Optional[float] = None) -> None:
        _check(lib.pyse_loop_stop_child(self._live_loop, pid, int(immediate), _ns_or_now(now)))

    def monitor(self, pid: int) -> dict[str, Any]:
        """The child's escalation state, times in seconds (None: unset)."""
        m = ffi.new("struct pyse_monitor *")
        _check(lib.pyse_loop_get_monitor(self._live_loop, pid, m))

        def seconds(t: int) -> Optional[float]:
            return None if t == NO_TIME else ns_to_seconds(t)
        return {
            "last_heartbeat": ns_to_seconds(m.last_heartbeat),
            "next_kill": seconds(m.next_kill),
            "graceful_start": seconds(m.graceful_start),
            "immediate_start": seconds(m.immediate_start),
            "kill_count": m.kill_count,
        }

    def refresh_child(self, pid: int, now: Optional[float] = None) -> None:
        """Reads the child's heartbeat pipe now, so that ``monitor(pid)``'s
        last_heartbeat is fresh (a pyse child's stamps are otherwise read
        only at its heartbeat deadline).  What the read finds (a first beat,
        end of file) comes out of the next wait()."""
        _check(lib.pyse_loop_refresh_child(self._live_loop, pid, _ns_or_now(now)))

    def __len__(self) -> int:
        return lib.pyse_loop_child_count(self._live_loop)

    # -- waiting ---------------------------------------------------------
    def wait(self, deadline: Optional[float] = None) -> list[Event]:
        """Blocks (without the GIL) until events arrive or deadline passes
        (a TIMER event).  An empty list: a parent heartbeat is due."""
        d = NO_TIME if deadline is None else max(0, round(deadline * NS_PER_SECOND))
        n = _check(lib.pyse_loop_wait(self._live_loop, d, self._events, self.MAX_EVENTS))
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
        loop = self._live_loop
        try:
            _check(lib.pyse_child_after_fork(loop, ffi.new("int[]", fds), len(fds)))
        finally:
            lib.pyse_loop_free(loop)
            self._loop = None

    def __enter__(self) -> "Loop":
        return self

    def __exit__(self, *exc: object) -> None:
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
    _check(lib.pyse_prepare_orphan_kill(parent_pid, seconds_to_ns(seconds)))
