"""The socket manager: listening sockets that outlive the workers using them.

ServerEngine's ``SocketManager`` in Python names::

    manager = pyse.SocketManager.Server.open()      # in the server (the owner)
    client = pyse.SocketManager.Client(manager.path)  # in a worker
    lsock = client.listen_tcp("0.0.0.0", 8080)

The owner keeps one socket per exact address (see
:mod:`pyse.socket_manager_address`) until :meth:`SocketManagerServer.close`:
nobody else closes them, so they live through worker restarts and
reloads.  Each asker gets its own dup.  A child forked from the owner holds
the table too and takes its dups from it without asking; other processes
ask the broker (:mod:`pyse.socket_manager_broker`), which the owner's loop
drives through :meth:`watches`, :meth:`handle_ready`, :meth:`next_deadline`
and :meth:`handle_deadline` (the loop's watcher protocol).  How pyse's
process tree opens, drives and hands out its manager is
:mod:`pyse.socket_manager_tree`.  docs/sockets.md has the whole story.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from typing import Any, Mapping, Optional, Tuple

from pyse.socket_manager_activation import ActivatedSocket, adopt_activated_sockets
from pyse.config import KEYS
from pyse.socket_manager_address import (SocketAddress, SocketKey, address_of_socket,
                                         bind_listener, inet_address, unix_address)
from pyse.socket_manager_broker import SocketBroker
from pyse.socket_manager_client import (PATH_ENV, TOKEN_ENV, SocketManagerClient,
                                        SocketManagerError, local_managers, register_local,
                                        unregister_local)

__all__ = ["SocketManager", "SocketManagerServer", "SocketManagerClient", "SocketManagerError",
           "PATH_ENV", "TOKEN_ENV"]


class SocketManagerServer:
    """Owns listening sockets by exact address, and the broker that hands
    them to other processes.

    - ``path``: the broker's socket path; by default ``broker.sock`` in a
      new private directory (mode 0700) under ``directory``, else
      ``$XDG_RUNTIME_DIR``, else the temp directory.  The socket is mode 0600.
    - ``reuseport``: set SO_REUSEPORT on the TCP and UDP sockets it binds.
    - ``backlog``: the listen() backlog of the TCP and unix sockets.
    - ``client_timeout``: seconds a broker client has from connecting to
      the end of its reply.
    - ``activation``: adopt the sockets systemd passed in (LISTEN_FDS);
      ``activated`` gives an already adopted list instead.

    The defaults are those of the configuration keys that
    :meth:`from_config` reads.
    """

    def __init__(self, path: Optional[str] = None, *,
                 directory: Optional[str] = KEYS["socket_manager_dir"].default,
                 reuseport: bool = KEYS["socket_reuseport"].default,
                 backlog: int = KEYS["socket_backlog"].default,
                 client_timeout: float = KEYS["socket_manager_timeout"].default,
                 activation: bool = KEYS["socket_activation"].default,
                 activated: Optional[list[ActivatedSocket]] = None,
                 logger: Optional[logging.Logger] = None) -> None:
        self.logger = logger or logging.getLogger("pyse.socket_manager")
        self.reuseport = bool(reuseport)
        self.backlog = int(backlog)
        self.owner_pid = os.getpid()
        #: the secret a broker request must carry
        self.token = secrets.token_hex(32)
        # The owner's loop is single-threaded; the lock is for programs that
        # also ask from threads of their own (thread workers, tests).
        self._lock = threading.Lock()
        self._sockets: dict[SocketKey, socket.socket] = {}
        self._unix_paths_bound: set[str] = set()
        # The broker first: if it cannot be made, nothing was adopted yet.
        self.broker: Optional[SocketBroker] = SocketBroker(
            path, directory, self.token, self.provide, timeout=client_timeout,
            logger=self.logger)
        self.path = self.broker.path
        if activated is None and activation:
            activated = adopt_activated_sockets(logger=self.logger)
        self._activated: list[ActivatedSocket] = list(activated or ())
        for adopted in self._activated:
            self._sockets.setdefault(adopted.address.key, adopted.sock)
        register_local(self)

    @classmethod
    def open(cls, path: Optional[str] = None, *,
             directory: Optional[str] = KEYS["socket_manager_dir"].default,
             reuseport: bool = KEYS["socket_reuseport"].default,
             backlog: int = KEYS["socket_backlog"].default,
             client_timeout: float = KEYS["socket_manager_timeout"].default,
             activation: bool = KEYS["socket_activation"].default,
             activated: Optional[list[ActivatedSocket]] = None,
             logger: Optional[logging.Logger] = None) -> "SocketManagerServer":
        """ServerEngine's ``Server.open(path = nil)``: the constructor."""
        return cls(path, directory=directory, reuseport=reuseport, backlog=backlog,
                   client_timeout=client_timeout, activation=activation, activated=activated,
                   logger=logger)

    @classmethod
    def from_config(cls, config: Mapping[str, Any],
                    logger: Optional[logging.Logger] = None) -> "SocketManagerServer":
        """A manager set up from a validated configuration's socket keys
        (``socket_reuseport``, ``socket_backlog``, ``socket_manager_dir``,
        ``socket_manager_timeout``, ``socket_activation``)."""
        return cls(directory=config["socket_manager_dir"], reuseport=config["socket_reuseport"],
                   backlog=config["socket_backlog"],
                   client_timeout=config["socket_manager_timeout"],
                   activation=config["socket_activation"], logger=logger)

    # -- asking for sockets ----------------------------------------------------------
    def listen_tcp(self, bind: str, port: int, *, name: Optional[str] = None) -> socket.socket:
        """A dup of the TCP socket listening on bind:port (bound on first use)."""
        return self.acquire(inet_address("tcp", bind, port), name)

    def listen_udp(self, bind: str, port: int, *, name: Optional[str] = None) -> socket.socket:
        """A dup of the UDP socket bound to bind:port."""
        return self.acquire(inet_address("udp", bind, port), name)

    def listen_unix(self, path: str, *, name: Optional[str] = None) -> socket.socket:
        """A dup of the unix stream socket listening on path."""
        return self.acquire(unix_address(path), name)

    def listen_named(self, name: str) -> socket.socket:
        """A dup of the socket systemd passed under name."""
        return self.acquire(None, name)

    def acquire(self, address: Optional[SocketAddress], name: Optional[str]) -> socket.socket:
        # In a forked copy, a socket opened after its fork comes from the
        # owner, which must bind it, or it would die with this process; the
        # client keeps a copy in our table (remember_received).
        return self.local_socket(address, name) or self.new_client().acquire(address, name)

    def local_socket(self, address: Optional[SocketAddress],
                     name: Optional[str]) -> Optional[socket.socket]:
        """A dup from this process's table: in the owner, binding what is
        missing; in a forked copy, None for what the copy does not hold."""
        if os.getpid() == self.owner_pid:
            return self.provide(address, name)[0].dup()
        with self._lock:
            sock = self._lookup(address, name)
        return None if sock is None else sock.dup()

    def provide(self, address: Optional[SocketAddress], name: Optional[str],
                may_bind: bool = True) -> Tuple[socket.socket, SocketAddress]:
        """The table's socket for a request (binding it if it is new and
        ``may_bind``), and its address.  The broker calls this; it never
        blocks (addresses are numeric by then)."""
        with self._lock:
            sock = self._lookup(address, name)
            if sock is not None:
                found = address_of_socket(sock) or address
                if found is None:   # a named socket that no longer has an address
                    raise SocketManagerError(f"the socket named {name!r} is no longer a "
                                             f"listening socket")
                return sock, found
            if address is None:
                raise SocketManagerError(f"no socket passed by the service manager is "
                                         f"named {name!r}")
            if not may_bind:
                raise SocketManagerError(f"the socket manager holds no socket on {address}, "
                                         f"and only its owner's user may have it bind one: "
                                         f"bind it in the server's before_run()")
            sock = bind_listener(address, backlog=self.backlog, reuseport=self.reuseport)
            # Port 0: the key is the port the kernel chose.
            actual = address_of_socket(sock) or address
            self._sockets[actual.key] = sock
            if actual.kind == "unix":
                self._unix_paths_bound.add(actual.path)
        self.logger.info("Socket manager: listening on %s", actual)
        return sock, actual

    def _lookup(self, address: Optional[SocketAddress],
                name: Optional[str]) -> Optional[socket.socket]:
        if name is not None:
            for adopted in self._activated:
                if adopted.name == name and (address is None
                                             or adopted.address.kind == address.kind):
                    return adopted.sock
        if address is None or (address.kind != "unix" and address.port == 0):
            return None
        return self._sockets.get(address.key)

    def remember_received(self, sock: socket.socket) -> None:
        """In a forked copy: keeps a dup of a socket the owner's broker sent,
        under its real address, so that this process asks for it once and
        the children it forks from now on inherit it (a supervised server's
        workers take the listener its ``before_run()`` asked for)."""
        if os.getpid() == self.owner_pid:
            return
        address = address_of_socket(sock)
        if address is None:
            return
        with self._lock:
            if address.key not in self._sockets:
                self._sockets[address.key] = sock.dup()

    def sockets(self) -> dict[SocketKey, socket.socket]:
        """key -> socket of every socket held (not dups: do not close them)."""
        with self._lock:
            return dict(self._sockets)

    def new_client(self) -> SocketManagerClient:
        return SocketManagerClient(self.path, self.token)

    def environment(self) -> dict[str, str]:
        """The variables that let a spawned program reach the broker."""
        return {PATH_ENV: self.path, TOKEN_ENV: self.token}

    # -- the broker, driven by the owner's loop ----------------------------------------
    @property
    def serves_here(self) -> bool:
        """True in the process that owns the manager while its broker is
        open: this process's loop (or a broker thread) must drive it."""
        return self.broker is not None and os.getpid() == self.owner_pid

    def watches(self) -> list[tuple[int, bool, bool]]:
        """(fd, want readable, want writable) for each fd to poll now."""
        return self.broker.watches() if self.broker is not None else []

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        if self.broker is not None:
            self.broker.handle_ready(fd, readable, writable, now)

    def next_deadline(self) -> Optional[float]:
        return self.broker.next_deadline() if self.broker is not None else None

    def handle_deadline(self, now: float) -> None:
        """Drops the broker clients whose time is up (see next_deadline)."""
        if self.broker is not None:
            self.broker.handle_deadline(now)

    # -- the end -------------------------------------------------------------------
    def close(self) -> None:
        """Closes the broker and every socket.  The owner also removes the
        files it created (the broker's socket and directory, the unix
        sockets it bound); a forked copy only closes its own copies."""
        owner = os.getpid() == self.owner_pid
        if self.broker is not None:
            if owner:
                self.broker.close()
            else:
                self.broker.close_in_child()
            self.broker = None
        with self._lock:
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()
            for adopted in self._activated:
                adopted.sock.close()
            if owner:
                for path in self._unix_paths_bound:
                    _unlink_quietly(path, self.logger)
            self._unix_paths_bound.clear()
        unregister_local(self)

    def __enter__(self) -> "SocketManagerServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def forget_broker_in_child(self) -> None:
        """In a forked child: close the inherited broker fds (the child must
        not hold the owner's connections open) and keep the table."""
        self._lock = threading.Lock()
        if self.broker is not None:
            self.broker.close_in_child()
            self.broker = None


def _unlink_quietly(path: str, logger: logging.Logger) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("Socket manager: could not remove %s: %s", path, e)


def _forget_brokers_in_child() -> None:
    for manager in local_managers():
        manager.forget_broker_in_child()


os.register_at_fork(after_in_child=_forget_brokers_in_child)


class SocketManager:
    """ServerEngine's ``SocketManager`` module: ``SocketManager.Server`` (the
    owner: ``open(path=None)``, ``path``, ``new_client()``, ``close()``) and
    ``SocketManager.Client(path)`` (``listen_tcp``, ``listen_udp``,
    ``listen_unix``)."""

    Server = SocketManagerServer
    Client = SocketManagerClient
    Error = SocketManagerError
    PATH_ENV = PATH_ENV
    TOKEN_ENV = TOKEN_ENV

    def __init__(self) -> None:
        raise TypeError("SocketManager is a namespace: use SocketManager.Server.open() "
                        "or SocketManager.Client(path)")
