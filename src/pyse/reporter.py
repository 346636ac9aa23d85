"""What a server tells the world about itself: systemd (when it is the top
process), its supervisor (when it has one), and ``pyse status``.

A server calls its reporter at a few moments (``server.reporter``):

- ``server_ready()``: the server is up (where the daemon's launcher is told);
- ``signal_begins(action)`` / ``signal_done(action)``: around what a signal
  does (a reload, a restart, ...);
- ``stopping()``: the server begins to stop, whatever the reason;
- ``workers_changed()``: a worker may have started, come up or ended;
- ``attach(loop)`` when its loop starts, ``close()`` when it ends.

The plain :class:`Reporter` does nothing: a server that nobody watches.
:class:`TopServerReporter` speaks to systemd and answers the control
socket; :class:`SupervisedServerReporter` tells the supervisor over the
channel the supervisor made for it (see :mod:`pyse.supervisor_reporter`),
and answers the supervisor's status requests.

When each is told what: READY once ready (never before: a daemonized
launch's launcher announces the first one, see :mod:`pyse.systemd`);
around a reload (USR2) RELOADING, then READY once it was carried out; around
a restart (USR1, HUP) RELOADING, then READY once every wanted worker runs
again; STATUS whenever the worker counts change after the first READY.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from pyse import lowlevel, status
from pyse.control_socket import ControlSocketServer
from pyse.line_channel import Channel
from pyse.status import WorkerCounts
from pyse.systemd import LauncherWatch, Notifier, WatchdogTimer
from pyse.watching import Watcher

#: the actions (see pyse.signals) that reload or restart: RELOADING=1 first
RELOAD_ACTIONS = ("reload", "graceful_restart", "immediate_restart")
RESTART_ACTIONS = ("graceful_restart", "immediate_restart")


@dataclass
class ServingLoop:
    """How a reporter's watchers are served: by a forking process's
    manager, or by an in-process server's control thread."""

    add_watcher: Callable[[Watcher], None]
    remove_watcher: Callable[[Watcher], None]
    #: makes a loop sleeping in another thread look at its watchers again
    #: (None: the loop runs in the thread that reports)
    wake: Optional[Callable[[], None]] = None
    #: in an in-process server: asks the server thread to call
    #: watchdog_probe(), so that a pet proves that thread runs
    post_probe: Optional[Callable[[], None]] = None


class Reporter:
    """A server nobody watches: every report goes nowhere."""

    def attach(self, loop: ServingLoop) -> None:
        """The server's loop starts; watchers may be added to it."""

    def server_ready(self) -> None:
        """The server is up."""

    def signal_begins(self, action: str) -> None:
        """A signal's action (see pyse.signals) is about to run."""

    def signal_done(self, action: str) -> None:
        """It ran (or raised)."""

    def stopping(self) -> None:
        """The server begins to stop."""

    def workers_changed(self) -> None:
        """A worker may have started, come up or ended."""

    def watchdog_probe(self) -> None:
        """In-process servers: the server thread took a watchdog probe."""

    def close(self) -> None:
        """The loop ends."""


class ServerReporter(Reporter):
    """The events of one server and when they are worth telling; where they
    go is the subclass's: ``announce_*``."""

    def __init__(self, server: Any, logger: logging.Logger) -> None:
        self.logger = logger
        self.server = server
        self.loop: Optional[ServingLoop] = None
        self.started_at = lowlevel.now()
        self.is_ready = False
        self.is_stopping = False
        #: a restart is carried out: READY once every wanted worker runs
        self.pending_ready = False
        self.last_counts: Optional[WorkerCounts] = None
        # workers_changed() and the signals may come from two threads (the
        # embedded server's main thread and its server thread).
        self._lock = threading.Lock()

    # -- what the outlet does (subclasses) --------------------------------------------
    def announce_ready(self, counts: WorkerCounts) -> None:
        pass

    def announce_reloading(self) -> None:
        pass

    def announce_stopping(self) -> None:
        pass

    def announce_counts(self, counts: WorkerCounts) -> None:
        pass

    # -- the events ----------------------------------------------------------------------
    def attach(self, loop: ServingLoop) -> None:
        self.loop = loop

    def counts(self) -> WorkerCounts:
        return status.count_workers(self.server)

    def server_ready(self) -> None:
        with self._lock:
            if self.is_ready:
                return
            self.is_ready = True
        counts = self.counts()
        with self._lock:
            self.last_counts = counts
        self.announce_ready(counts)

    def signal_begins(self, action: str) -> None:
        if action in RELOAD_ACTIONS and self.is_ready and not self.is_stopping:
            self.announce_reloading()

    def signal_done(self, action: str) -> None:
        if action not in RELOAD_ACTIONS or not self.is_ready or self.is_stopping:
            return
        if action in RESTART_ACTIONS:
            with self._lock:
                self.pending_ready = True
            self.workers_changed()
        else:
            self.announce_ready(self.counts())

    def stopping(self) -> None:
        with self._lock:
            if self.is_stopping:
                return
            self.is_stopping = True
        self.announce_stopping()

    def workers_changed(self) -> None:
        if not self.is_ready:
            return
        counts = self.counts()
        with self._lock:
            changed = counts != self.last_counts
            self.last_counts = counts
            release = self.pending_ready and counts.settled and not self.is_stopping
            if release:
                self.pending_ready = False
        if release:
            self.announce_ready(counts)
        elif changed:
            self.announce_counts(counts)

    # -- status --------------------------------------------------------------------------
    def state(self) -> str:
        if self.is_stopping:
            return "stopping"
        if self.pending_ready:
            return "restarting"
        return "running" if self.is_ready else "starting"

    def server_part(self, now: float) -> dict[str, Any]:
        """The server's own part of the status report."""
        rows = status.worker_rows(self.server, now)
        return {"server": status.server_entry(self.server, os.getpid(), self.state(), now,
                                              self.started_at),
                "workers": rows, "counts": asdict(self.counts())}


