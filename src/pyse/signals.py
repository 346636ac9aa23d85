"""What each signal means to pyse's processes: the one map (ServerEngine's).

A supervisor forwards what it receives to its server, a server to its
workers; each process acts on the name, looked up as a method
``handle_<action>``.
"""
from __future__ import annotations

import os
import signal

GRACEFUL_STOP = signal.SIGTERM
IMMEDIATE_STOP = signal.SIGQUIT
GRACEFUL_RESTART = signal.SIGUSR1
IMMEDIATE_RESTART = signal.SIGHUP
RELOAD = signal.SIGUSR2
DETACH = signal.SIGINT
DUMP = signal.SIGCONT

#: signal -> action of a server or supervisor
SERVER_ACTIONS: dict[signal.Signals, str] = {
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
WORKER_ACTIONS: dict[signal.Signals, str] = {
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

