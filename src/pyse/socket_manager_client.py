"""The socket manager's client: how a worker gets a listening socket.

A process that holds the manager (the owner, or a child forked from it)
gets the socket from the manager's table directly: a forked worker asks no
one.  Any other process (a spawned program, or a forked child asking for a
socket opened after it was forked) connects to the broker, whose path and
token are in ``PYSE_SOCKET_MANAGER_PATH`` and ``PYSE_SOCKET_MANAGER_TOKEN``,
and receives the socket over SCM_RIGHTS.  This side may block: it waits at
most ``timeout`` seconds for the broker.
"""
from __future__ import annotations

import hmac
import json
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Optional

from pyse.socket_manager_address import SocketAddress, inet_address, unix_address

if TYPE_CHECKING:  # pragma: no cover
    from pyse.socket_manager import SocketManagerServer

PATH_ENV = "PYSE_SOCKET_MANAGER_PATH"
TOKEN_ENV = "PYSE_SOCKET_MANAGER_TOKEN"
#: a reply is one line of JSON of at most this many bytes
MAX_REPLY = 4096
#: seconds between two connection attempts while the broker's backlog is full
CONNECT_RETRY = 0.01
DEFAULT_TIMEOUT = 5.0

#: managers whose table this process holds (its own, or inherited by fork), by path
_local_managers: dict[str, SocketManagerServer] = {}


class SocketManagerError(OSError):
    """The broker refused a request (bad request, wrong token, unknown name)."""


def register_local(manager: SocketManagerServer) -> None:
    _local_managers[manager.path] = manager


def unregister_local(manager: SocketManagerServer) -> None:
    if _local_managers.get(manager.path) is manager:
        del _local_managers[manager.path]


def local_managers() -> list[SocketManagerServer]:
    return list(_local_managers.values())


class SocketManagerClient:
    """Asks a socket manager for listening sockets by address.

    ``path`` and ``token`` default to the manager this process holds (the
    last one opened, or inherited by fork), else to the environment
    variables ``PYSE_SOCKET_MANAGER_PATH`` and ``PYSE_SOCKET_MANAGER_TOKEN``.

    Every ``listen_*`` returns a new ``socket.socket`` for the same open
    socket each time it is asked for the same address, in non-blocking
    mode (timeout 0): every copy in every worker shares the O_NONBLOCK
    flag, so never make it blocking; use a timeout (``settimeout(0.5)``)
    or a selector.  ``name`` first looks for a socket passed by systemd
    under that name (``FileDescriptorName=``), then falls back to the
    address."""

    def __init__(self, path: Optional[str] = None, token: Optional[str] = None, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        local = _local_managers.get(path) if path is not None else (
            local_managers()[-1] if _local_managers else None)
        if path is None:
            path = local.path if local is not None else os.environ.get(PATH_ENV)
        if path is None:
            raise ValueError(f"no socket manager: this process holds none, and "
                             f"{PATH_ENV} is not set")
        if token is None:
            token = local.token if local is not None else os.environ.get(TOKEN_ENV)
        if token is None:
            raise ValueError(f"no token for the socket manager at {path}: pass token= "
                             f"or set {TOKEN_ENV}")
        self.path = path
        self.token = token
        self.timeout = timeout

    def listen_tcp(self, bind: str, port: int, *, name: Optional[str] = None) -> socket.socket:
        """A TCP socket listening on bind:port (bind: an IP address, a host
        name, or "" for every IPv4 address)."""
        return self.acquire(inet_address("tcp", bind, port), name)

    def listen_udp(self, bind: str, port: int, *, name: Optional[str] = None) -> socket.socket:
        """A UDP socket bound to bind:port."""
        return self.acquire(inet_address("udp", bind, port), name)

    def listen_unix(self, path: str, *, name: Optional[str] = None) -> socket.socket:
        """A unix stream socket listening on path (made absolute here)."""
        return self.acquire(unix_address(path), name)

    def listen(self, proto: str, bind: str, port: int) -> socket.socket:
        """ServerEngine's ``listen(proto, bind, port)``: proto "tcp" or "udp"."""
        return self.acquire(inet_address(str(proto), bind, port), None)

    def listen_named(self, name: str) -> socket.socket:
        """The socket systemd passed under ``name``; an error if there is none."""
        return self.acquire(None, name)

    def acquire(self, address: Optional[SocketAddress], name: Optional[str]) -> socket.socket:
        local = _local_managers.get(self.path)
        if local is None or not hmac.compare_digest(local.token, self.token):
            return request_socket(self.path, self.token, address, name, self.timeout)
        sock = local.local_socket(address, name)
        if sock is None:
            sock = request_socket(self.path, self.token, address, name, self.timeout)
            local.remember_received(sock)
        return sock


def request_socket(path: str, token: str, address: Optional[SocketAddress],
                   name: Optional[str], timeout: float) -> socket.socket:
    """One round trip to the broker at path (see docs/sockets.md)."""
    deadline = time.monotonic() + timeout
    request: dict[str, Any] = {"token": token}
    if address is not None:
        request.update(address.to_request())
    if name is not None:
        request["name"] = name
    line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        connect_before(conn, path, deadline)
        try:
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.sendall(line)
            reply, fds = receive_reply(conn, deadline)
        except socket.timeout:
            raise TimeoutError(f"the socket manager at {path} did not answer within "
                               f"{timeout:g} s") from None
    return socket_from_reply(reply, fds, path)


def connect_before(conn: socket.socket, path: str, deadline: float) -> None:
    while True:
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            conn.connect(path)
            return
        except BlockingIOError:
            # The broker's backlog is full (it is busy or being flooded).
            if time.monotonic() + CONNECT_RETRY >= deadline:
                raise TimeoutError(f"the socket manager at {path} accepted no connection "
                                   f"in time") from None
            time.sleep(CONNECT_RETRY)
        except socket.timeout:
            raise TimeoutError(f"connecting to the socket manager at {path} timed out") from None
        except OSError as e:
            raise OSError(e.errno, f"connecting to the socket manager at {path}: "
                                   f"{e.strerror or e}") from None


def receive_reply(conn: socket.socket, deadline: float) -> tuple[bytes, list[int]]:
    data = b""
    fds: list[int] = []
    try:
        while b"\n" not in data:
            if len(data) > MAX_REPLY:
                raise SocketManagerError("the socket manager's reply is too long")
            conn.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk, got, flags, _ = socket.recv_fds(conn, MAX_REPLY, 1, socket.MSG_CMSG_CLOEXEC)
            fds += got
            if flags & socket.MSG_CTRUNC:
                raise SocketManagerError("the socket manager's reply carried more fds than one")
            if not chunk:
                raise SocketManagerError("the socket manager closed the connection "
                                         "before its reply")
            data += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return data.partition(b"\n")[0], fds


def socket_from_reply(reply: bytes, fds: list[int], path: str) -> socket.socket:
    try:
        try:
            message = json.loads(reply.decode("utf-8"))
        except ValueError:
            raise SocketManagerError(f"the socket manager at {path} sent a reply that is "
                                     f"not JSON: {reply[:200]!r}") from None
        if not isinstance(message, dict) or not message.get("ok"):
            error = message.get("error") if isinstance(message, dict) else message
            code = message.get("errno") if isinstance(message, dict) else None
            if isinstance(code, int):
                raise OSError(code, f"socket manager: {error}")
            raise SocketManagerError(f"socket manager: {error}")
        if len(fds) != 1:
            raise SocketManagerError(f"the socket manager's reply carried {len(fds)} fds, not 1")
        sock = socket.socket(fileno=fds[0])
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    sock.setblocking(False)
    return sock
