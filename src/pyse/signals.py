"""What each signal means to pyse's processes: the one map (ServerEngine's).

A supervisor forwards what it receives to its server, a server to its
workers; each process acts on the name, looked up as a method
``handle_<action>``.
"""
from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union

from pyse.lowlevel import Event, EventKind

_E = TypeVar("_E", bound=Event)

GRACEFUL_STOP = signal.SIGTERM
IMMEDIATE_STOP = signal.SIGQUIT
GRACEFUL_RESTART = signal.SIGUSR1
IMMEDIATE_RESTART = signal.SIGHUP
RELOAD = signal.SIGUSR2
DETACH = signal.SIGINT


def dump_signal(environ: Mapping[str, str] = os.environ) -> signal.Signals:
    """The signal that asks for a sigdump: CONT, or the one named by
    SIGDUMP_SIGNAL (as Ruby's sigdump reads it: "TSTP", "SIGTSTP" or a
    number), unless that one already has another meaning here."""
    name = environ.get("SIGDUMP_SIGNAL", "").strip().upper()
    if not name:
        return signal.SIGCONT
    try:
        chosen = signal.Signals(int(name)) if name.isdigit() else \
            signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        return signal.SIGCONT
    taken = (GRACEFUL_STOP, IMMEDIATE_STOP, GRACEFUL_RESTART, IMMEDIATE_RESTART, RELOAD, DETACH,
             signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)
    return signal.SIGCONT if chosen in taken else chosen


DUMP = dump_signal()

#: signal -> action of a server or supervisor (keyed by int: a signal
#: number looks its action up as it comes)
SERVER_ACTIONS: dict[int, str] = {
    GRACEFUL_STOP: "graceful_stop",
    IMMEDIATE_STOP: "immediate_stop",
    GRACEFUL_RESTART: "graceful_restart",
    IMMEDIATE_RESTART: "immediate_restart",
    RELOAD: "reload",
    DETACH: "detach",
    DUMP: "dump",
}

#: signal -> action of a worker process.  IMMEDIATE_STOP and IMMEDIATE_RESTART
#: are absent on purpose: their default action (death) is the point.
WORKER_ACTIONS: dict[int, str] = {
    GRACEFUL_STOP: "stop",
    GRACEFUL_RESTART: "stop",
    DETACH: "stop",
    RELOAD: "reload",
    DUMP: "dump",
}

SERVER_SIGNALS = tuple(SERVER_ACTIONS)
WORKER_SIGNALS = tuple(WORKER_ACTIONS)


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def describe_wait_status(status: int) -> str:
    """ServerEngine's wording: ``signal SIGKILL`` or ``status 0``."""
    if os.WIFSIGNALED(status):
        return f"signal {signal_name(os.WTERMSIG(status))}"
    return f"status {os.WEXITSTATUS(status)}"


def exit_code_of(status: int) -> int:
    """The exit code a shell would report: 128+N for death by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)



# -- signals that arrive before a loop owns them -------------------------------------
#
# A foreground daemon publishes its pid file before its server's loop takes
# over the signals (the server's initialize() and before_run() run between
# the two).  A TERM sent as soon as the pid file appears must stop the
# server, not kill it by the default action: until the loop owns them, the
# signals are recorded by a Python handler and sent again once it does.

_held: list[int] = []
#: what signal.signal() returns: None for a handler not installed from Python
PreviousHandler = Union[Callable[[int, Optional[FrameType]], Any], int, None]
_previous: dict[int, PreviousHandler] = {}


def _record_held(signo: int, _frame: Optional[FrameType]) -> None:
    _held.append(signo)


def hold_signals(signals: Iterable[int]) -> None:
    """Records these signals instead of acting on them, until
    :func:`replay_held_signals` (main thread only; elsewhere a no-op)."""
    try:
        for signo in signals:
            _previous.setdefault(signo, signal.signal(signo, _record_held))
    except ValueError:
        pass  # not the main thread: the caller's program keeps its dispositions


def replay_held_signals() -> None:
    """Sends the signals recorded so far again, to this process: called once
    a loop owns them, which then acts on them."""
    pending = list(_held)
    del _held[:]
    for signo in pending:
        os.kill(os.getpid(), signo)


def stop_holding_signals() -> None:
    """Gives the held signals back the dispositions they had."""
    for signo, previous in list(_previous.items()):
        # None: a handler that Python did not install, which it cannot put
        # back; the default action is the nearest
        signal.signal(signo, signal.SIG_DFL if previous is None else previous)
    _previous.clear()
    del _held[:]


def dumps_last(events: list[_E]) -> list[_E]:
    """A batch of loop events with the dump requests after everything else.
    In a process with several threads, TERM and CONT sent one after the
    other may be taken by two threads on two CPUs at once, their bytes
    reaching the self-pipe in either order; systemd sends exactly that pair
    to stop a service, and a dump must see the stop first."""
    return sorted(events, key=lambda e: e.kind is EventKind.SIGNAL and e.status == DUMP)
