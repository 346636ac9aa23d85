"""Serving watchers from a C loop: fds and deadlines that a loop's owner
serves besides its own work, without a thread of their own and without
ever blocking the loop.

A watcher is a sans-I/O object (:class:`Watcher`): it says which fds it
wants watched and when its next deadline is, and it is told when an fd is
ready and when the deadline has come.  Two loops serve watchers: the loop of
a forking process (:class:`pyse.process_manager.ProcessManager`: a process
or spawn server, the supervisor) and the control thread of an in-process
server (:mod:`pyse.in_process_server`).  Both use a :class:`WatcherSet`.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional, Protocol

from pyse import lowlevel
from pyse.lowlevel import Event


class Watcher(Protocol):
    """Something a loop serves besides its children, without a thread and
    without ever blocking the loop (the socket manager's broker, the control
    socket, the channel to a supervisor): a sans-I/O object the loop tells
    when its fds are ready and when its deadline has come."""

    def watches(self) -> Iterable[tuple[int, bool, bool]]:
        """(fd, want readable, want writable) for each fd to watch now."""

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        """fd is ready; must not block."""

    def next_deadline(self) -> Optional[float]:
        """When handle_deadline() should run next (None: no deadline)."""

    def handle_deadline(self, now: float) -> None:
        """The deadline has come (or passed)."""


class Timer:
    """A watcher with no fd, only a deadline (``due``; None: none): a base
    for the timers a loop serves (systemd's watchdog, PID 1's reaping...),
    which override handle_deadline()."""

    due: Optional[float] = None

    def watches(self) -> Iterable[tuple[int, bool, bool]]:
        return ()

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        """No fd: never called."""

    def next_deadline(self) -> Optional[float]:
        return self.due

    def handle_deadline(self, now: float) -> None:
        raise NotImplementedError


class WatcherSet:
    """The watchers one loop serves, and what that loop watches for them."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.watchers: list[Watcher] = []
        #: fd -> (its watcher, readable, writable), as the loop watches it now
        self.watched: dict[int, tuple[Watcher, bool, bool]] = {}

    def add(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)

    def remove(self, watcher: Watcher, loop: Optional[lowlevel.Loop] = None) -> None:
        """Stops serving watcher; with loop (in the loop's own thread), the
        loop stops watching its fds at once, before the watcher closes them."""
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        if loop is not None:
            self.sync(loop)

    def sync(self, loop: Optional[lowlevel.Loop]) -> None:
        """Tells the loop what the watchers want watched now (None: no loop
        any more; nothing is watched)."""
        wanted: dict[int, tuple[Watcher, bool, bool]] = {}
        for watcher in self.watchers:
            for fd, readable, writable in watcher.watches():
                wanted[fd] = (watcher, readable, writable)
        if loop is None:
            self.watched = {}
            return
        for fd in self.watched.keys() - wanted.keys():
            loop.unwatch_fd(fd)
        for fd, (watcher, readable, writable) in wanted.items():
            if self.watched.get(fd, (None, None, None))[1:] != (readable, writable):
                loop.watch_fd(fd, readable, writable)
        self.watched = wanted

    def earliest(self, deadline: Optional[float]) -> Optional[float]:
        """The earlier of deadline and every watcher's next deadline."""
        for watcher in self.watchers:
            due = watcher.next_deadline()
            if due is not None and (deadline is None or due < deadline):
                deadline = due
        return deadline

    def serve(self, ready: list[Event]) -> None:
        """Hands the FD_READY events to their watchers, then runs the
        deadlines that have come."""
        now = lowlevel.now()
        for event in ready:
            entry = self.watched.get(event.pid)
            if entry is None:
                continue  # unwatched since
            self.guarded(entry[0].handle_ready, event.pid,
                         bool(event.status & lowlevel.READABLE),
                         bool(event.status & lowlevel.WRITABLE), now)
        for watcher in list(self.watchers):
            due = watcher.next_deadline()
            if due is not None and due <= now:
                self.guarded(watcher.handle_deadline, now)

    def guarded(self, call: Callable[..., None], *args: object) -> None:
        # A watcher's bug must not take the supervision loop down with it.
        try:
            call(*args)
        except Exception:
            self.logger.exception("%s raised; the loop goes on",
                                  getattr(call, "__qualname__", call))
