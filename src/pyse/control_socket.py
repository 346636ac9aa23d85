"""The control socket: where ``pyse status`` asks the top process of a
running tree (the server, or the supervisor) what runs.

A UNIX stream socket next to the pid file, ``<pid_path>.sock``, mode 0600:
only its owner (and root) may connect, and a peer of another uid is
dropped even if the file's mode was widened.  A client sends one line, the
request (``status``), and reads one JSON object, one line, then end of
file.  The top process serves it from its loop as a watcher (see
:mod:`pyse.watching`), without blocking: a client has
:data:`CLIENT_TIMEOUT` seconds from its connection to the end of the
answer, after which it is dropped, and at most :data:`MAX_CLIENTS` are
served at once (a new client drops the oldest).  So a client that
connects and never sends, or never reads, costs a few bytes and a few
seconds, never the loop.

The socket file is made in a private directory beside it, given mode 0600
there, and renamed into place, so it never exists with a wider mode.  A
path too long for ``sun_path`` (108 bytes) is reached through
``/proc/self/fd`` and a descriptor of its directory.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from pyse.line_channel import ChannelClosed, LineConnection, encode

#: seconds a client has from its connection to the end of its answer
CLIENT_TIMEOUT = 5.0
#: clients served at once
MAX_CLIENTS = 16
#: the longest request line
MAX_REQUEST = 1024
#: the requests the top process answers
REQUESTS = ("status",)
SUN_PATH_MAX = 107

#: (request, respond): answers now or later by calling respond(answer)
Answer = Callable[[str, Callable[[dict[str, Any]], None]], None]


def socket_path(pid_path: str) -> str:
    """The control socket of the daemon whose pid file is pid_path."""
    return os.fspath(pid_path) + ".sock"


class ControlSocketError(OSError):
    """The control socket cannot be reached or answered badly; the message
    says what was attempted."""


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """An address that reaches path for bind() or connect(): path itself,
    or, when it is too long for sun_path, the same file through
    /proc/self/fd and a descriptor of its directory (Linux)."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dir_fd}/{name}"
    finally:
        os.close(dir_fd)


