"""The socket manager in pyse's process tree: which process owns it, what
drives its broker, and how servers, workers and spawned programs reach it.

With ``socket_manager: true`` the daemon opens one manager in the top
process before anything forks (:func:`open_tree_manager`):

- with ``supervisor: true`` the supervisor owns it.  A server process is
  forked from the supervisor and inherits the table; what its
  ``before_run()`` binds is bound by the supervisor (through the broker) and
  lives there.  So the listeners outlive the server: a server SIGKILLed and
  restarted, ``restart_server_process``, and a live restart (INT), where old
  and new servers overlap and both hold the same listening socket.  Nothing
  is handed from one server to the next, so nothing is lost when a server
  dies before it could hand over;
- without a supervisor the server process owns it: there is no server
  restart to survive.

Workers forked from a server inherit its copy of the table; the copy also
keeps what the broker sent it (:meth:`SocketManagerServer.remember_received`),
so workers forked later find it without asking.  Spawned programs find the
broker's path and token in their environment (:func:`spawn_environment`)
and are served by the broker of the process that owns the manager.

What drives a broker (every broker this process owns, including one a
server's ``before_run()`` opened itself, as ServerEngine programs do):

- in a process that forks (the supervisor, a process or spawn server), its
  :class:`pyse.process_manager.ProcessManager` loop, through the watcher
  :class:`OwnedBrokers`: no thread;
- in an in-process server (embedded, thread), a :class:`BrokerThread`
  (:func:`start_broker_thread`): the control thread that takes the server's
  signals also beats toward a supervisor and watches its lifeline, and a
  flood of broker clients must not delay those.  Such a server forks
  nothing, so the thread costs no fork safety.

``worker_chuser``/``worker_chgroup``: the broker is opened to the workers'
group (:func:`open_to_workers`), and a client of another user than the
owner's gets only the sockets the owner holds (it cannot make a privileged
owner bind); the broker's directory defaults to the temp directory then,
since ``$XDG_RUNTIME_DIR`` belongs to the owner alone.
"""
from __future__ import annotations

import logging
import os
import select
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from pyse import lowlevel, privilege
from pyse.socket_manager import SocketManagerServer
from pyse.socket_manager_client import local_managers

if TYPE_CHECKING:  # pragma: no cover
    from pyse.server import Server


class SocketManagerMissing(AttributeError):
    """``server.socket_manager`` when no manager was opened."""


MISSING_MESSAGE = ("server.socket_manager: no socket manager was opened; set the "
                   "configuration key socket_manager to true")


def open_tree_manager(config: dict[str, Any], logger: logging.Logger) -> Optional[SocketManagerServer]:
    """The manager of a daemon's tree, in the top process, or None when
    ``socket_manager`` is off.  Raises OSError (or PrivilegeError for a
    worker group that does not exist) naming what failed."""
    if not config["socket_manager"]:
        return None
    gid = worker_group(config)
    directory = config["socket_manager_dir"]
    if directory is None and gid is not None:
        directory = tempfile.gettempdir()
    manager = SocketManagerServer(directory=directory, reuseport=config["socket_reuseport"],
                                  backlog=config["socket_backlog"],
                                  client_timeout=config["socket_manager_timeout"],
                                  activation=config["socket_activation"], logger=logger)
    try:
        if gid is not None:
            open_to_group(manager, gid)
    except BaseException:
        manager.close()
        raise
    logger.debug("Socket manager: broker at %s", manager.path)
    return manager


def worker_group(config: dict[str, Any]) -> Optional[int]:
    """The gid worker processes run as, when ``worker_chuser`` or
    ``worker_chgroup`` changes it; None otherwise."""
    user, group, _ = privilege.identity_from_config(config, "worker_")
    if group is not None:
        return privilege.lookup_group(group)
    if user is not None:
        return privilege.lookup_user(user).pw_gid
    return None


def open_to_group(manager: SocketManagerServer, gid: int) -> None:
    assert manager.broker is not None
    manager.broker.open_to_group(gid)


def follow_reload(manager: Optional[SocketManagerServer], config: dict[str, Any],
                  logger: logging.Logger) -> None:
    """After a reload, in the owner: the broker follows a new
    ``worker_chuser``/``worker_chgroup`` (logged, never raised: a reload
    must not take the server down)."""
    if manager is None or not manager.serves_here:
        return
    try:
        gid = worker_group(config)
        if gid is not None:
            open_to_group(manager, gid)
    except (OSError, privilege.PrivilegeError) as e:
        logger.error("Socket manager: could not open the broker to the workers' group: %s", e)


