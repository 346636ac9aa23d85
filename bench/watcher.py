"""One stream of timestamped events for the bench: lines the workers write
into a FIFO (event_writer.py) and the deaths of watched processes (pidfds).

Everything the bench waits for is a predicate over ``Watcher.events``, with
a deadline; nothing polls on a timer.  Also: the /proc readings for idle CPU
and the subreaper that brings orphaned workers back to the bench for reaping.
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
    kind: str     # "ready", "term", "quit" (from a worker) or "gone" (pidfd)
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
        self.events: list[Event] = []
        self.pidfds: dict[int, int] = {}   # fd -> pid
        self._partial = b""

    def close(self) -> None:
        for fd in list(self.pidfds):
            os.close(fd)
        self.pidfds.clear()
        os.close(self.read_fd)
        os.close(self.keep_fd)

    def watch(self, pid: int) -> None:
        """Adds a "gone" event when ``pid`` exits (zombies count as gone).
        Pids are recycled (pid_max is often 32768 and other test suites
        fork thousands), so a pid seen before is watched again: only a pid
        with a pidfd open now is skipped."""
        if pid in self.pidfds.values():
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.events.append(Event("gone", pid, now()))
            return
        self.pidfds[fd] = pid

    def kill(self, pid: int, signo: int) -> bool:
        """Signals a watched process through its pidfd, so a recycled pid is
        never hit; False if it is already gone."""
        for fd, watched in self.pidfds.items():
            if watched == pid:
                try:
                    signal.pidfd_send_signal(fd, signo)
                    return True
                except ProcessLookupError:
                    return False
        return False

    def poll(self, timeout: float) -> None:
        """Waits up to ``timeout`` s for anything, and records what came."""
        ready, _, _ = select.select([self.read_fd, *self.pidfds], [], [], max(timeout, 0.0))
        seen = now()
        for fd in ready:
            if fd == self.read_fd:
                self._read_lines()
            else:
                self.events.append(Event("gone", self.pidfds.pop(fd), seen))
                os.close(fd)

    def _read_lines(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                kind, pid, t = line.decode().split()
                event = Event(kind, int(pid), float(t))
                self.events.append(event)
                if kind == "ready":
                    # Watch at once, so a death is never missed.
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


# -- /proc ---------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuReading:
    cpu_ns: int        # on-CPU time of every thread (schedstat), nanoseconds
    ticks: int         # utime + stime of the process, clock ticks
    switches: int      # voluntary + involuntary context switches, every thread

    def __sub__(self, other: "CpuReading") -> "CpuReading":
        return CpuReading(self.cpu_ns - other.cpu_ns, self.ticks - other.ticks,
                          self.switches - other.switches)


def read_cpu(pid: int) -> CpuReading:
    """CPU used so far by ``pid``.  Threads that exited are not counted."""
    cpu_ns = switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            cpu_ns += int((task / "schedstat").read_text().split()[0])
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:  # voluntary_ and nonvoluntary_
                    switches += int(line.split()[1])
        except FileNotFoundError:
            continue  # the thread exited between listing and reading
    # utime and stime are fields 14 and 15; the command name (field 2) may
    # hold spaces, so count from its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return CpuReading(cpu_ns, int(fields[11]) + int(fields[12]), switches)


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


def list_children() -> list[int]:
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out
