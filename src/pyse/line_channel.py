"""JSON messages, one a line, over a non-blocking UNIX stream socket: the
framing of the control socket's clients and of the channel between a
supervisor and its server.

Nothing here blocks or waits: reads take what the socket holds, writes put
out what the socket takes and keep the rest for when it is writable again.
Both buffers are bounded, so a peer that never reads, or that sends without
end, costs a bounded amount of memory and is then dropped.
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from typing import Any, Callable, Iterable, Optional

#: the longest line a peer may send; a longer one ends the connection
MAX_LINE = 64 * 1024
#: the most a connection keeps queued for a peer that does not read
MAX_QUEUED = 16 * 1024 * 1024
READ_CHUNK = 65536


class ChannelClosed(Exception):
    """The peer closed the connection, broke it, or broke the protocol;
    the message says which."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class LineConnection:
    """One non-blocking stream socket: lines in, lines out."""

    def __init__(self, sock: socket.socket, max_line: int = MAX_LINE) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.max_line = max_line
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        # The channel to a supervisor is written from the server's thread
        # and flushed from the loop's: the queue is shared.
        self._lock = threading.Lock()

    @property
    def wants_write(self) -> bool:
        return bool(self._outbuf)

    def read_lines(self) -> list[bytes]:
        """The complete lines the socket holds now.  ChannelClosed at end of
        file (after the lines before it), on an error, or for a line longer
        than max_line."""
        lines: list[bytes] = []
        while True:
            try:
                chunk = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return lines
            except OSError as e:
                raise ChannelClosed(f"reading failed: {e}") from e
            if not chunk:
                if lines:
                    return lines  # the end of file is seen again at the next read
                raise ChannelClosed("the peer closed the connection")
            self._inbuf += chunk
            *complete, rest = self._inbuf.split(b"\n")
            lines.extend(bytes(line) for line in complete)
            self._inbuf = bytearray(rest)
            if len(self._inbuf) > self.max_line:
                raise ChannelClosed(f"a line longer than {self.max_line} bytes")

    def queue(self, data: bytes) -> None:
        """Queues data and writes what the socket takes now."""
        with self._lock:
            if len(self._outbuf) + len(data) > MAX_QUEUED:
                raise ChannelClosed(f"the peer does not read: over {MAX_QUEUED} bytes queued")
            self._outbuf += data
        self.flush()

    def flush(self) -> None:
        """Writes what the socket takes; ChannelClosed if the peer is gone."""
        with self._lock:
            while self._outbuf:
                try:
                    sent = self.sock.send(self._outbuf, socket.MSG_NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as e:
                    if e.errno in (errno.EPIPE, errno.ECONNRESET):
                        raise ChannelClosed("the peer closed the connection") from e
                    raise ChannelClosed(f"writing failed: {e}") from e
                del self._outbuf[:sent]

    def close(self) -> None:
        self.sock.close()


def decode(line: bytes) -> dict[str, Any]:
    """One line as a JSON object; ChannelClosed if it is not one."""
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ChannelClosed(f"not a JSON line: {e}") from e
    if not isinstance(message, dict):
        raise ChannelClosed("not a JSON object")
    return message


class Channel:
    """A long-lived connection of JSON messages, served as a watcher (see
    :mod:`pyse.watching`): the supervisor's end of its link to a server,
    or the server's end.  ``on_message(message)`` runs for each message
    in the loop's thread; ``on_closed(reason)`` once, when the connection
    ends.  ``send()`` may be called from any thread; ``wake``, if given, is
    called after a send that could not write everything, so that a loop
    sleeping in another thread watches for writability again."""

    def __init__(self, sock: socket.socket, on_message: Callable[[dict[str, Any]], None],
                 on_closed: Callable[[str], None], logger: logging.Logger) -> None:
        self.connection = LineConnection(sock)
        self.on_message = on_message
        self.on_closed = on_closed
        self.logger = logger
        self.wake: Optional[Callable[[], None]] = None
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.connection.queue(encode(message))
        except ChannelClosed as e:
            self.close(str(e))
            return
        if self.connection.wants_write and self.wake is not None:
            self.wake()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.connection.close()
        self.on_closed(reason)

    # -- the watcher -------------------------------------------------------------
    def watches(self) -> Iterable[tuple[int, bool, bool]]:
        if self.closed:
            return []
        return [(self.connection.fd, True, self.connection.wants_write)]

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        try:
            if writable:
                self.connection.flush()
            if readable:
                for line in self.connection.read_lines():
                    if not self.closed:
                        self.on_message(decode(line))
        except ChannelClosed as e:
            self.close(str(e))

    def next_deadline(self) -> Optional[float]:
        return None

    def handle_deadline(self, now: float) -> None:
        """No deadline: never called."""


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of UNIX stream sockets, close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

