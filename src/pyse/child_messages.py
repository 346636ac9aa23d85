"""Messages from a process to one of its children, over a pipe of their own.

A server tells a running worker process something more than a signal can
say (the configuration a reload loaded).  Each child that wants messages
gets a pipe at fork: the parent holds the write end, the child the read end.
A message is a 4-byte big-endian length and the payload.

Neither side may block on the other.  The parent writes what the pipe takes
and keeps the rest in an outbox, which its loop finishes when the pipe turns
writable (:class:`MessageChannels` is a watcher of the process manager); a
child that never reads costs its outbox, never the parent's loop.  The child
reads what is there when the pipe turns readable (:class:`MessageReader`).
"""
from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Iterable, Optional

HEADER = struct.Struct("!I")
#: a larger message is refused: no configuration is that big, and a reader
#: must not be made to hold an unbounded buffer
MAX_MESSAGE = 16 * 1024 * 1024


class MessageChannels:
    """The parent's write ends, one per child, and what is still to write."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._fds: dict[int, int] = {}          # pid -> write end
        self._outboxes: dict[int, bytearray] = {}

    def add(self, pid: int, write_fd: int) -> None:
        os.set_blocking(write_fd, False)
        self._fds[pid] = write_fd
        self._outboxes[pid] = bytearray()

    def remove(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        self._outboxes.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def fds(self) -> list[int]:
        """Every write end: no child may keep a sibling's."""
        return list(self._fds.values())

    def close(self) -> None:
        for pid in list(self._fds):
            self.remove(pid)

    def send(self, pid: int, payload: bytes) -> bool:
        """Queues a message for pid and writes what the pipe takes now;
        False if pid has no channel (not ours, or gone)."""
        if pid not in self._fds:
            return False
        if len(payload) > MAX_MESSAGE:
            raise ValueError(f"a message of {len(payload)} bytes to pid {pid}: the largest "
                             f"is {MAX_MESSAGE}")
        self._outboxes[pid] += HEADER.pack(len(payload)) + payload
        self._flush(pid)
        return True

    def _flush(self, pid: int) -> None:
        outbox = self._outboxes[pid]
        while outbox:
            try:
                written = os.write(self._fds[pid], outbox)
            except BlockingIOError:
                return  # the loop finishes it when the pipe turns writable
            except OSError as e:
                if e.errno != errno.EPIPE:
                    self.logger.error("Message to pid %d: write failed: %s", pid, e)
                outbox.clear()   # the child is gone (or its pipe broke): drop it
                return
            del outbox[:written]

    # -- the watcher protocol (see pyse.process_manager) -----------------------
    def watches(self) -> Iterable[tuple[int, bool, bool]]:
        return [(self._fds[pid], False, True) for pid, box in self._outboxes.items() if box]

    def handle_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        for pid, own in list(self._fds.items()):
            if own == fd:
                self._flush(pid)

    def next_deadline(self) -> Optional[float]:
        return None

    def handle_deadline(self, now: float) -> None:
        pass


class MessageReader:
    """The child's read end: complete messages as they arrive."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False
        self._buffer = bytearray()

    def read_messages(self) -> list[bytes]:
        """What arrived, whole; sets :attr:`closed` at end of file (the
        parent is gone)."""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
        messages = []
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                raise ValueError(f"a message of {size} bytes: the channel is corrupt")
            if len(self._buffer) < HEADER.size + size:
                break
            messages.append(bytes(self._buffer[HEADER.size:HEADER.size + size]))
            del self._buffer[:HEADER.size + size]
        return messages
