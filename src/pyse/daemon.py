"""The top of the process tree: ``pyse.create()`` and :class:`Daemon`.

The daemon validates the configuration before anything forks, then, in this
order:

1. with ``daemonize``: double fork and ``setsid`` (:mod:`pyse.daemonize`);
   the launching process waits on a ready pipe and exits only once the
   daemon is up;
2. the pid file (``pid_path``) is reserved (refused while a live daemon
   holds it, see :mod:`pyse.pidfile`);
3. the process title (``daemon_process_name``, else pyse's own, see
   :mod:`pyse.process_title`), then ``chuser``/``chgroup``/``chumask``
   (after daemonizing, before the server exists, in both modes);
4. logging, the socket manager (``socket_manager: true``; see
   :mod:`pyse.socket_manager_tree`), then the server, or with
   ``supervisor: true`` the supervisor of a server process
   (:mod:`pyse.supervisor`), with its reporter: systemd's notifications and
   the control socket (:mod:`pyse.reporter`).

Before all that, systemd's notification variables are read and removed
from the environment (:mod:`pyse.systemd`), and as PID 1 the stop signals
are given handlers (:mod:`pyse.container`).

"Up" means: the server's ``before_run()`` returned (under a supervisor: the
first server process's ``before_run()``).  Only then does the launcher
publish the pid file and exit 0.  In the foreground the process writes its
own pid file at once, before it drops privileges.  A failure before that point (a bad log path,
a pid file in use, a failing privilege drop, ``initialize()`` or
``before_run()`` raising) makes the launcher print the error on its stderr
and exit with ``daemonize_error_exit_code``.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, NoReturn, Optional

# Everything a daemon may need is imported with this module, while the
# process is still privileged: after chuser the interpreter's own
# directories may no longer be readable.
from pyse import config as config_mod
from pyse import container, pidfile, privilege, process_title
from pyse.control_socket import socket_path
from pyse.config_equivalents import unknown_key_warnings
from pyse.daemonize import ReadyPipe, StartupError, launch, report_startup_error
from pyse.embedded_server import EmbeddedServer
from pyse.logger import LogSetup
from pyse.process_server import ProcessServer
from pyse.reporter import TopServerReporter
from pyse.server import ConfigSource, Server
from pyse.socket_manager import SocketManagerServer
from pyse.socket_manager_tree import open_tree_manager
from pyse.spawn_server import SpawnServer
from pyse.supervisor import Supervisor
from pyse.supervisor_reporter import SupervisorReporter
from pyse.systemd import Notifier
from pyse.thread_server import ThreadServer
from pyse.signals import (DETACH, DUMP, GRACEFUL_RESTART, GRACEFUL_STOP, IMMEDIATE_RESTART,
                          IMMEDIATE_STOP, RELOAD, SERVER_SIGNALS, hold_signals,
                          stop_holding_signals)
from pyse.worker import Worker, mix_in

#: worker_type -> the server class that runs that type of worker
SERVER_CLASSES: dict[str, type[Server]] = {
    "embedded": EmbeddedServer,
    "thread": ThreadServer,
    "process": ProcessServer,
    "spawn": SpawnServer,
}


def server_base_class(worker_type: str) -> type[Server]:
    return SERVER_CLASSES[worker_type]


def create(server_module: Optional[type], worker_module: type,
           config: Optional[ConfigSource] = None) -> "Daemon":
    """Builds a daemon; ``run()`` or ``main()`` starts it.

    config is a dict, or a callable returning one that is called again at
    every reload and restart.  Raises :class:`pyse.ConfigError` for a bad
    configuration and :class:`TypeError` for a worker module without run()."""
    return Daemon(server_module, worker_module, config)


class Daemon:
    """What :func:`create` returns: ``run()`` or ``main()`` starts the
    daemon here; ``stop()``, ``restart()``, ``reload()``, ``detach()`` and
    ``dump()`` signal a running one (this object's own run, else the live
    daemon of ``pid_path``).  ``config`` is the validated configuration
    (``dict[str, Any]``); ``pid`` the running daemon's pid (``int``, once
    known) and ``server`` its :class:`pyse.Server` (in the daemon process)."""

    def __init__(self, server_module: Optional[type], worker_module: type,
                 config: Optional[ConfigSource] = None) -> None:
        self.config_source: ConfigSource = {} if config is None else config
        self.config: dict[str, Any] = config_mod.load(self.config_source)
        required = "spawn" if self.config["worker_type"] == "spawn" else "run"
        if not callable(getattr(worker_module, required, None)):
            raise TypeError(f"worker module {getattr(worker_module, '__name__', worker_module)!r} "
                            f"has no {required}() method, which worker_type "
                            f"{self.config['worker_type']!r} requires")
        self.server_module = server_module
        self.worker_class = mix_in(worker_module, Worker, "worker")
        self.server_class = mix_in(server_module, server_base_class(self.config["worker_type"]),
                                   "server")
        #: the running daemon's pid (the supervisor's, with supervisor: true)
        self.pid: Optional[int] = None
        #: the Server, or the Supervisor with supervisor: true
        self.server: Optional[Server] = None
        #: the tree's socket manager, in the top process (socket_manager: true)
        self.socket_manager: Optional[SocketManagerServer] = None
        self._pid_file: Optional[pidfile.PidFile] = None
        #: systemd's notification socket, when it started us (Type=notify)
        self.notifier: Optional[Notifier] = None
        self._launcher_pid: Optional[int] = None

    # -- running -------------------------------------------------------------
    def main(self) -> int:
        """Runs the daemon; returns its exit status (with ``daemonize``, the
        launcher's: 0 once the daemon is up)."""
        error_code = int(self.config["daemonize_error_exit_code"])
        if container.is_init():
            container.guard_stop_signals()
        # Read and removed at once: no child of ours may speak to systemd.
        self.notifier = Notifier.from_environment()
        try:
            pid_file = self.reserve_pid_file()
        except pidfile.PidFileError as e:
            report_startup_error(str(e))
            return error_code
        if self.config["daemonize"]:
            self._launcher_pid = os.getpid()
            code = launch(self, pid_file, error_code)
            if code == 0 and self.notifier is not None and self.pid is not None:
                # We are systemd's main process: name the daemon, which is
                # up, before we exit.
                self.notifier.daemon_started(self.pid)
            return code
        self.pid = os.getpid()
        # From the pid file's appearance on, a signal must reach the server's
        # loop, which takes them over only once the server runs.
        hold_signals(SERVER_SIGNALS)
        try:
            return self.serve_foreground(pid_file, error_code)
        finally:
            stop_holding_signals()

    def serve_foreground(self, pid_file: Optional[pidfile.PidFile], error_code: int) -> int:
        if pid_file is not None:
            try:
                pid_file.publish(os.getpid())  # the daemon is this process
            except (OSError, pidfile.PidFileError) as e:
                pid_file.abandon()
                report_startup_error(f"pid file {pid_file.path!r}: {e}")
                return error_code
        try:
            return self.serve(None)
        except StartupError as e:
            report_startup_error(str(e))
            return error_code

    def run(self) -> NoReturn:
        """Runs the daemon and ends the process with its exit status
        (raises SystemExit)."""
        raise SystemExit(self.main())

    def reserve_pid_file(self) -> Optional[pidfile.PidFile]:
        path = self.config["pid_path"]
        if not path:
            return None
        pid_file = pidfile.PidFile(os.fspath(path))
        pid_file.reserve()
        self._pid_file = pid_file
        return pid_file

    def serve(self, ready: Optional[ReadyPipe]) -> int:
        """In the daemon process: privileges, logging, the server (or the
        supervisor); returns the exit status.  StartupError for what fails
        before the server is up; the ready pipe, if any, hears about it."""
        process_title.set_title(self.config["daemon_process_name"],
                                "supervisor" if self.config["supervisor"] else "server",
                                self.worker_class)
        if ready is not None and self.notifier is not None and self._launcher_pid is not None:
            self.notifier.wait_for_launcher(self._launcher_pid)
        try:
            drop_privileges(self.config)
            log_setup = LogSetup(self.config)
            try:
                log_setup.start()
            except OSError as e:
                raise StartupError(f"cannot open the log {self.config['log']!r}: "
                                   f"{e.strerror or e}") from e
            except config_mod.ConfigError as e:   # log_config could not be applied
                raise StartupError(str(e)) from e
        except StartupError as e:
            self.finish_pid_file(None)
            if ready is not None:
                ready.failed(str(e))
            raise
        try:
            return self.serve_logged(log_setup, ready)
        finally:
            self.close_socket_manager()
            self.finish_pid_file(log_setup.logger)
            log_setup.close()

    def serve_logged(self, log_setup: LogSetup, ready: Optional[ReadyPipe]) -> int:
        logger = log_setup.logger
        for _key, warning in unknown_key_warnings(self.config):
            logger.warning("%s", warning)
        pid_file = self._pid_file
        if pid_file is not None and pid_file.had_stale_file:
            logger.warning("Replaced a stale pid file %s (it named pid %s, which no longer "
                           "held its lock)", pid_file.path, pid_file.stale_pid)
        private_fds = [pid_file.fd] if pid_file is not None and pid_file.fd >= 0 else []
        try:
            self.socket_manager = open_tree_manager(self.config, logger)
            self.server = self.build_top(log_setup, ready, private_fds)
        except Exception as e:
            logger.exception("Creating the server failed")
            if ready is not None:
                ready.failed(f"creating the server failed: {type(e).__name__}: {e}")
                return int(self.config["daemonize_error_exit_code"])
            raise
        if ready is not None:
            return self.run_reporting(self.server, ready)
        return self.server.main()

    def build_top(self, log_setup: LogSetup, ready: Optional[ReadyPipe],
                  private_fds: list[int]) -> Server:
        """The server, or its supervisor."""
        pid_path = self.config["pid_path"]
        control = socket_path(os.fspath(pid_path)) if pid_path else None
        if self.config["supervisor"]:
            supervisor = Supervisor(self.server_class, self.worker_class, self.config_source,
                                    self.config, log_setup, ready=ready, private_fds=private_fds,
                                    socket_manager=self.socket_manager)
            supervisor.reporter = SupervisorReporter(supervisor, self.notifier, control,
                                                     log_setup.logger)
            return supervisor
        server = self.server_class(self.worker_class, self.config_source, self.config, log_setup,
                                   socket_manager=self.socket_manager)
        server.reporter = TopServerReporter(server, self.notifier, control, log_setup.logger)
        # Workers must not keep the pid file's lock (it means: the daemon
        # lives).  Servers that do not fork have no private fds.
        if hasattr(server, "private_fds"):
            server.private_fds.extend(private_fds)
        if ready is not None:
            server.when_ready = ready.ready
            server.when_start_failed = ready.failed
        return server

    def run_reporting(self, server: Server, ready: ReadyPipe) -> int:
        """server.main(), telling the launcher if it fails before it is up."""
        try:
            return server.main()
        except Exception as e:
            if ready.fd >= 0:
                server.logger.exception("The server failed to start")
                ready.failed(f"{type(e).__name__}: {e}")
                return int(self.config["daemonize_error_exit_code"])
            raise
        finally:
            if ready.fd >= 0:  # it returned without ever being up
                ready.failed("the server exited during its start")

    def close_socket_manager(self) -> None:
        """The end of the top process: the listeners close, the broker's
        files go."""
        manager, self.socket_manager = self.socket_manager, None
        if manager is not None:
            manager.close()

    def finish_pid_file(self, logger: Optional[logging.Logger]) -> None:
        """A clean exit of the daemon: the pid file goes."""
        pid_file, self._pid_file = self._pid_file, None
        if pid_file is None:
            return
        problem = pid_file.remove()
        if problem and logger is not None:
            logger.warning("%s", problem)

    # -- controlling a running daemon -----------------------------------------
    def stop(self, graceful: bool = True) -> None:
        self.send_signal(GRACEFUL_STOP if graceful else IMMEDIATE_STOP)

    def restart(self, graceful: bool = True) -> None:
        self.send_signal(GRACEFUL_RESTART if graceful else IMMEDIATE_RESTART)

    def reload(self) -> None:
        self.send_signal(RELOAD)

    def detach(self) -> None:
        self.send_signal(DETACH)

    def dump(self) -> None:
        self.send_signal(DUMP)

    def send_signal(self, signo: signal.Signals) -> None:
        os.kill(self.running_pid(), signo)

    def running_pid(self) -> int:
        """The daemon's pid: this object's own run, or else the pid file's,
        if a live daemon holds it (RuntimeError otherwise)."""
        if self.pid is not None:
            return self.pid
        path = self.config["pid_path"]
        if not path:
            raise RuntimeError("this daemon was not started here and has no pid_path to find it by")
        try:
            return pidfile.running_pid(os.fspath(path))
        except pidfile.PidFileError as e:
            raise RuntimeError(str(e)) from None


def drop_privileges(config: dict[str, Any]) -> None:
    try:
        privilege.change_from_config(config)
    except privilege.PrivilegeError as e:
        raise StartupError(str(e)) from e
