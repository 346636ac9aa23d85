"""What the supervisor tells the world: it is the top process, so systemd
and the control socket hear from it, and what it says about the workers it
learns from its server, over a channel of their own.

The channel.  Before each fork of a server process the supervisor makes a
connected pair of UNIX stream sockets; the server keeps one end
(:class:`pyse.reporter.SupervisedServerReporter`), the supervisor the
other, and both serve their end from their loop as a watcher, so neither
side ever waits on the other.  The server tells, one JSON line each,
``{"event": "ready"}`` (its first workers run, or a reload or restart was
carried out) and ``{"event": "counts"}`` (its worker counts changed); the
supervisor asks ``{"request": "status", "id": N}`` when a client of the
control socket asks, and the server replies ``{"reply": N, "status":
...}``.  A server that does not reply within :data:`SERVER_REPLY_TIMEOUT`
seconds gets the client an answer without the workers, saying so.

systemd hears READY when the current server says it is ready and the
supervisor was waiting for that (its first server, or a reload or restart
it was sent), STATUS with the server's worker counts, RELOADING and
STOPPING for the supervisor's own signals, and WATCHDOG from the
supervisor's loop.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional

from pyse import lowlevel, status
from pyse.control_socket import ControlSocketServer
from pyse.line_channel import Channel, channel_pair
from pyse.reporter import (RELOAD_ACTIONS, Reporter, ServingLoop, SupervisedServerReporter,
                           open_control_socket, start_notifier)
from pyse.signals import describe_wait_status
from pyse.status import WorkerCounts
from pyse.systemd import Notifier
from pyse.watching import Timer

#: seconds the supervisor waits for its server's part of a status report
SERVER_REPLY_TIMEOUT = 2.0


@dataclass
class PendingRequest:
    """A control socket client waiting for the server's part."""

    respond: Callable[[dict[str, Any]], None]
    deadline: float
    server_pid: int
    base: dict[str, Any]          # the report as the supervisor alone knows it


