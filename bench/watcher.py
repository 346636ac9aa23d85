"""One stream of timestamped events for the bench: lines the workers write
into a FIFO (event_writer.py) and the deaths of watched processes (pidfds).

Everything the bench waits for is a predicate over ``Watcher.events``, with
a deadline; nothing polls on a timer.  Servers here run up to 1024 workers
and churn through thousands, so the watcher keeps indexes (the latest ready
and death of each pid) instead of letting callers rescan the whole stream,
and waits with poll(2), which has no FD_SETSIZE limit.
"""
from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
PR_SET_CHILD_SUBREAPER = 36


class BenchError(RuntimeError):
    """An engine did not do what a measurement waits for, in time."""


@dataclass(frozen=True)
class Event:
    kind: str     # "ready", "fork", "term", "quit" (from a process) or "gone" (pidfd)
    pid: int
    t: float      # CLOCK_MONOTONIC seconds


def now() -> float:
    return time.monotonic()


class Watcher:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "events.fifo"
        os.mkfifo(self.path, 0o600)
        self.read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reading as end-of-file (and poll
        # from reporting POLLHUP forever) between two engines' workers.
        self.keep_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self.poller = select.poll()
        self.poller.register(self.read_fd, select.POLLIN)
        self.events: list[Event] = []
        self.pidfds: dict[int, int] = {}      # fd -> pid
        self.fd_of: dict[int, int] = {}       # pid -> fd
        #: index in ``events`` of each pid's latest "ready" and of its death
        #: after that ready (a recycled pid starts a new life at its ready).
        self.ready_index: dict[int, int] = {}
        self.gone_index: dict[int, int] = {}
        self._partial = b""

    def close(self) -> None:
        for fd in list(self.pidfds):
            os.close(fd)
        self.pidfds.clear()
        self.fd_of.clear()
        os.close(self.read_fd)
        os.close(self.keep_fd)

    def _append(self, event: Event) -> None:
        index = len(self.events)
        self.events.append(event)
        if event.kind == "ready":
            self.ready_index[event.pid] = index
            self.gone_index.pop(event.pid, None)
        elif event.kind == "gone":
            self.gone_index[event.pid] = index

    def watch(self, pid: int) -> None:
        """Adds a "gone" event when ``pid`` exits (zombies count as gone).
        Pids are recycled (other test suites fork thousands), so a pid seen
        before is watched again: only a pid with a pidfd open now is skipped."""
        if pid in self.fd_of:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._append(Event("gone", pid, now()))
            return
        self.pidfds[fd] = pid
        self.fd_of[pid] = fd
        self.poller.register(fd, select.POLLIN)

    def kill(self, pid: int, signo: int) -> bool:
        """Signals a watched process through its pidfd, so a recycled pid is
        never hit; False if it is already gone (or not watched)."""
        fd = self.fd_of.get(pid)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signo)
            return True
        except ProcessLookupError:
            return False

    def poll(self, timeout: float) -> None:
        """Waits up to ``timeout`` s for anything, and records what came."""
        ready = self.poller.poll(max(timeout, 0.0) * 1000)
        seen = now()
        for fd, _ in ready:
            if fd == self.read_fd:
                self._read_lines()
            elif fd in self.pidfds:
                pid = self.pidfds.pop(fd)
                del self.fd_of[pid]
                self.poller.unregister(fd)
                os.close(fd)
                self._append(Event("gone", pid, seen))

    def _read_lines(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                return
            if not chunk:
                return
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                kind, pid, t = line.decode().split()
                event = Event(kind, int(pid), float(t))
                self._append(event)
                if kind == "ready":
                    # Watch at once, so a death is never missed (a worker
                    # already gone gets its "gone" right after its "ready").
                    self.watch(event.pid)

    def wait_for(self, predicate: Callable[[], Optional[T]], timeout: float, what: str) -> T:
        deadline = now() + timeout
        while True:
            result = predicate()
            if result:
                return result
            left = deadline - now()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            self.poll(left)

    def drain_until(self, deadline: float) -> None:
        """Keeps recording events until ``deadline``."""
        while now() < deadline:
            self.poll(deadline - now())

    def since(self, mark: int, kind: str) -> list[Event]:
        return [e for e in self.events[mark:] if e.kind == kind]


def become_subreaper() -> None:
    """Orphaned workers are re-parented to us, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def reap_children() -> int:
    """Reaps every exited child (masters and re-parented orphans); returns
    how many children are still running."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0:
            return len(list_children())


def reap_leftovers(timeout: float) -> list[int]:
    """Waits up to ``timeout`` s for the children still here (orphans that
    came back to the subreaper while dying) and reaps them; returns those
    still running after that."""
    deadline = time.monotonic() + timeout
    for pid in list_children():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    reap_children()
    return list_children()


def list_children() -> list[int]:
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out
