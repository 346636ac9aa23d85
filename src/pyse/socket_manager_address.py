"""Addresses of the socket manager's listening sockets, and binding them.

A socket is known by its exact address: its kind (``tcp``, ``udp`` or
``unix``) and either a numeric IP address and port or an absolute path.
``127.0.0.1:8080`` and ``0.0.0.0:8080`` are two keys: they are two sockets
that accept different connections, so asking for one never returns the
other (ServerEngine's cache conflates them).

Host names are resolved here, by the caller's own process; the broker only
accepts numeric addresses, so that a request can never make the server's
loop wait on DNS.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

KINDS = ("tcp", "udp", "unix")
#: sun_path holds 108 bytes with the terminating NUL
UNIX_PATH_MAX = 107

_SOCKET_TYPE = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "unix": socket.SOCK_STREAM}
#: SO_TYPE (an int) -> the kind of an inet socket
_INET_KIND: dict[int, str] = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


#: a socket's key in a manager's table: (kind, host, port) or ("unix", path)
SocketKey = Union[Tuple[str, str, int], Tuple[str, str]]


@dataclass(frozen=True)
class SocketAddress:
    """One listening socket's exact address: ``host``/``port`` for tcp and
    udp (``host`` a canonical numeric IP address), ``path`` for unix."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def key(self) -> SocketKey:
        """The manager's table key: ``("tcp", host, port)``, ``("udp", host,
        port)`` or ``("unix", path)``."""
        if self.kind == "unix":
            return ("unix", self.path)
        return (self.kind, self.host, self.port)

    @property
    def family(self) -> int:
        if self.kind == "unix":
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def socket_type(self) -> int:
        return _SOCKET_TYPE[self.kind]

    def to_request(self) -> dict[str, Any]:
        """The address fields of a broker request (see docs/sockets.md)."""
        if self.kind == "unix":
            return {"kind": "unix", "path": self.path}
        return {"kind": self.kind, "host": self.host, "port": self.port}

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix {self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


def check_port(port: Any) -> int:
    """A port number 0-65535 (an int, or a string of digits as config files give)."""
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port: got {port!r}, expected an integer from 0 to 65535")
    return port


def canonical_ip(host: str) -> Optional[str]:
    """host as a canonical numeric IP address ("::0" -> "::"), or None if it
    is not a numeric address.  An IPv6 scope ("fe80::1%eth0") is kept."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def inet_address(kind: str, bind: Any, port: Any, *, resolve: bool = True) -> SocketAddress:
    """The address of a tcp or udp socket.  ``bind`` is a numeric IP address,
    "" (every IPv4 address, as "0.0.0.0"), or, with ``resolve``, a host name
    (the first address getaddrinfo gives)."""
    if kind not in ("tcp", "udp"):
        raise ValueError(f"kind: got {kind!r}, expected 'tcp' or 'udp'")
    port = check_port(port)
    if not isinstance(bind, str):
        raise ValueError(f"bind: got {bind!r}, expected an IP address or host name (a string)")
    host = canonical_ip(bind or "0.0.0.0")
    if host is None:
        if not resolve:
            raise ValueError(f"host: got {bind!r}, expected a numeric IP address")
        host = resolve_host(bind, port, _SOCKET_TYPE[kind])
    return SocketAddress(kind, host=host, port=port)


def resolve_host(name: str, port: int, socket_type: int) -> str:
    try:
        infos = socket.getaddrinfo(name, port, 0, socket_type, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OSError(e.errno, f"resolving the bind address {name!r}: {e.strerror}") from None
    host = canonical_ip(str(infos[0][4][0]))  # an inet address: (host, port, ...)
    assert host is not None, infos
    return host


def unix_address(path: Any, *, require_absolute: bool = False) -> SocketAddress:
    """The address of a unix stream socket.  A relative path is made
    absolute against the current directory (unless ``require_absolute``:
    the broker cannot know its client's current directory)."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\0" in path:
        raise ValueError(f"path: got {path!r}, expected a file path (a non-empty string)")
    if not os.path.isabs(path):
        if require_absolute:
            raise ValueError(f"path: got {path!r}, expected an absolute path")
        path = os.path.abspath(path)
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"path: {path!r} is longer than the {UNIX_PATH_MAX} bytes "
                         f"a unix socket address holds")
    return SocketAddress("unix", path=path)


def address_from_request(request: dict[str, Any]) -> SocketAddress:
    """The address of a broker request, checked; raises ValueError."""
    kind = request.get("kind")
    if kind == "unix":
        return unix_address(request.get("path"), require_absolute=True)
    if kind in ("tcp", "udp"):
        return inet_address(kind, request.get("host"), request.get("port"), resolve=False)
    raise ValueError(f"kind: got {kind!r}, expected one of 'tcp', 'udp', 'unix'")


def address_of_socket(sock: socket.socket) -> Optional[SocketAddress]:
    """The address a socket is bound to (getsockname), or None for a socket
    the manager cannot serve (another family or type, an unbound one)."""
    try:
        sock_type = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        name = sock.getsockname()
    except OSError:
        return None
    if sock.family == socket.AF_UNIX:
        if sock_type != socket.SOCK_STREAM or not name:
            return None
        path = name.decode(errors="surrogateescape") if isinstance(name, bytes) else name
        return SocketAddress("unix", path=path)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    kind = _INET_KIND.get(sock_type)
    if kind is None:
        return None
    return SocketAddress(kind, host=canonical_ip(name[0]) or name[0], port=name[1])


def bind_listener(address: SocketAddress, *, backlog: int,
                  reuseport: bool = False) -> socket.socket:
    """A new socket bound to address (and listening, for tcp and unix), in
    non-blocking mode.  Errors name the address: "binding tcp
    127.0.0.1:80: Permission denied"."""
    sock = socket.socket(address.family, address.socket_type)
    try:
        if address.kind == "tcp":
            # A restarted server must rebind at once, whatever TIME_WAIT
            # connections the previous one left.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport and address.kind != "unix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            # "::" means IPv6 only, so that "0.0.0.0" on the same port is a
            # socket of its own, as the keys say.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if address.kind == "unix":
            remove_stale_unix_socket(address.path)
            sock.bind(address.path)
        else:
            sock.bind(_sockaddr(address))
        if address.socket_type == socket.SOCK_STREAM:
            sock.listen(backlog)
        # Every copy shares one open file description, and so its
        # O_NONBLOCK flag: non-blocking is the only mode in which one
        # worker's accept never stalls another's.
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"binding {address}: {e.strerror or e}") from None
    return sock


def _sockaddr(address: SocketAddress) -> tuple[Any, ...]:
    infos = socket.getaddrinfo(address.host, address.port, address.family, address.socket_type,
                               0, socket.AI_NUMERICHOST | socket.AI_PASSIVE)
    return infos[0][4]


def remove_stale_unix_socket(path: str) -> None:
    """Removes a unix socket file that nobody listens on any more (left by a
    process that died); refuses a live one and anything that is not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog must not block the caller
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)       # nobody listens: stale
        return
    except BlockingIOError:
        pass                  # listening, with a full backlog
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"{path}: another process listens on it")
