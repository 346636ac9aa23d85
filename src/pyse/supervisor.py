"""``supervisor: true``: a supervisor process that forks the server process,
monitors it as a server monitors a worker (heartbeat pipe, kill escalation
with the ``server_*`` keys, through :mod:`pyse.process_manager`), restarts it
when it dies, and forwards signals to it.

The server object is built here, in the supervisor, before each fork (as
ServerEngine does), so ``initialize()`` runs here and ``after_start()`` runs
here, on the same object, once the server process started.

The supervisor's life is one state machine (:data:`TRANSITIONS`):

- STARTING: no current server; one starts once ``server_restart_wait`` has
  passed since the previous start (at once after a live restart);
- RUNNING: the current server runs; its death sends us back to STARTING;
- RESTARTING: USR1/HUP with ``restart_server_process``: the current server
  was asked to stop; its successor starts when it has exited;
- DETACHING: INT with ``enable_detach`` (a live restart): the current server
  was asked to stop gracefully; its successor starts when it has exited, or
  at ``server_detach_wait`` while the old one, detached, finishes its work
  beside the new one (its escalation still runs, so it cannot linger past
  ``server_graceful_kill_timeout``).  With ``exit_on_detach`` the supervisor
  exits instead of starting a successor;
- STOPPING: every server was asked to stop; EXITED once none is left.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from pyse import lowlevel, process_title
from pyse.lowlevel import Event, EventKind
from pyse.multi_worker_server import EXIT_START_FAILED
from pyse.process_manager import ChildRole, ParentLink, ProcessManager, kill_config
from pyse.reporter import ServingLoop
from pyse.server import ConfigSource, Server
from pyse.socket_manager_tree import OwnedBrokers
from pyse.state_table import next_state
from pyse.supervisor_reporter import SupervisorReporter
from pyse.signals import (DUMP, GRACEFUL_RESTART, IMMEDIATE_RESTART, RELOAD, SERVER_SIGNALS,
                          describe_wait_status, exit_code_of)
from pyse.worker import Worker

if TYPE_CHECKING:  # pragma: no cover
    from pyse.daemonize import ReadyPipe
    from pyse.logger import LogSetup
    from pyse.socket_manager import SocketManagerServer

EXIT_SERVER_FAILED = 1


class SupervisorState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    DETACHING = "detaching"
    STOPPING = "stopping"
    EXITED = "exited"


S = SupervisorState
_ALIVE = (S.STARTING, S.RUNNING, S.RESTARTING, S.DETACHING)
TRANSITIONS: dict[tuple[SupervisorState, str], SupervisorState] = {
    (S.STARTING, "started"): S.RUNNING,
    (S.RUNNING, "server_exited"): S.STARTING,
    (S.RUNNING, "restart_process"): S.RESTARTING,
    (S.RUNNING, "detach"): S.DETACHING,
    (S.RESTARTING, "server_exited"): S.STARTING,
    (S.DETACHING, "server_exited"): S.STARTING,
    (S.DETACHING, "detach_wait_over"): S.STARTING,
    (S.DETACHING, "exit_on_detach"): S.EXITED,
    **{(state, "stop"): S.STOPPING for state in (*_ALIVE, S.STOPPING)},
    (S.STOPPING, "all_gone"): S.EXITED,
}


@dataclass
class ServerProcess:
    pid: int
    started_at: float
    first: bool                # the very first server of this supervisor
    up: bool = False           # it beat at least once: its before_run() returned


class Supervisor(Server):
    """The supervisor process.  A :class:`pyse.Server` so that it shares the
    configuration reload, the log and the signal dispatch of servers."""

    def __init__(self, server_class: type[Server], worker_class: type[Worker],
                 config_source: ConfigSource, config: dict[str, Any], log_setup: LogSetup, *,
                 ready: Optional[ReadyPipe] = None, private_fds: Optional[list[int]] = None,
                 socket_manager: Optional[SocketManagerServer] = None) -> None:
        self.server_class = server_class
        self.state = SupervisorState.STARTING
        #: the server the supervisor keeps alive (None while STARTING)
        self.current: Optional[ServerProcess] = None
        #: servers left to finish on their own after a live restart
        self.detached: dict[int, ServerProcess] = {}
        self.last_start: Optional[float] = None
        self.detach_deadline: Optional[float] = None
        self.starts = 0
        self._ready = ready
        # We own the socket manager, if any: the listeners outlive servers.
        super().__init__(worker_class, config_source, config, log_setup,
                         socket_manager=socket_manager)
        self.manager = ProcessManager(self.logger)
        self.manager.private_fds.extend(private_fds or ())
        #: systemd, pyse status and the channels to the server processes
        #: (the daemon gives it the notifier and the control socket's path)
        self.reporter: SupervisorReporter = SupervisorReporter(self, None, None, self.logger)

    def transition(self, event: str) -> None:
        self.state = next_state(TRANSITIONS, self.state, event, "supervisor")

    # -- the loop --------------------------------------------------------------
    def run(self) -> None:
        self.manager.open()
        self.reporter.attach(ServingLoop(self.manager.add_watcher, self.manager.remove_watcher))
        self.manager.add_watcher(OwnedBrokers())
        try:
            while True:
                deadline = self.manage_server(lowlevel.now())
                if self.state is S.EXITED:
                    break
                for event in self.manager.wait(deadline):
                    self.dispatch_event(event)
        finally:
            self.reporter.close()
            self.manager.close()
            if self._ready is not None:
                self._ready.close()

    def manage_server(self, now: float) -> Optional[float]:
        """Does what the state calls for at `now`; returns the next deadline
        (None: nothing is timed)."""
        if self.state is S.DETACHING:
            assert self.detach_deadline is not None
            if now < self.detach_deadline:
                return self.detach_deadline
            self.end_detach(now)
        if self.state is S.STARTING:
            due = self.next_start(now)
            if due > now:
                return due
            self.start_server(now)
            if self.state is S.STARTING:   # it failed: try again later
                return self.next_start(now)
        if self.state is S.STOPPING and self.current is None and not self.detached:
            self.transition("all_gone")
        return None

    def next_start(self, now: float) -> float:
        if self.last_start is None:
            return now
        return self.last_start + float(self.config["server_restart_wait"])

    def dispatch_event(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.SIGNAL:
            self.dispatch_signal(event.status)
        elif kind is EventKind.EXITED:
            self.server_exited(event.pid, event.status, lowlevel.now())
        elif kind is EventKind.HEARTBEAT and self.current and self.current.pid == event.pid:
            self.current.up = True

    # -- the server process ------------------------------------------------------
    def start_server(self, now: float) -> None:
        self.starts += 1
        self.last_start = now
        ready, self._ready = self._ready, None
        try:
            server = self.server_class(self._worker_class, self._config_source, self.config,
                                       self._log_setup, socket_manager=self._socket_manager)
            child = self.manager.fork("Server", server_role(self.config),
                                      lambda link: server_process(server, link, ready),
                                      kill_config(self.config, "server_"),
                                      failure_code=EXIT_SERVER_FAILED, now=now,
                                      close_in_child=self.reporter.link_server(server))
        except Exception as e:
            self.reporter.server_start_failed()
            if self.starts == 1:
                # The very first server cannot even be built (its
                # initialize() raised): retrying would fail the same way.
                self.logger.exception("Starting the server failed; stopping")
                if ready is not None:
                    ready.failed(f"starting the server failed: {type(e).__name__}: {e}")
                self.give_up(EXIT_SERVER_FAILED)
                return
            self.logger.exception("Starting the server failed; retrying in %g s",
                                  self.config["server_restart_wait"])
            return
        if ready is not None:
            ready.close()  # the server itself tells the launcher
        self.reporter.server_started(child.pid)
        self.current = ServerProcess(child.pid, now, first=self.starts == 1)
        self.transition("started")
        self.logger.info("Server started (pid %d)", child.pid)
        try:
            server.after_start()
        except Exception:
            self.logger.exception("Server after_start() raised")

    def server_exited(self, pid: int, status: int, now: float) -> None:
        self.reporter.server_exited(pid, status, now)
        proc = self.current
        if proc is None or proc.pid != pid:
            if self.detached.pop(pid, None) is not None:
                self.logger.info("Server (pid %d) finished with %s (it was detached)", pid,
                                 describe_wait_status(status))
            return
        self.current = None
        asked = self.state is not S.RUNNING
        self.logger.info("Server (pid %d) finished%s with %s", pid,
                         "" if asked else " unexpectedly", describe_wait_status(status))
        if self.state is S.STOPPING:
            return
        if self.state is S.DETACHING:
            self.end_detach(now)
            return
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if self.state is S.RUNNING and proc.first and code == EXIT_START_FAILED:
            # Its first workers could not start (it told the launcher why).
            self.start_failure = "the server's first workers could not start (see the log)"
            self.logger.error("The first server process could not start its workers; stopping")
            self.give_up(EXIT_START_FAILED)
            return
        if self.state is S.RUNNING and proc.first and not proc.up:
            # The first start failed before it was up: restarting would fail
            # the same way (a bad before_run(), a port in use).
            self.logger.error("The first server process exited before it was up; stopping")
            self.give_up(exit_code_of(status) or EXIT_SERVER_FAILED)
            return
        if self.state is S.RUNNING and code is not None and \
                code in self.config["unrecoverable_exit_codes"]:
            self.logger.error("Server exited with unrecoverable code %d: stopping", code)
            self.give_up(code)
            return
        self.transition("server_exited")
        self.logger.info("Restarting the server in %.3g s",
                         max(0.0, self.next_start(now) - now))

    def give_up(self, status: int) -> None:
        self.stop_status = status
        self.stop(True)

    # -- live restart --------------------------------------------------------------
    def detach(self) -> None:
        """INT: a live restart (or, with exit_on_detach, a detached exit)."""
        proc = self.current
        if self.state is not S.RUNNING or proc is None:
            self.logger.info("Received detach: no running server to detach (%s); ignored",
                             self.state.value)
            return
        wait = self.config["server_detach_wait"]
        self.logger.info("Received detach: stopping server (pid %d) gracefully; %s when it "
                         "exits or in %g s", proc.pid,
                         "exiting" if self.config["exit_on_detach"]
                         else "a new server starts", wait)
        now = lowlevel.now()
        self.transition("detach")
        self.detach_deadline = now + wait
        self.manager.stop(proc.pid, immediate=False, now=now)

    def end_detach(self, now: float) -> None:
        """The old server exited, or server_detach_wait passed."""
        self.detach_deadline = None
        proc, self.current = self.current, None
        if proc is not None:
            self.detached[proc.pid] = proc
            self.logger.info("Server (pid %d) still running after server_detach_wait: it "
                             "finishes on its own", proc.pid)
        if self.config["exit_on_detach"]:
            self.logger.info("exit_on_detach: the supervisor exits")
            self.transition("exit_on_detach")
            return
        self.transition("detach_wait_over" if proc is not None else "server_exited")
        # A live restart starts its new server at once: server_restart_wait
        # spaces out crash restarts, not deliberate ones.
        self.last_start = None

    # -- signals -----------------------------------------------------------------
    def stop(self, stop_graceful: bool) -> None:
        super().stop(stop_graceful)
        if self.state is S.EXITED:
            return
        self.transition("stop")
        self.detach_deadline = None
        for proc in [*([self.current] if self.current else []), *self.detached.values()]:
            self.manager.stop(proc.pid, immediate=not stop_graceful)

    def restart(self, stop_graceful: bool) -> None:
        super().restart(stop_graceful)   # reloads the configuration, reopens the log
        proc = self.current
        if proc is None or self.state is not S.RUNNING:
            return
        if self.config["restart_server_process"]:
            self.logger.info("Restarting the server process (pid %d)", proc.pid)
            self.transition("restart_process")
            self.manager.stop(proc.pid, immediate=not stop_graceful)
        else:
            self.manager.send_signal(proc.pid,
                                     GRACEFUL_RESTART if stop_graceful else IMMEDIATE_RESTART)

    def reload(self) -> None:
        super().reload()   # honours disable_reload; reopens the log either way
        if self.current is not None:
            self.manager.send_signal(self.current.pid, RELOAD)

    def dump(self) -> None:
        super().dump()
        self.logger.info("Supervisor: %s", self.state.value)
        for proc in [*([self.current] if self.current else []), *self.detached.values()]:
            self.logger.info("Server pid %d: %s, %s", proc.pid,
                             "detached" if proc.pid in self.detached else "current",
                             "up" if proc.up else "starting")
        if self.current is not None:
            self.manager.send_signal(self.current.pid, DUMP)

    def handle_detach(self) -> None:
        if not self.config["enable_detach"]:
            self.stop(True)
            return
        self.detach()

    def apply_config(self, config: dict[str, Any]) -> None:
        super().apply_config(config)
        self.manager.set_kill_config(kill_config(config, "server_"))


# -- the server process: between its set-up and os._exit() ---------------------------
def server_role(config: dict[str, Any]) -> ChildRole:
    """How a server process is set up after fork: its loop takes the
    server's signals and beats to us; a process or spawn server reaps its
    workers with it."""
    return ChildRole(signals=SERVER_SIGNALS,
                     reap_any=config["worker_type"] in ("process", "spawn"),
                     heartbeat_interval=config["server_heartbeat_interval"])


def server_process(server: Server, link: ParentLink, ready: Optional[ReadyPipe]) -> int:
    """Runs a forked server under its supervisor; returns the exit status."""
    config = server.config
    try:
        process_title.set_title(config["server_process_name"], "server", server._worker_class)
        # A server that forks workers must stay single-threaded: no capture
        # reader thread in it.
        server.log_after_fork(threads_allowed=config["worker_type"] in ("embedded", "thread"))
        server.parent_link = link
        if link.gone_at is not None:
            server.parent_gone(link.gone_at)
        if ready is not None:
            server.when_ready = ready.ready
            server.when_start_failed = ready.failed
        return server.main()
    except Exception as e:
        server.logger.exception("The server process failed")
        if ready is not None and ready.fd >= 0:
            ready.failed(f"{type(e).__name__}: {e}")
        return EXIT_SERVER_FAILED
    finally:
        server.close_log()
