"""The socket manager's broker: a unix socket through which a process that
did not inherit the manager (a spawned program) asks for a listening
socket and receives it over SCM_RIGHTS.

The broker runs inside the process that owns the sockets, a process that
supervises others and forks; it must never block that process nor need a
thread.  So it is readiness-driven, like a sans-I/O protocol: the owner's
loop asks :meth:`SocketBroker.watches` which fds to poll, reports readiness
to :meth:`SocketBroker.handle_ready`, wakes up at
:meth:`SocketBroker.next_deadline` and calls
:meth:`SocketBroker.handle_deadline`: the watcher protocol of
:class:`pyse.process_manager.ProcessManager`.  Every socket is non-blocking, a
request is at most :data:`MAX_REQUEST` bytes, and a client has
``timeout`` seconds from its connection to the end of its reply: one that
sends nothing, sends garbage or never reads costs a few bytes and an fd
until then, never the loop's time.  Who drives it is
:mod:`pyse.socket_manager_tree`'s business.

The wire protocol is in docs/sockets.md.
"""
from __future__ import annotations

import enum
import hmac
import json
import logging
import os
import socket
import struct
import tempfile
from typing import Any, Callable, Optional, Tuple

from pyse.socket_manager_address import UNIX_PATH_MAX, SocketAddress, address_from_request

#: a request is one line of JSON of at most this many bytes, newline included
MAX_REQUEST = 4096
#: clients connected at once; past it the oldest is dropped
MAX_CLIENTS = 128
#: connections accepted per readiness report, so a flood cannot starve the rest
ACCEPTS_PER_WAKEUP = 16
#: after EMFILE/ENFILE, seconds before the broker accepts again (the
#: listening socket stays readable: watching it would spin)
ACCEPT_PAUSE = 0.1
BROKER_SOCKET_NAME = "broker.sock"

#: provide(address or None, name or None, may_bind) -> (the table's socket, its
#: address); without may_bind, only a socket the table already holds
Provider = Callable[[Optional[SocketAddress], Optional[str], bool],
                    Tuple[socket.socket, SocketAddress]]


class ClientState(enum.Enum):
    READING_REQUEST = "reading request"
    WRITING_REPLY = "writing reply"


