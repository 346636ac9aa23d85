"""Types of the compiled core, ``pyse._core``, which cffi builds from
csrc/pyse_core.h (see build.py).  Only pyse.lowlevel imports it.

cffi hands out untyped "cdata" objects; the classes below name the ones
the core's API uses, so that the type checker holds lowlevel.py to the C
signatures.  They exist only here: at run time every one of them is a
``_cffi_backend`` cdata.  Keep them in step with the header.
"""
from typing import Final, Literal, overload

class CData:
    """Any cdata.  Two pointers compare equal when they hold one address."""
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

class IntPointer(CData):
    """``int *``, ``int64_t *`` or ``int[]``: indexable ints."""
    def __getitem__(self, index: int) -> int: ...
    def __setitem__(self, index: int, value: int) -> None: ...

class CharPointer(CData):
    """``const char *``: read it with ``ffi.string``."""

class NullPointer(CData):
    """``ffi.NULL``."""

class KillConfigPointer(CData):
    """``struct pyse_kill_config *``: times in int64 nanoseconds."""
    heartbeat_timeout: int
    graceful_interval: int
    graceful_increment: int
    graceful_timeout: int
    immediate_interval: int
    immediate_increment: int
    immediate_timeout: int
    graceful_signal: int
    immediate_signal: int

class MonitorPointer(CData):
    """``struct pyse_monitor *``."""
    last_heartbeat: int
    next_kill: int
    graceful_start: int
    immediate_start: int
    kill_count: int
    watch_heartbeat: int
    gone: int

class EventStruct(CData):
    """One ``struct pyse_event``."""
    kind: int
    pid: int
    status: int
    err: int

class EventArray(CData):
    """``struct pyse_event[]``."""
    def __getitem__(self, index: int) -> EventStruct: ...

class LoopPointer(CData):
    """``struct pyse_loop *``: opaque; NULL when ``pyse_loop_new`` failed
    (it compares equal to ``ffi.NULL`` then)."""

class _FFI:
    NULL: Final[NullPointer]
    errno: int
    @overload
    def new(self, cdecl: Literal["int *", "int64_t *"]) -> IntPointer: ...
    @overload
    def new(self, cdecl: Literal["int[]"], init: list[int]) -> IntPointer: ...
    @overload
    def new(self, cdecl: Literal["struct pyse_kill_config *"]) -> KillConfigPointer: ...
    @overload
    def new(self, cdecl: Literal["struct pyse_monitor *"]) -> MonitorPointer: ...
    @overload
    def new(self, cdecl: Literal["struct pyse_event[]"], init: int) -> EventArray: ...
    def string(self, cdata: CharPointer) -> bytes: ...

class _Lib:
    PYSE_EV_SIGNAL: Final[int]
    PYSE_EV_EXITED: Final[int]
    PYSE_EV_HEARTBEAT: Final[int]
    PYSE_EV_CLOSED: Final[int]
    PYSE_EV_HEARTBEAT_TIMEOUT: Final[int]
    PYSE_EV_GRACEFUL_TIMEOUT: Final[int]
    PYSE_EV_KILL: Final[int]
    PYSE_EV_TIMER: Final[int]
    PYSE_EV_WAKEUP: Final[int]
    PYSE_EV_PARENT_GONE: Final[int]
    PYSE_EV_FD_READY: Final[int]
    PYSE_READABLE: Final[int]
    PYSE_WRITABLE: Final[int]
    PYSE_NO_TIME: Final[int]
    PYSE_PROMOTED_NONE: Final[int]
    PYSE_PROMOTED_HEARTBEAT: Final[int]
    PYSE_PROMOTED_GRACEFUL: Final[int]
    PYSE_CHILD_HEARTBEAT_OPTIONAL: Final[int]
    PYSE_CHILD_STAMPED_BEATS: Final[int]

    def pyse_clock_now(self, now: IntPointer, /) -> int: ...
    def pyse_monitor_init(self, m: MonitorPointer, now: int, watch_heartbeat: int, /) -> None: ...
    def pyse_monitor_graceful_stop(self, m: MonitorPointer, now: int, /) -> None: ...
    def pyse_monitor_immediate_stop(self, m: MonitorPointer, now: int, /) -> None: ...
    def pyse_monitor_heartbeat(self, m: MonitorPointer, now: int, /) -> None: ...
    def pyse_monitor_tick(self, m: MonitorPointer, c: KillConfigPointer, now: int,
                          promoted: IntPointer, /) -> int: ...
    def pyse_monitor_deadline(self, m: MonitorPointer, c: KillConfigPointer, /) -> int: ...
    def pyse_loop_new(self, reap_any: int, /) -> LoopPointer: ...
    def pyse_loop_free(self, loop: LoopPointer, /) -> None: ...
    def pyse_loop_own_signals(self, loop: LoopPointer, signals: IntPointer, count: int, /) -> int: ...
    def pyse_loop_release_signals(self, loop: LoopPointer, /) -> int: ...
    def pyse_loop_set_wakeup_fd(self, loop: LoopPointer, fd: int, /) -> int: ...
    def pyse_loop_set_lifeline_fd(self, loop: LoopPointer, fd: int,
                                  orphan_kill_delay: int, /) -> int: ...
    def pyse_loop_set_parent_heartbeat(self, loop: LoopPointer, fd: int, interval: int, /) -> int: ...
    def pyse_loop_watch_fd(self, loop: LoopPointer, fd: int, events: int, /) -> int: ...
    def pyse_loop_add_child(self, loop: LoopPointer, pid: int, heartbeat_fd: int, flags: int,
                            config: KillConfigPointer, now: int, /) -> int: ...
    def pyse_loop_set_child_config(self, loop: LoopPointer, pid: int,
                                   config: KillConfigPointer, /) -> int: ...
    def pyse_loop_stop_child(self, loop: LoopPointer, pid: int, immediate: int, now: int, /) -> int: ...
    def pyse_loop_get_monitor(self, loop: LoopPointer, pid: int, out: MonitorPointer, /) -> int: ...
    def pyse_loop_refresh_child(self, loop: LoopPointer, pid: int, now: int, /) -> int: ...
    def pyse_loop_child_count(self, loop: LoopPointer, /) -> int: ...
    def pyse_loop_wait(self, loop: LoopPointer, deadline: int, out: EventArray,
                       max_events: int, /) -> int: ...
    def pyse_child_after_fork(self, loop: LoopPointer | NullPointer, close_fds: IntPointer,
                              count: int, /) -> int: ...
    def pyse_set_parent_death_signal(self, signo: int, expected_ppid: int, /) -> int: ...
    def pyse_prepare_orphan_kill(self, parent_pid: int, delay: int, /) -> int: ...
    def pyse_error_context(self, /) -> CharPointer: ...

ffi: _FFI
lib: _Lib
