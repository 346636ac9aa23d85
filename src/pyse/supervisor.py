"""``supervisor: true``: a supervisor process that forks the server process,
monitors it as a server monitors a worker (heartbeat pipe, kill escalation
with the ``server_*`` keys, all in the C loop), restarts it when it dies, and
forwards signals to it (SPEC sections 3 and 6).

fd ownership, as in :mod:`pyse.process_server`: the supervisor holds the read
end of each server's heartbeat pipe (owned by the loop) and the write end of
one lifeline pipe that it never writes to; a server holds its heartbeat
write end and the lifeline's read end, and closes everything else of ours.
When the supervisor dies, however, every server sees the lifeline hang up
and stops gracefully.

The server object is built here, in the supervisor, before each fork (as
ServerEngine does), so ``initialize()`` runs here and ``after_start()`` runs
here, on the same object, once the server process started.

Live restart (INT with ``enable_detach``): the current server is asked to
stop gracefully; a new one starts as soon as it has exited, or after
``server_detach_wait`` while the old one, detached, finishes its work beside
the new one (its escalation still runs, so it cannot linger past
``server_graceful_kill_timeout``).  With ``exit_on_detach`` the supervisor
exits instead of starting a new server.  See docs/supervisor.md.
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any, Optional

# Imported here, not in the server process: after chuser the interpreter's
# site-packages may no longer be readable.
import setproctitle

from pyse import lowlevel
from pyse.lowlevel import Event, EventKind, KillConfig
from pyse.parent_link import ParentLink
from pyse.process_server import fork_monitored
from pyse.server import Server
from pyse.signals import (DUMP, GRACEFUL_RESTART, IMMEDIATE_RESTART, RELOAD, SERVER_SIGNALS,
                          describe_wait_status, exit_code_of, signal_name)

EXIT_SERVER_FAILED = 1


class Role(enum.Enum):
    CURRENT = "current"        # the server the supervisor keeps alive
    DETACHING = "detaching"    # asked to stop at INT; its successor waits for it
    DETACHED = "detached"      # finishing beside its successor; not restarted
    RESTARTING = "restarting"  # asked to stop (restart_server_process); replaced on exit


@dataclass
class ServerProcess:
    pid: int
    started_at: float
    role: Role = Role.CURRENT
    up: bool = False           # it beat at least once: its before_run() returned
    first: bool = False        # the very first server of this supervisor


class Supervisor(Server):
    """The supervisor process.  A :class:`pyse.Server` so that it shares the
    configuration reload, the log and the signal dispatch of servers."""

    def __init__(self, server_class: type, worker_class: type, config_source: Any,
                 config: dict, log_setup: Any, *, ready: Any = None,
                 private_fds: Optional[list[int]] = None) -> None:
        self.server_class = server_class
        self.servers: dict[int, ServerProcess] = {}
        self.loop: Optional[lowlevel.Loop] = None
        self.kill_config = KillConfig.from_config(config, "server_")
        self.last_start: Optional[float] = None
        self.detach_deadline: Optional[float] = None
        self.exiting = False
        self.starts = 0
        self._ready = ready
        self._private_fds = list(private_fds or [])
        self._lifeline: Optional[tuple[int, int]] = None
        super().__init__(worker_class, config_source, config, log_setup)

    # -- the loop --------------------------------------------------------------
    def run(self) -> None:
        loop = self.loop = lowlevel.Loop(reap_any=True)
        try:
            loop.own_signals(SERVER_SIGNALS)
            loop.watch_python_signals()
            self._lifeline = os.pipe()
            while True:
                deadline = self.manage_server(lowlevel.now())
                if self.finished():
                    break
                for event in loop.wait(deadline):
                    self.dispatch_event(event)
        finally:
            loop.close()
            self.loop = None
            if self._lifeline is not None:
                for fd in self._lifeline:
                    os.close(fd)
                self._lifeline = None
            if self._ready is not None:
                self._ready.close()

    def finished(self) -> bool:
        if self.exiting:
            return True
        return self._stop and not self.servers

    @property
    def current(self) -> Optional[ServerProcess]:
        for proc in self.servers.values():
            if proc.role in (Role.CURRENT, Role.DETACHING, Role.RESTARTING):
                return proc
        return None

    def manage_server(self, now: float) -> Optional[float]:
        """Starts the server when one is due; ends a live restart's wait.
        Returns the next deadline (None: nothing is timed)."""
        if self._stop or self.exiting:
            return None
        proc = self.current
        if proc is not None and proc.role is Role.DETACHING:
            assert self.detach_deadline is not None
            if now < self.detach_deadline:
                return self.detach_deadline
            self.end_detach_wait(proc, now)
            if self.exiting:
                return None
            proc = None
        if proc is not None:
            return None
        due = self.next_start(now)
        if due > now:
            return due
        self.start_server(now)
        return None if self.current is not None else self.next_start(now)

    def next_start(self, now: float) -> float:
        if self.last_start is None:
            return now
        return self.last_start + float(self.config.get("server_restart_wait", 1.0))

    def dispatch_event(self, event: Event) -> None:
        kind = event.kind
        if kind is EventKind.SIGNAL:
            self.dispatch_signal(event.status)
            return
        proc = self.servers.get(event.pid)
        if proc is None:
            return
        now = lowlevel.now()
        if kind is EventKind.EXITED:
            self.server_exited(proc, event.status, now)
        elif kind is EventKind.HEARTBEAT and not proc.up:
            proc.up = True
            self.logger.debug("Server (pid %d) is up", proc.pid)
        elif kind is EventKind.HEARTBEAT_TIMEOUT:
            self.logger.warning("Server (pid %d): no heartbeat for %g s, stopping it "
                                "immediately", proc.pid, self.kill_config.heartbeat_timeout)
        elif kind is EventKind.GRACEFUL_TIMEOUT:
            self.logger.warning("Server (pid %d): still alive %g s after a graceful stop, "
                                "stopping it immediately", proc.pid,
                                self.kill_config.graceful_timeout)
        elif kind is EventKind.KILL:
            self.logger.debug("Server (pid %d): %s %s%s", proc.pid,
                              "sending" if event.err else "sent", signal_name(event.status),
                              f" failed: {os.strerror(event.err)}" if event.err else "")

    # -- the server process ------------------------------------------------------
    def start_server(self, now: float) -> None:
        assert self.loop is not None and self._lifeline is not None
        is_first = self.starts == 0
        self.starts += 1
        self.last_start = now
        first = self._ready is not None
        try:
            server = self.server_class(self._worker_class, self._config_source, self.config,
                                       self._log_setup)
            pid = self.fork_server(server)
        except Exception:
            self.logger.exception("Starting the server failed; retrying in %g s",
                                  float(self.config.get("server_restart_wait", 1.0)))
            if first:
                self._ready.failed("starting the server process failed (see the log)")
                self._ready = None
                self.stop_status = EXIT_SERVER_FAILED
                self._stop = True
            return
        self.servers[pid] = ServerProcess(pid, now, first=is_first)
        if first:
            self._ready.close()  # the server itself tells the launcher
            self._ready = None
        self.logger.info("Server started (pid %d)", pid)
        try:
            server.after_start()
        except Exception:
            self.logger.exception("Server after_start() raised")

    def fork_server(self, server: Server) -> int:
        assert self.loop is not None and self._lifeline is not None
        loop, ready, supervisor_pid = self.loop, self._ready, os.getpid()
        lifeline_r, lifeline_w = self._lifeline

        def child_main(heartbeat_w: int, close_fds: list[int], _blocked: set) -> int:
            # The loop's signals stay blocked in the server until its own loop
            # takes them over (which unblocks them).
            try:
                loop.abandon_in_child(close_fds)
                return server_process(server, supervisor_pid, heartbeat_w, lifeline_r, ready)
            finally:
                flush_logs(server)

        pid, heartbeat_r = fork_monitored(child_main, [lifeline_w, *self._private_fds],
                                          EXIT_SERVER_FAILED)
        loop.add_child(pid, heartbeat_r, self.kill_config)
        return pid

    def server_exited(self, proc: ServerProcess, status: int, now: float) -> None:
        del self.servers[proc.pid]
        asked = self._stop or proc.role is not Role.CURRENT
        self.logger.info("Server (pid %d) finished%s with %s", proc.pid,
                         "" if asked else " unexpectedly", describe_wait_status(status))
        if proc.role is Role.DETACHED or self._stop:
            return
        if proc.role is Role.DETACHING:
            self.end_detach_wait(proc, now)
            return
        if proc.first and not proc.up:
            # The first start failed before it was up: restarting would fail
            # the same way (a bad before_run(), a port in use).
            self.logger.error("The first server process exited before it was up; stopping")
            self.stop_status = exit_code_of(status) or EXIT_SERVER_FAILED
            self._stop = True
            return
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        if proc.role is Role.CURRENT and code is not None and \
                code in (self.config.get("unrecoverable_exit_codes") or ()):
            self.logger.error("Server exited with unrecoverable code %d: stopping", code)
            self.stop_status = code
            self.stop(True)
            return
        wait = max(0.0, self.next_start(now) - now)
        self.logger.info("Restarting the server in %.3g s", wait)

    # -- signals -----------------------------------------------------------------
    def stop(self, stop_graceful: bool) -> None:
        super().stop(stop_graceful)
        self.detach_deadline = None
        for proc in list(self.servers.values()):
            self.stop_server(proc, immediate=not stop_graceful)

    def restart(self, stop_graceful: bool) -> None:
        super().restart(stop_graceful)   # reloads the configuration, reopens the log
        proc = self.current
        if proc is None:
            return
        if self.config.get("restart_server_process") and proc.role is Role.CURRENT:
            self.logger.info("Restarting the server process (pid %d)", proc.pid)
            proc.role = Role.RESTARTING
            self.stop_server(proc, immediate=not stop_graceful)
        else:
            self.forward(proc, GRACEFUL_RESTART if stop_graceful else IMMEDIATE_RESTART)

    def reload(self) -> None:
        super().reload()   # honours disable_reload; reopens the log either way
        proc = self.current
        if proc is not None:
            self.forward(proc, RELOAD)

    def dump(self) -> None:
        super().dump()
        for proc in self.servers.values():
            self.logger.info("Server pid %d: %s, %s", proc.pid, proc.role.value,
                             "up" if proc.up else "starting")
        proc = self.current
        if proc is not None:
            self.forward(proc, DUMP)

    def handle_detach(self) -> None:
        if not self.config.get("enable_detach", True):
            self.stop(True)
            return
        self.detach()

    def detach(self) -> None:
        """INT: a live restart (or, with exit_on_detach, a detached exit)."""
        proc = self.current
        if self._stop or proc is None or proc.role is not Role.CURRENT:
            self.logger.info("Received detach: no running server to detach; ignored")
            return
        wait = float(self.config.get("server_detach_wait", 10.0))
        self.logger.info("Received detach: stopping server (pid %d) gracefully; %s when it "
                         "exits or in %g s", proc.pid,
                         "exiting" if self.config.get("exit_on_detach")
                         else "a new server starts", wait)
        proc.role = Role.DETACHING
        now = lowlevel.now()
        self.detach_deadline = now + wait
        self.stop_server(proc, immediate=False, now=now)

    def end_detach_wait(self, proc: ServerProcess, now: float) -> None:
        """The old server exited, or server_detach_wait passed."""
        self.detach_deadline = None
        if proc.pid in self.servers:
            proc.role = Role.DETACHED
            self.logger.info("Server (pid %d) still running after server_detach_wait: it "
                             "finishes on its own", proc.pid)
        if self.config.get("exit_on_detach"):
            self.logger.info("exit_on_detach: the supervisor exits")
            self.exiting = True
            return
        # A live restart starts its new server at once: server_restart_wait
        # spaces out crash restarts, not deliberate ones.
        self.last_start = None

    def stop_server(self, proc: ServerProcess, immediate: bool,
                    now: Optional[float] = None) -> None:
        if self.loop is not None:
            try:
                self.loop.stop_child(proc.pid, immediate=immediate, now=now)
            except ProcessLookupError:
                pass  # reaped in this batch; its EXITED event follows

    def forward(self, proc: ServerProcess, signo: int) -> None:
        try:
            os.kill(proc.pid, signo)
        except ProcessLookupError:
            pass  # it just exited; its EXITED event is on the way

    def apply_config(self, config: dict) -> None:
        super().apply_config(config)
        self.kill_config = KillConfig.from_config(config, "server_")
        if self.loop is not None:
            for pid in self.servers:
                try:
                    self.loop.set_child_config(pid, self.kill_config)
                except ProcessLookupError:
                    pass  # reaped in this batch; its EXITED event follows


# -- the server process: between os.fork() and os._exit() -------------------------
def server_process(server: Server, supervisor_pid: int, heartbeat_fd: int, lifeline_fd: int,
                   ready: Any) -> int:
    """Runs a forked server under its supervisor; returns the exit status."""
    config = server.config
    name = config.get("server_process_name")
    if name:
        setproctitle.setproctitle(name)
    log_after_fork(server, config)
    link = ParentLink(supervisor_pid, heartbeat_fd, lifeline_fd,
                      float(config.get("server_heartbeat_interval", 1.0)))
    server.parent_link = link

    def when_ready() -> None:
        # The first beat tells the supervisor this server is up.
        if not link.beat_if_due(lowlevel.now()):
            server.parent_gone(lowlevel.now())
        if ready is not None:
            ready.ready()

    server.when_ready = when_ready
    try:
        return server.main()
    except Exception as e:
        server.logger.exception("The server process failed")
        if ready is not None and ready.fd >= 0:
            ready.failed(f"{type(e).__name__}: {e}")
        return EXIT_SERVER_FAILED


def log_after_fork(server: Server, config: dict) -> None:
    setup = getattr(server, "_log_setup", None)
    if setup is not None:
        # A server that forks workers must stay single-threaded: no capture
        # reader thread in it.
        setup.after_fork_child(threads_allowed=config.get("worker_type") in ("embedded", "thread"))


def flush_logs(server: Server) -> None:
    setup = getattr(server, "_log_setup", None)
    close = getattr(setup, "close", None)
    if close is not None:
        try:
            close()
        except OSError:
            pass  # exiting anyway; nothing else to tell it to
