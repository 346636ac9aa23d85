"""pyse as PID 1 (the first process of a container, or of any PID
namespace): what init owes the processes below it.

Two duties fall to PID 1 that no other process has:

- The kernel gives it no default signal actions: a signal it has no
  handler for is dropped, so TERM, QUIT and HUP would do nothing until
  pyse's loop takes them over (after ``before_run()``).  In the foreground
  the daemon holds them until then (pyse.signals.hold_signals), whatever
  its pid; :func:`guard_stop_signals` covers what comes before that (a
  daemonizing launcher as PID 1): TERM, QUIT and HUP end it with the status
  128 + the signal number (143 for TERM).
- Orphans are re-parented to it, a worker's grandchild whose parent died
  among them, and must be reaped or they stay zombies.  A process or spawn
  server and a supervisor reap every child their loop sees exit.  An
  embedded or thread server runs the user's code in its own process, and
  that code waits for its own children (``subprocess``): reaping every
  child would steal their exit statuses.  So as PID 1 it reaps, once a
  second, the zombies among its children that no live ``subprocess.Popen``
  or ``multiprocessing`` process object of this process still waits for
  (:class:`OrphanReaper`).  A child forked with a bare ``os.fork()`` and
  waited for later is reaped too; run such code with ``supervisor: true``
  (the supervisor, which runs no user code, is then PID 1).
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from typing import Any, Iterable, Optional

from pyse.watching import Timer

#: seconds between two looks for zombies by an in-process server as PID 1
ORPHAN_SCAN_INTERVAL = 1.0
#: what the early handlers stand in for: the default action, death
STOP_SIGNALS = (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)


def is_init() -> bool:
    """Whether this process is PID 1 of its PID namespace."""
    return os.getpid() == 1


def guard_stop_signals() -> None:
    """As PID 1, from now until pyse's loop owns them: TERM, QUIT and HUP
    end the process (SystemExit, so the pid file and the log are closed
    cleanly) instead of being dropped."""
    for signo in STOP_SIGNALS:
        if signal.getsignal(signo) in (signal.SIG_DFL, None):
            signal.signal(signo, exit_on_signal)


def exit_on_signal(signo: int, frame: Any) -> None:
    raise SystemExit(128 + signo)


# -- reaping orphans in an in-process server ---------------------------------------------

def zombie_children() -> list[int]:
    """The pids of this process's children that are zombies."""
    children: set[int] = set()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                children.update(int(p) for p in f.read().split())
        except OSError:
            pass  # that thread ended while we looked
    zombies = []
    for pid in sorted(children):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rpartition(b")")[2].split()[0]
        except OSError:
            continue  # reaped meanwhile
        if state == b"Z":
            zombies.append(pid)
    return zombies


def waited_for_by_python() -> set[int]:
    """Pids that a live process object of this interpreter will wait for:
    ``subprocess.Popen`` (asyncio's subprocesses too) and the process
    objects of ``multiprocessing``, whose returncode is still unknown."""
    kinds: list[type] = []
    subprocess = sys.modules.get("subprocess")
    if subprocess is not None:
        kinds.append(subprocess.Popen)
    popen_fork = sys.modules.get("multiprocessing.popen_fork")
    if popen_fork is not None:
        kinds.append(popen_fork.Popen)
    if not kinds:
        return set()
    wanted = tuple(kinds)
    pids: set[int] = set()
    for obj in gc.get_objects():
        if isinstance(obj, wanted) and getattr(obj, "returncode", 0) is None:
            pid = getattr(obj, "pid", None)
            if isinstance(pid, int):
                pids.add(pid)
    return pids


def reap_orphans(logger: logging.Logger, zombies: Optional[Iterable[int]] = None) -> list[int]:
    """Reaps the zombie children nobody in this process waits for; returns
    their pids."""
    found = list(zombie_children() if zombies is None else zombies)
    if not found:
        return []
    claimed = waited_for_by_python()
    reaped = []
    for pid in found:
        if pid in claimed:
            continue
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # its own waiter was quicker
        if got == pid:
            reaped.append(pid)
            logger.debug("Reaped pid %d (an orphan adopted by PID 1), wait status %#x",
                         pid, status)
    return reaped


class OrphanReaper(Timer):
    """Served by an in-process server's control thread when it is PID 1."""

    def __init__(self, logger: logging.Logger, now: float) -> None:
        self.logger = logger
        self.due: Optional[float] = now + ORPHAN_SCAN_INTERVAL

    def handle_deadline(self, now: float) -> None:
        self.due = now + ORPHAN_SCAN_INTERVAL
        reap_orphans(self.logger)
