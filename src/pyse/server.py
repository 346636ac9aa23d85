"""The server process's base class: configuration, the logger, and what the
server does on each signal.  One subclass per worker type runs the workers.

User code may override ``reload_config()``, ``stop(stop_graceful)`` and
``restart(stop_graceful)`` and call ``super()``, and define the hooks
``initialize()``, ``before_run()``, ``after_run()`` and ``after_start()``.
``socket_manager`` is the tree's socket manager (``socket_manager: true``;
see :mod:`pyse.socket_manager_tree`).

A user's server class either subclasses :class:`Server` or is a plain
class ("module") that pyse mixes into the worker type's server class; for
the type checker such a class names :data:`ServerModule` as its base (see
:mod:`pyse.worker`, which does the same for workers).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

from pyse import config as config_mod
from pyse.config_equivalents import unknown_key_warnings
from pyse import lowlevel
# Imported at load, not at the first CONT: after chuser the interpreter's
# own directories may no longer be readable.
from pyse import sigdump
from pyse.log_capture import flush_std_streams
from pyse.process_manager import ParentLink
from pyse.reporter import Reporter
from pyse.signals import GRACEFUL_STOP, SERVER_ACTIONS, signal_name
from pyse.socket_manager_tree import MISSING_MESSAGE, SocketManagerMissing, follow_reload
from pyse.worker import Worker

if TYPE_CHECKING:  # pragma: no cover
    from pyse.logger import LogSetup
    from pyse.socket_manager import SocketManagerServer

ConfigSource = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]


class Server:
    """Base of every server; see the worker-type subclasses.

    What a server (and a worker, through ``self.server``) may use:
    ``config`` (``dict[str, Any]``: the validated configuration, replaced
    at each reload), ``logger`` (:class:`logging.Logger`),
    ``socket_manager`` (:class:`pyse.socket_manager.SocketManagerServer`)
    and ``stopping`` (``bool``)."""

    def __init__(self, worker_class: type[Worker], config_source: ConfigSource,
                 config: dict[str, Any], log_setup: LogSetup, *,
                 socket_manager: Optional["SocketManagerServer"] = None) -> None:
        self._worker_class = worker_class
        self._config_source = config_source
        self.config: dict[str, Any] = config
        self._log_setup = log_setup
        self.logger: logging.Logger = log_setup.logger
        self._stop = False
        self.stop_status: Optional[int] = None
        #: the ties to a supervisor (heartbeat, lifeline, the loop the
        #: server process's set-up made), when there is one
        self.parent_link: Optional[ParentLink] = None
        #: called once the server is up (see :meth:`announce_ready`), by
        #: whoever waits for that: a daemonizing launcher, the supervisor
        self.when_ready: Optional[Callable[[], None]] = None
        #: called instead, with the reason, when the first start of the
        #: workers fails (a daemonizing launcher then reports it)
        self.when_start_failed: Optional[Callable[[str], None]] = None
        #: why the first start of the workers failed, if it did
        self.start_failure: Optional[str] = None
        #: who hears what this server does: systemd and pyse status (as the
        #: top process), its supervisor; nobody by default (see pyse.reporter)
        self.reporter: Reporter = Reporter()
        self._socket_manager = socket_manager
        self.initialize()

    @property
    def socket_manager(self) -> "SocketManagerServer":
        """The socket manager of this process tree (``socket_manager:
        true``), from ``initialize()`` on; in a worker,
        ``self.server.socket_manager``.  A server may also assign its own.
        Without one, an AttributeError says which key to set."""
        if self._socket_manager is None:
            raise SocketManagerMissing(MISSING_MESSAGE)
        return self._socket_manager

    @socket_manager.setter
    def socket_manager(self, manager: Optional["SocketManagerServer"]) -> None:
        self._socket_manager = manager

    # -- user hooks --------------------------------------------------------
    def initialize(self) -> None:
        pass

    def before_run(self) -> None:
        pass

    def after_run(self) -> None:
        pass

    def after_start(self) -> None:
        pass

    # -- overridable, call super() ------------------------------------------
    def stop(self, stop_graceful: bool) -> None:
        self.logger.info("Received %s stop", "graceful" if stop_graceful else "immediate")
        self._stop = True
        self.reporter.stopping()

    def restart(self, stop_graceful: bool) -> None:
        self.logger.info("Received %s restart", "graceful" if stop_graceful else "immediate")
        self.reload_config()
        self.reopen_log()

    def reload(self) -> None:
        self.logger.info("Received reload")
        if self.config["disable_reload"]:
            self.logger.info("disable_reload is set: keeping the running configuration")
        else:
            self.reload_config()
        self.reopen_log()

    def dump(self) -> None:
        if not self.config["disable_sigdump"]:
            try:
                path = sigdump.dump()
            except OSError as e:
                # A planted symlink or foreign file must not take the server down.
                self.logger.error("No sigdump written: %s", e)
                return
            self.logger.info("Wrote sigdump to %s", path)

    def reload_config(self) -> None:
        """Loads the configuration again (a callable source is called again).

        A source that raises or returns a bad configuration changes nothing:
        the running configuration stays and the reason is logged."""
        try:
            new = config_mod.load(self._config_source)
        except config_mod.ConfigError as e:
            self.logger.error("Reload failed, keeping the running configuration: %s", e)
            return
        for _key, warning in unknown_key_warnings(new):
            self.logger.warning("%s", warning)
        for key in config_mod.restart_only_changes(self.config, new):
            self.logger.warning("Config key %r changed: it needs a restart to take effect", key)
        try:
            self._log_setup.apply_config(new)
        except OSError as e:
            self.logger.error("Reload: cannot open the new log destination, keeping the old one: %s", e)
            new = dict(new, log=self.config["log"])
        self.config = new
        self.apply_config(new)
        follow_reload(self._socket_manager, new, self.logger)

    def apply_config(self, config: dict[str, Any]) -> None:
        """Subclasses put reloaded keys into effect here."""

    # -- the rest ------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop

    def reopen_log(self) -> None:
        try:
            self._log_setup.reopen()
        except OSError as e:
            self.logger.error("Could not reopen the log: %s", e)

    def create_worker(self, worker_id: int) -> Worker:
        return self._worker_class(self, worker_id)

    def dispatch_signal(self, signo: int) -> None:
        """Acts on a signal through ``handle_<action>`` (see pyse.signals).

        The handlers run user code (``stop``, ``restart``, ``reload_config``
        overrides...): one that raises is logged and the server goes on,
        whatever its worker type."""
        action = SERVER_ACTIONS.get(signo)
        if action is None:
            self.logger.debug("Ignoring %s", signal_name(signo))
            return
        if signo == GRACEFUL_STOP and self.supervisor_died():
            # PR_SET_PDEATHSIG's TERM: the same news as the lifeline's hangup.
            self.parent_gone(self.clock())
            return
        self.reporter.signal_begins(action)
        try:
            getattr(self, "handle_" + action)()
        except Exception:
            self.logger.exception("Handling %s (%s) raised; the server goes on",
                                  signal_name(signo), action.replace("_", " "))
        self.reporter.signal_done(action)

    def supervisor_died(self) -> bool:
        link = self.parent_link
        return link is not None and os.getppid() != link.parent_pid

    def clock(self) -> float:
        return lowlevel.now()

    def handle_graceful_stop(self) -> None:
        self.stop(True)

    def handle_immediate_stop(self) -> None:
        self.stop(False)

    def handle_graceful_restart(self) -> None:
        self.restart(True)

    def handle_immediate_restart(self) -> None:
        self.restart(False)

    def handle_reload(self) -> None:
        self.reload()

    def handle_detach(self) -> None:
        # Without a supervisor there is nothing to detach from: INT stops.
        self.stop(True)

    def handle_dump(self) -> None:
        if self._stop:
            # systemd and timeout(1) send CONT right after their TERM: a
            # stopping tree writes no dumps.
            self.logger.debug("Not writing a sigdump: stopping")
            return
        self.dump()

    def parent_gone(self, now: float) -> None:
        """The supervisor died: stop gracefully (a new supervisor, if any,
        starts a new server; two servers must not share the workers' work)."""
        link = self.parent_link
        if link is not None and link.mark_gone(now):
            self.logger.warning("The supervisor (pid %d) is gone; stopping", link.parent_pid)
            self.stop(True)

    def run(self) -> None:
        raise NotImplementedError

    # -- logging, for the processes this server forks --------------------------
    def log_after_fork(self, threads_allowed: bool) -> None:
        """In a freshly forked child (a worker; a server under a supervisor):
        its own log lock and fd 1/2 capture."""
        setup = self._log_setup
        if hasattr(setup, "after_fork_child"):
            setup.after_fork_child(threads_allowed=threads_allowed)

    def apply_log_config(self, config: dict[str, Any], worker_id: int) -> None:
        """In a worker process, at the server's reload: its ``log``,
        ``log_level`` and ``log_format``, then the log reopened."""
        setup = self._log_setup
        try:
            if hasattr(setup, "apply_config"):
                setup.apply_config(config)
        except OSError as e:
            self.logger.error("Worker %d: could not open the new log: %s", worker_id, e)
        self.reopen_log()

    def close_log(self) -> None:
        """At the end of a process: what Python buffered for fd 1/2 goes
        out, the capture of fd 1/2 ends (its last lines logged), the log is
        flushed."""
        flush_std_streams()
        close = getattr(self._log_setup, "close", None)
        if close is not None:
            try:
                close()
            except OSError:
                pass  # exiting anyway; there is nowhere left to report it

    #: True for servers that run workers: they are up once before_run()
    #: returned and their first workers run (they call announce_ready);
    #: others once before_run() returned
    waits_for_workers = False

    def main(self) -> int:
        """before_run, run, after_run; returns the exit status."""
        self.before_run()
        if not self.waits_for_workers:
            self.announce_ready()
        try:
            self.run()
        finally:
            self.after_run()
        return self.stop_status or 0

    def announce_ready(self) -> None:
        """The server is up: its launcher, its supervisor (and systemd) may
        be told.  Once."""
        ready, self.when_ready = self.when_ready, None
        self.when_start_failed = None
        if ready is not None:
            ready()
        self.reporter.server_ready()   # systemd's READY=1 (once)

    def announce_start_failure(self, reason: str) -> None:
        """The first start of the workers failed (a worker "failed to boot",
        in gunicorn's words): the server stops, as a failed start, and whoever
        waits for it to be up (a daemonizing launcher) is told why.  Later
        failures are crashes, restarted under the backoff."""
        failed, self.when_start_failed = self.when_start_failed, None
        self.when_ready = None
        self.start_failure = reason
        self.logger.error("The first start of the workers failed (%s): stopping", reason)
        if failed is not None:
            failed(reason)


if TYPE_CHECKING:
    #: The base of a plain server class ("module") for the type checker:
    #: there it is :class:`Server`.
    ServerModule = Server
else:
    class ServerModule:
        """The base of a plain server class ("module"): :class:`Server` to a
        type checker, this empty class at run time, so that the class stays
        plain and pyse mixes it into the server class of the configured
        ``worker_type`` (ServerEngine's way)::

            class MyServer(pyse.ServerModule):
                def before_run(self) -> None:
                    self.logger.info("port %d", self.config["port"])
        """


def log_uncaught(logger: logging.Logger, what: str) -> None:
    """Logs the exception being handled, for code that must not die of it."""
    logger.error("%s raised an exception", what, exc_info=sys.exc_info())