class TopServerReporter(ServerReporter):
    """The server is the top process: systemd (if it listens) and the
    control socket (if there is a pid file) hear from it."""

    def __init__(self, server: Any, notifier: Optional[Notifier], control_path: Optional[str],
                 logger: logging.Logger) -> None:
        super().__init__(server, logger)
        self.notifier = notifier
        self.control_path = control_path
        self.control: Optional[ControlSocketServer] = None
        self._probe_outstanding = False

    def attach(self, loop: ServingLoop) -> None:
        super().attach(loop)
        self.control = open_control_socket(self.control_path, self.answer, self.logger, loop)
        if self.notifier is not None:
            start_notifier(self.notifier, self.logger, loop, self.notifier.watchdog
                           if loop.post_probe is None else self.request_probe)

    def request_probe(self) -> None:
        """In-process servers: the pet is the server thread's to send; ask
        it once, not again while it has not answered (a wedged server
        thread must let the watchdog fire)."""
        with self._lock:
            if self._probe_outstanding:
                return
            self._probe_outstanding = True
        assert self.loop is not None and self.loop.post_probe is not None
        self.loop.post_probe()

    def watchdog_probe(self) -> None:
        with self._lock:
            self._probe_outstanding = False
        if self.notifier is not None:
            self.notifier.watchdog()

    def announce_ready(self, counts: WorkerCounts) -> None:
        if self.notifier is not None:
            self.notifier.ready(counts.text(), main_pid=os.getpid())

    def announce_reloading(self) -> None:
        if self.notifier is not None:
            self.notifier.reloading()

    def announce_stopping(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()

    def announce_counts(self, counts: WorkerCounts) -> None:
        if self.notifier is not None:
            self.notifier.status(counts.text())

    def answer(self, request: str, respond: Callable[[dict[str, Any]], None]) -> None:
        now = lowlevel.now()
        part = self.server_part(now)
        respond(status.report(None, part["server"], part["workers"],
                              WorkerCounts(**part["counts"])))

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None


class SupervisedServerReporter(ServerReporter):
    """A server under a supervisor: it tells the supervisor (ready, the
    worker counts) over the channel the supervisor made before the fork,
    and answers its status requests; the supervisor speaks to systemd."""

    def __init__(self, server: Any, sock: socket.socket, logger: logging.Logger) -> None:
        super().__init__(server, logger)
        self.channel = Channel(sock, self.take_message, self.channel_closed, logger)

    def attach(self, loop: ServingLoop) -> None:
        super().attach(loop)
        self.channel.wake = loop.wake
        loop.add_watcher(self.channel)

    def announce_ready(self, counts: WorkerCounts) -> None:
        self.channel.send({"event": "ready", "counts": asdict(counts)})

    def announce_counts(self, counts: WorkerCounts) -> None:
        self.channel.send({"event": "counts", "counts": asdict(counts)})

    def take_message(self, message: dict[str, Any]) -> None:
        if message.get("request") == "status":
            self.channel.send({"reply": message.get("id"),
                               "status": self.server_part(lowlevel.now())})

    def channel_closed(self, reason: str) -> None:
        # The supervisor's death is the lifeline's news, not this one's.
        self.logger.debug("The channel to the supervisor closed: %s", reason)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.remove_watcher(self.channel)
        self.channel.close("the server is exiting")


def start_notifier(notifier: Notifier, logger: logging.Logger, loop: ServingLoop,
                   pet: Callable[[], object]) -> None:
    """The top process's loop starts: the notifier logs from now on (what
    was wrong with its environment, once), its watchdog timer calls pet
    every half period, and a daemon watches for its launcher's exit."""
    notifier.logger = logger
    for problem in notifier.setup_problems:
        logger.warning("%s", problem)
    notifier.setup_problems = []
    now = lowlevel.now()
    if notifier.watchdog_interval is not None:
        loop.add_watcher(WatchdogTimer(notifier.watchdog_interval, pet, now))
    if notifier.launcher is not None:
        loop.add_watcher(LauncherWatch(notifier, now))


def open_control_socket(path: Optional[str], answer: Callable[..., None],
                        logger: logging.Logger, loop: ServingLoop
                        ) -> Optional[ControlSocketServer]:
    """The control socket at path, served by loop; None without a path or
    if it cannot be made (logged: the server runs on without it)."""
    if path is None:
        return None
    control = ControlSocketServer(path, answer, logger)
    try:
        control.open()
    except OSError as e:
        logger.error("No control socket (pyse status will not show the workers): cannot "
                     "create %s: %s", path, e)
        return None
    loop.add_watcher(control)
    return control