class SupervisorReporter(Reporter, Timer):
    """The supervisor's reporter; as a timer (see pyse.watching), it ends
    the status requests its server does not answer in time."""

    def __init__(self, supervisor: Any, notifier: Optional[Notifier],
                 control_path: Optional[str], logger: logging.Logger) -> None:
        self.supervisor = supervisor
        self.notifier = notifier
        self.control_path = control_path
        self.logger = logger
        self.started_at = lowlevel.now()
        self.loop: Optional[ServingLoop] = None
        self.control: Optional[ControlSocketServer] = None
        #: server pid -> the supervisor's end of its channel
        self.links: dict[int, Channel] = {}
        self._new_link: Optional[tuple[socket.socket, socket.socket]] = None
        self.server_counts: Optional[WorkerCounts] = None
        self.announced_ready = False
        self.pending_ready = True        # the first server's ready is the service's
        self.is_stopping = False
        self.last_server_exit: Optional[tuple[str, Optional[int], float]] = None
        self.requests: dict[int, PendingRequest] = {}
        self._next_request = 0

    def attach(self, loop: ServingLoop) -> None:
        self.loop = loop
        loop.add_watcher(self)
        self.control = open_control_socket(self.control_path, self.answer, self.logger, loop)
        if self.notifier is not None:
            start_notifier(self.notifier, self.logger, loop, self.notifier.watchdog)

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        for pid in list(self.links):
            self.drop_link(pid, "the supervisor is exiting")

    # -- the supervisor's own signals --------------------------------------------------
    def signal_begins(self, action: str) -> None:
        if action in RELOAD_ACTIONS and self.announced_ready and not self.is_stopping:
            self.pending_ready = True
            if self.notifier is not None:
                self.notifier.reloading()

    def stopping(self) -> None:
        if self.is_stopping:
            return
        self.is_stopping = True
        if self.notifier is not None:
            self.notifier.stopping()

    # -- server processes and their channels -------------------------------------------
    def link_server(self, server: Any) -> list[int]:
        """Before a server's fork: its channel.  Returns the fds the child
        must close (our end)."""
        ours, theirs = channel_pair()
        self._new_link = (ours, theirs)
        server.reporter = SupervisedServerReporter(server, theirs, self.logger)
        return [ours.fileno()]

    def server_started(self, pid: int) -> None:
        """After the fork: our end joins the loop; theirs is the child's."""
        assert self._new_link is not None and self.loop is not None
        ours, theirs = self._new_link
        self._new_link = None
        theirs.close()
        channel = Channel(ours, lambda message: self.server_message(pid, message),
                          lambda reason: self.drop_link(pid, reason), self.logger)
        self.links[pid] = channel
        self.loop.add_watcher(channel)

    def server_start_failed(self) -> None:
        if self._new_link is not None:
            for end in self._new_link:
                end.close()
            self._new_link = None

    def server_exited(self, pid: int, wait_status: int, now: float) -> None:
        self.drop_link(pid, "the server exited")
        current = self.supervisor.current
        if current is None or current.pid != pid:
            return
        description = describe_wait_status(wait_status)
        code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None
        self.last_server_exit = (description, code, now)
        self.server_counts = None
        if self.announced_ready and not self.is_stopping and self.notifier is not None:
            self.notifier.status(f"the server (pid {pid}) exited with {description}")

    def drop_link(self, pid: int, reason: str) -> None:
        channel = self.links.pop(pid, None)
        if channel is None:
            return
        channel.close(reason)
        if self.loop is not None:
            self.loop.remove_watcher(channel)
        for request_id, request in list(self.requests.items()):
            if request.server_pid == pid:
                del self.requests[request_id]
                request.respond(dict(request.base, note=f"the server (pid {pid}) is gone: "
                                                        f"{reason}"))

    def server_message(self, pid: int, message: dict[str, Any]) -> None:
        if "reply" in message:
            self.server_replied(message)
            return
        current = self.supervisor.current
        if current is None or current.pid != pid:
            return  # a detached server: it is leaving
        counts = message.get("counts")
        if isinstance(counts, dict):
            try:
                self.server_counts = WorkerCounts(**counts)
            except TypeError:
                self.logger.warning("The server (pid %d) sent counts of an unknown shape: %r",
                                    pid, counts)
        if message.get("event") == "ready":
            self.server_ready_message()
        elif message.get("event") == "counts" and self.announced_ready:
            self.tell_status()

    def server_ready_message(self) -> None:
        if self.is_stopping or self.notifier is None:
            self.announced_ready = True
            return
        if self.pending_ready:
            self.pending_ready = False
            self.announced_ready = True
            self.notifier.ready(self.status_text(), main_pid=os.getpid())
        else:
            self.tell_status()

    def status_text(self) -> str:
        counts = self.server_counts
        return counts.text() if counts is not None else "the server is starting"

    def tell_status(self) -> None:
        if self.notifier is not None and not self.is_stopping:
            self.notifier.status(self.status_text())

    # -- status requests -----------------------------------------------------------------
    def answer(self, request: str, respond: Callable[[dict[str, Any]], None]) -> None:
        now = lowlevel.now()
        base = self.supervisor_report(now)
        current = self.supervisor.current
        channel = self.links.get(current.pid) if current is not None else None
        if current is None or channel is None:
            respond(dict(base, note=f"no server runs now (the supervisor is "
                                    f"{self.supervisor.state.value})"))
            return
        self._next_request += 1
        self.requests[self._next_request] = PendingRequest(
            respond, now + SERVER_REPLY_TIMEOUT, current.pid, base)
        channel.send({"request": "status", "id": self._next_request})

    def server_replied(self, message: dict[str, Any]) -> None:
        reply = message.get("reply")
        request = self.requests.pop(reply, None) if isinstance(reply, int) else None
        part = message.get("status")
        if request is None or not isinstance(part, dict):
            return
        report = dict(request.base)
        server = dict(part.get("server") or {})
        # What the supervisor knows of its server wins: its uptime, restarts,
        # heartbeat and last exit are the supervisor's to tell.
        server.update({k: v for k, v in (report["server"] or {}).items() if v is not None})
        server["state"] = (part.get("server") or {}).get("state", server.get("state"))
        report.update(server=server, workers=part.get("workers") or [],
                      counts=part.get("counts"))
        request.respond(report)

    def supervisor_report(self, now: float) -> dict[str, Any]:
        sup = self.supervisor
        supervisor = {"pid": os.getpid(), "state": sup.state.value,
                      "uptime": status.age(self.started_at, now), "restarts": None,
                      "heartbeat_age": None, "last_exit": None, "server_starts": sup.starts}
        server = None
        current = sup.current
        loop = sup.manager.loop
        if current is not None:
            server = {"pid": current.pid, "state": "running" if current.up else "starting",
                      "uptime": status.age(current.started_at, now),
                      "restarts": max(0, sup.starts - 1),
                      "heartbeat_age": status.heartbeat_age_of(loop, current.pid, now)
                      if current.up else None,
                      "last_exit": status.exit_entry(self.last_server_exit, now)}
        detached = [{"pid": proc.pid, "uptime": status.age(proc.started_at, now),
                     "heartbeat_age": status.heartbeat_age_of(loop, proc.pid, now)}
                    for proc in sup.detached.values()]
        return status.report(supervisor, server, [], None, detached_servers=detached)

    # -- the timer: the requests' deadlines --------------------------------------------
    def next_deadline(self) -> Optional[float]:
        return min((r.deadline for r in self.requests.values()), default=None)

    def handle_deadline(self, now: float) -> None:
        for request_id, request in list(self.requests.items()):
            if request.deadline <= now:
                del self.requests[request_id]
                request.respond(dict(request.base, note=(
                    f"the server (pid {request.server_pid}) did not answer within "
                    f"{SERVER_REPLY_TIMEOUT:g} s; its workers are not shown")))
