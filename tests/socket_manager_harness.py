"""What the socket manager's tests share: a manager whose broker a thread
serves (as in an in-process server), and raw requests written straight
from the wire protocol."""
from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from pyse.socket_manager import SocketManagerServer
from pyse.socket_manager_broker import BrokerThread

PROGRAMS = Path(__file__).parent / "programs"


@contextlib.contextmanager
def driven_manager(**options) -> Iterator[SocketManagerServer]:
    """A manager (no socket activation) whose broker is served by a thread
    until the block ends; the manager is closed after."""
    manager = SocketManagerServer(activation=False, **options)
    driver = BrokerThread(manager, name="broker-driver")
    driver.start()
    try:
        yield manager
    finally:
        driver.close()
        manager.close()
    assert driver._thread is None, "the broker driver did not stop"


def connect_broker(manager: SocketManagerServer, timeout: float = 5.0) -> socket.socket:
    """A raw connection to the broker; retried while its backlog is full
    (a test that opens hundreds outruns the driver thread)."""
    deadline = time.monotonic() + timeout
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    while True:
        try:
            conn.connect(manager.path)
            return conn
        except BlockingIOError:
            if time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.001)


def read_reply(conn: socket.socket) -> tuple[bytes, list[int]]:
    """The reply line (without its newline) and the fds that came with it;
    b"" if the broker closed the connection first."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, got, _, _ = socket.recv_fds(conn, 4096, 4)
        fds += got
        if not chunk:
            break
        data += chunk
    return data.rstrip(b"\n"), fds


def raw_request(manager: SocketManagerServer, line: bytes) -> tuple[bytes, list[int]]:
    with connect_broker(manager) as conn:
        conn.sendall(line)
        return read_reply(conn)


def wait_readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def accept_one(listener: socket.socket, timeout: float = 5.0) -> socket.socket:
    assert wait_readable(listener, timeout), "no connection arrived"
    conn, _ = listener.accept()
    return conn


def same_open_socket(a: socket.socket, b: socket.socket) -> bool:
    """Two fds of one socket (not merely two sockets on one address)."""
    sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def has_ipv6_loopback() -> Optional[str]:
    """None if ::1 can be bound here, else why not."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"cannot bind ::1 on this machine: {e}"
    return None