class BrokerClient:
    """One connection to the broker: it sends one request line, gets one
    reply line (with the fd attached to its first byte), and is closed."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.state = ClientState.READING_REQUEST
        self.inbox = bytearray()
        self.outbox = b""
        #: a dup of the socket being handed over, closed once sent
        self.fd_to_send: Optional[int] = None
        self.peer_uid, self.peer = peer_credentials(sock)

    def close(self) -> None:
        if self.fd_to_send is not None:
            os.close(self.fd_to_send)
            self.fd_to_send = None
        self.sock.close()


def peer_credentials(sock: socket.socket) -> Tuple[Optional[int], str]:
    """(uid or None, "pid 123 uid 1000") from SO_PEERCRED, for the checks
    and the log."""
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    except OSError as e:
        return None, f"unknown peer ({e.strerror})"
    return uid, f"pid {pid} uid {uid}"


def open_broker_socket(path: Optional[str], directory: Optional[str]
                       ) -> Tuple[socket.socket, str, Optional[str]]:
    """Binds the broker's listening socket, mode 0600.  Without ``path`` it
    is ``broker.sock`` in a new private directory (mode 0700, random name)
    under ``directory``, else $XDG_RUNTIME_DIR, else the temp directory.
    Returns (socket, its path, the directory created or None)."""
    created = None
    if path is None:
        base = directory or default_broker_directory()
        try:
            created = tempfile.mkdtemp(prefix="pyse-sockets-", dir=base)
        except OSError as e:
            raise OSError(e.errno, f"creating the socket manager's directory in {base}: "
                                   f"{e.strerror}") from None
        path = os.path.join(created, BROKER_SOCKET_NAME)
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        _remove_dir(created)
        raise ValueError(f"socket manager path {path!r} is longer than the {UNIX_PATH_MAX} "
                         f"bytes a unix socket address holds; choose a shorter directory")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask closes the window between bind() and chmod() when the path
    # is not in our private directory.
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        _remove_dir(created)
        raise OSError(e.errno, f"creating the socket manager's socket {path}: "
                               f"{e.strerror or e}") from None
    finally:
        os.umask(old_umask)
    return sock, path, created


def default_broker_directory() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime) \
            and os.access(runtime, os.W_OK | os.X_OK):
        return runtime
    return tempfile.gettempdir()


def _remove_dir(directory: Optional[str]) -> None:
    if directory is not None:
        try:
            os.rmdir(directory)
        except OSError:
            pass  # not empty or gone: leaving a directory is harmless


class SocketBroker:
    """The broker's listening socket and its clients; see the module doc."""

    def __init__(self, path: Optional[str], directory: Optional[str], token: str,
                 provide: Provider, *, timeout: float, logger: logging.Logger) -> None:
        self.listener, self.path, self._created_dir = open_broker_socket(path, directory)
        self._token = token.encode()
        self._provide = provide
        self.timeout = timeout
        self.logger = logger
        self._clients: dict[int, BrokerClient] = {}
        self._accept_paused_until: Optional[float] = None
        self._owner_pid = os.getpid()

    # -- what the loop asks ----------------------------------------------------
    def watches(self) -> list[tuple[int, bool, bool]]:
        """(fd, want readable, want writable) for every fd to poll now."""
        out = []
        if self.listener.fileno() >= 0 and self._accept_paused_until is None:
            out.append((self.listener.fileno(), True, False))
        for fd, client in self._clients.items():
            reading = client.state is ClientState.READING_REQUEST
            out.append((fd, reading, not reading))
        return out

    def next_deadline(self) -> Optional[float]:
        """The earliest time handle_deadline() has work (monotonic), or None."""
        times = [c.deadline for c in self._clients.values()]
        if self._accept_paused_until is not None:
            times.append(self._accept_paused_until)
        return min(times) if times else None

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        """fd became readable and/or writable (report a hangup or an error
        as readable).  An fd the broker no longer watches is ignored."""
        if fd == self.listener.fileno():
            if readable:
                self.accept_clients(now)
            return
        client = self._clients.get(fd)
        if client is None:
            return
        if client.state is ClientState.READING_REQUEST and readable:
            self.read_request(client)
        elif client.state is ClientState.WRITING_REPLY and (writable or readable):
            self.write_reply(client)

    def handle_deadline(self, now: float) -> None:
        """Drops the clients whose time is up; accepts again after a pause."""
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
        for fd, client in list(self._clients.items()):
            if now >= client.deadline:
                self.logger.warning("Socket manager: dropping a client (%s) that did not "
                                    "finish within %g s (%s)", client.peer, self.timeout,
                                    client.state.value)
                self.drop_client(fd)

    # -- connections ---------------------------------------------------------------
    def accept_clients(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                self.logger.error("Socket manager: accepting a client failed: %s", e)
                self._accept_paused_until = now + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            if len(self._clients) >= MAX_CLIENTS:
                oldest_fd, oldest = next(iter(self._clients.items()))
                self.logger.warning("Socket manager: %d clients connected; dropping the "
                                    "oldest (%s)", len(self._clients), oldest.peer)
                self.drop_client(oldest_fd)
            self._clients[sock.fileno()] = BrokerClient(sock, now + self.timeout)

    def drop_client(self, fd: int) -> None:
        client = self._clients.pop(fd, None)
        if client is not None:
            client.close()

    def read_request(self, client: BrokerClient) -> None:
        try:
            chunk = client.sock.recv(MAX_REQUEST - len(client.inbox))
        except BlockingIOError:
            return
        except OSError as e:
            self.logger.debug("Socket manager: reading from %s: %s", client.peer, e)
            self.drop_client(client.sock.fileno())
            return
        if not chunk:
            self.drop_client(client.sock.fileno())  # gone before a whole request
            return
        client.inbox += chunk
        line, newline, _ = bytes(client.inbox).partition(b"\n")
        if newline:
            self.answer(client, line)
        elif len(client.inbox) >= MAX_REQUEST:
            self.logger.warning("Socket manager: a request from %s is longer than %d bytes",
                                client.peer, MAX_REQUEST)
            self.reply(client, {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes"})

    def answer(self, client: BrokerClient, line: bytes) -> None:
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            token = request.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(
                    token.encode("utf-8", "surrogatepass"), self._token):
                self.logger.warning("Socket manager: refused a request with a wrong token "
                                    "from %s", client.peer)
                self.reply(client, {"ok": False, "error": "wrong token"})
                return
            address, name = parse_request(request)
            sock, actual = self._provide(address, name, self.may_bind_for(client))
        except (ValueError, RecursionError) as e:
            # json's errors and UnicodeError are ValueErrors; RecursionError
            # is JSON nested too deep.
            self.reply(client, {"ok": False, "error": f"bad request: {e}"})
            return
        except OSError as e:
            self.reply(client, {"ok": False, "error": str(e), "errno": e.errno})
            return
        except Exception as e:
            # A bug must cost one request, not the supervising process.
            self.logger.exception("Socket manager: answering %s failed", client.peer)
            self.reply(client, {"ok": False, "error": f"internal error: {type(e).__name__}"})
            return
        self.logger.debug("Socket manager: handing %s to %s", actual, client.peer)
        self.reply(client, {"ok": True, **actual.to_request()}, os.dup(sock.fileno()))

    def may_bind_for(self, client: BrokerClient) -> bool:
        """Whether a request of this client may make the owner bind a new
        socket: only one of the owner's own user (or root's).  A worker
        that runs as another user (``worker_chuser``, let in through
        :meth:`open_to_group`) gets the sockets the owner holds, and cannot
        make a privileged owner bind an address or create a unix socket
        where its own user could not."""
        return client.peer_uid is not None and client.peer_uid in (0, os.geteuid())

    def open_to_group(self, gid: int) -> None:
        """Lets the members of group gid connect: the socket becomes mode
        0660 and the private directory pyse made for it 0710, both of that
        group.  Neither is writable by the group, so no member can replace
        the socket."""
        for path, mode in ((self._created_dir, 0o710), (self.path, 0o660)):
            if path is None:
                continue
            try:
                os.chown(path, -1, gid)
                os.chmod(path, mode)
            except OSError as e:
                raise OSError(e.errno, f"giving the socket manager's {path} to group {gid} "
                                       f"(mode {mode:o}): {e.strerror}") from None

    def reply(self, client: BrokerClient, message: dict[str, Any], fd: Optional[int] = None) -> None:
        client.state = ClientState.WRITING_REPLY
        client.outbox = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        client.fd_to_send = fd
        self.write_reply(client)

    def write_reply(self, client: BrokerClient) -> None:
        # MSG_NOSIGNAL: a client that hung up must not SIGPIPE the owner.
        try:
            if client.fd_to_send is not None:
                sent = socket.send_fds(client.sock, [client.outbox], [client.fd_to_send],
                                       socket.MSG_NOSIGNAL)
                os.close(client.fd_to_send)
                client.fd_to_send = None
            else:
                sent = client.sock.send(client.outbox, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return
        except OSError as e:
            self.logger.debug("Socket manager: replying to %s: %s", client.peer, e)
            self.drop_client(client.sock.fileno())
            return
        client.outbox = client.outbox[sent:]
        if not client.outbox:
            self.drop_client(client.sock.fileno())

    # -- the end -------------------------------------------------------------------
    def close(self) -> None:
        """Closes every connection and the listening socket; in the process
        that created it, removes the socket file and its private directory."""
        for fd in list(self._clients):
            self.drop_client(fd)
        if self.listener.fileno() >= 0:
            self.listener.close()
            if os.getpid() == self._owner_pid:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                _remove_dir(self._created_dir)

    def close_in_child(self) -> None:
        """In a forked child: close the inherited copies, leave the files."""
        self._owner_pid = -1
        self.close()


def parse_request(request: dict[str, Any]) -> Tuple[Optional[SocketAddress], Optional[str]]:
    """(address or None, name or None) of a request whose token was checked."""
    name = request.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name: got {name!r}, expected a non-empty string")
    address = address_from_request(request) if "kind" in request else None
    if address is None and name is None:
        raise ValueError("a request names a socket by kind and address, or by name")
    return address, name