def spawn_environment(server: Server) -> dict[str, str]:
    """The variables that let a program a spawn worker starts reach the
    server's socket manager (none when it has none)."""
    try:
        manager = server.socket_manager
    except AttributeError:   # SocketManagerMissing: it has none
        return {}
    return manager.environment()


class OwnedBrokers:
    """The brokers of every socket manager this process owns, as one
    watcher of a :class:`pyse.process_manager.ProcessManager` (or of a
    :class:`BrokerThread`).  A manager opened later (in ``before_run()``, in
    a hook) joins at the loop's next round; a closed one leaves."""

    def __init__(self) -> None:
        self._by_fd: dict[int, SocketManagerServer] = {}

    @staticmethod
    def managers() -> list[SocketManagerServer]:
        return [m for m in local_managers() if m.serves_here]

    def watches(self) -> list[tuple[int, bool, bool]]:
        by_fd: dict[int, SocketManagerServer] = {}
        out = []
        for manager in self.managers():
            for fd, readable, writable in manager.watches():
                by_fd[fd] = manager
                out.append((fd, readable, writable))
        self._by_fd = by_fd
        return out

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        manager = self._by_fd.get(fd)
        if manager is not None and manager.serves_here:
            manager.handle_ready(fd, readable, writable, now)

    def next_deadline(self) -> Optional[float]:
        deadlines = [d for d in (m.next_deadline() for m in self.managers()) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_deadline(self, now: float) -> None:
        for manager in self.managers():
            due = manager.next_deadline()
            if due is not None and due <= now:
                manager.handle_deadline(now)


class BrokerThread:
    """Serves a watcher (a :class:`SocketBroker`, a manager, or
    :class:`pyse.socket_manager_tree.OwnedBrokers`) from a thread of its
    own, for a process without pyse's loop: an in-process server, a
    program of yours, a test.  It sleeps in ``poll()`` until an fd is ready
    or the watcher's deadline comes; :meth:`close` wakes it through a pipe
    and joins it."""

    def __init__(self, watcher: Any, *, clock: Callable[[], float] = time.monotonic,
                 logger: Optional[logging.Logger] = None,
                 name: str = "pyse-socket-broker") -> None:
        self.watcher = watcher
        self.clock = clock
        self.logger = logger or logging.getLogger("pyse.socket_manager")
        self.name = name
        self._wakeup: Optional[Tuple[int, int]] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._wakeup = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._wakeup is not None:
            os.write(self._wakeup[1], b"x")
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.logger.error("Socket manager: the broker thread did not stop within "
                                  "%g s", timeout)
                return   # it may still read the pipe: leave it open
        self._thread = None
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    def _serve(self) -> None:
        assert self._wakeup is not None
        while True:
            try:
                if not self.serve_once(self._wakeup[0]):
                    return
            except Exception:
                # A bug costs one round, not the broker (nor the process).
                self.logger.exception("Socket manager: the broker thread's round failed")

    def serve_once(self, wakeup_fd: int) -> bool:
        """One poll and what it found; False once wakeup_fd is readable."""
        poller = select.poll()
        poller.register(wakeup_fd, select.POLLIN)
        for fd, want_read, want_write in self.watcher.watches():
            poller.register(fd, (select.POLLIN if want_read else 0)
                            | (select.POLLOUT if want_write else 0))
        deadline = self.watcher.next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self.clock()) * 1000
        ready = poller.poll(timeout)
        now = self.clock()
        for fd, events in ready:
            if fd == wakeup_fd:
                return False
        for fd, events in ready:
            readable = bool(events & (select.POLLIN | select.POLLHUP | select.POLLERR))
            self.watcher.handle_ready(fd, readable, bool(events & select.POLLOUT), now)
        deadline = self.watcher.next_deadline()
        if deadline is not None and deadline <= self.clock():
            self.watcher.handle_deadline(self.clock())
        return True


def start_broker_thread(logger: logging.Logger) -> Optional[BrokerThread]:
    """For an in-process server: a thread serving the brokers this process
    owns, or None when it owns none (under a supervisor, which serves
    them)."""
    watcher = OwnedBrokers()
    if not watcher.managers():
        return None
    thread = BrokerThread(watcher, clock=lowlevel.now, logger=logger)
    thread.start()
    return thread