def bind_private(path: str, backlog: int) -> socket.socket:
    """A listening socket at path, mode 0600 from its first moment.  An
    old socket left at path (a daemon that was killed) is replaced; any
    other file there is an error, never overwritten."""
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISSOCK(existing.st_mode):
        raise ControlSocketError(f"cannot create the control socket {path!r}: a file that is "
                                 f"not a socket is in the way")
    private = tempfile.mkdtemp(prefix=".pyse-control-", dir=os.path.dirname(path) or ".")
    staged = os.path.join(private, "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(staged) as address:
            sock.bind(address)
        os.chmod(staged, 0o600)
        sock.listen(backlog)
        os.replace(staged, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        raise
    finally:
        os.rmdir(private)
    return sock


@dataclass
class Client:
    """One connection to the control socket."""

    connection: LineConnection
    deadline: float
    request: Optional[str] = None
    answered: bool = False


class ControlSocketServer:
    """The top process's side of the control socket: a watcher.  answer
    is called once per client request, in the loop's thread; it may
    respond at once or later (the supervisor asks its server first)."""

    def __init__(self, path: str, answer: Answer, logger: logging.Logger,
                 client_timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.answer = answer
        self.logger = logger
        self.client_timeout = client_timeout
        self.listener: Optional[socket.socket] = None
        self.clients: dict[int, Client] = {}
        self._identity: Optional[tuple[int, int]] = None

    def open(self) -> None:
        """Binds the socket; ControlSocketError/OSError if it cannot."""
        self.listener = bind_private(self.path, MAX_CLIENTS)
        self.listener.setblocking(False)
        info = os.lstat(self.path)
        self._identity = (info.st_dev, info.st_ino)

    def close(self) -> None:
        """Drops every client, closes the socket and removes its file (if
        it is still ours: not a socket a later daemon made)."""
        for fd in list(self.clients):
            self.drop(fd)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._identity is not None:
            try:
                info = os.lstat(self.path)
                if (info.st_dev, info.st_ino) == self._identity:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.logger.warning("Could not remove the control socket %s: %s", self.path, e)
            self._identity = None

    # -- the watcher ---------------------------------------------------------------
    def watches(self) -> list[tuple[int, bool, bool]]:
        if self.listener is None:
            return []
        fds = [(self.listener.fileno(), True, False)]
        for fd, client in self.clients.items():
            reading = client.request is None
            fds.append((fd, reading, client.connection.wants_write))
        return fds

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        if self.listener is not None and fd == self.listener.fileno():
            self.accept_clients(now)
            return
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            if readable and client.request is None:
                self.read_request(fd, client)
            if writable or client.answered:
                client.connection.flush()
        except ChannelClosed:
            self.drop(fd)
            return
        if client.answered and not client.connection.wants_write:
            self.drop(fd)

    def next_deadline(self) -> Optional[float]:
        return min((c.deadline for c in self.clients.values()), default=None)

    def handle_deadline(self, now: float) -> None:
        for fd, client in list(self.clients.items()):
            if client.deadline <= now:
                self.drop(fd)

    # -- clients ---------------------------------------------------------------------
    def accept_clients(self, now: float) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and the like: the client waits in the backlog, and
                # this loop must not spin on it; it is retried next wake-up.
                self.logger.warning("Control socket %s: accept failed: %s", self.path, e)
                return
            if not self.peer_allowed(sock):
                sock.close()
                continue
            if len(self.clients) >= MAX_CLIENTS:
                # The oldest makes room: clients that hold a connection and
                # never finish must not lock the next one out.
                self.drop(min(self.clients, key=lambda fd: self.clients[fd].deadline))
            connection = LineConnection(sock, max_line=MAX_REQUEST)
            self.clients[connection.fd] = Client(connection, now + self.client_timeout)

    @staticmethod
    def peer_allowed(sock: socket.socket) -> bool:
        """Only our own uid and root: the file's mode says so, and this
        holds even if someone widened it."""
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return False
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.geteuid())

    def read_request(self, fd: int, client: Client) -> None:
        lines = client.connection.read_lines()
        if not lines:
            return
        client.request = lines[0].decode("utf-8", "replace").strip()
        if client.request not in REQUESTS:
            self.respond(fd, client, {"error": f"unknown request {client.request[:40]!r}; "
                                               f"known: {', '.join(REQUESTS)}"})
            return
        self.answer(client.request, lambda answer: self.respond(fd, client, answer))

    def respond(self, fd: int, client: Client, answer: dict[str, Any]) -> None:
        if self.clients.get(fd) is not client or client.answered:
            return  # dropped meanwhile (its deadline passed)
        client.answered = True
        try:
            client.connection.queue(encode(answer))
        except ChannelClosed:
            self.drop(fd)
            return
        if not client.connection.wants_write:
            self.drop(fd)

    def drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is not None:
            client.connection.close()


# -- the client side (pyse status) ---------------------------------------------------

def query(path: str, request: str = "status", timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Asks the daemon at control socket path; its answer, a dict.
    ControlSocketError says what failed (no socket, refused, no answer in
    time, a bad answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with unix_address(path) as address:
                sock.connect(address)
            sock.sendall(request.encode() + b"\n")
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            raise ControlSocketError(f"control socket {path!r}: no answer within "
                                     f"{timeout:g} s") from None
        except FileNotFoundError:
            raise ControlSocketError(f"control socket {path!r} does not exist") from None
        except OSError as e:
            raise ControlSocketError(f"control socket {path!r}: {e.strerror or e}") from None
    data = b"".join(chunks)
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlSocketError(f"control socket {path!r}: the answer is not JSON "
                                 f"({len(data)} bytes)") from None
    if not isinstance(answer, dict):
        raise ControlSocketError(f"control socket {path!r}: the answer is not a JSON object")
    if "error" in answer and len(answer) == 1:
        raise ControlSocketError(f"control socket {path!r}: {answer['error']}")
    return answer
