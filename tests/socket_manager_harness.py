"""What the socket manager's tests share: a manager whose broker a thread
serves (as in an in-process server), and raw requests written straight
from the wire protocol."""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional

import helpers

from pyse.socket_manager import SocketManagerServer
from pyse.socket_manager_tree import BrokerThread

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


# -- pyse programs on the tree's socket manager ----------------------------------------

#: execs argv[2:] with the fds listed in argv[1] moved to 3, 4, ..., as
#: systemd passes them, and LISTEN_PID set to the pid (exec keeps it)
#: unless it is set already
EXEC_ACTIVATED = """
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
# Out of the way first, so that moving one never overwrites another.
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.setdefault("LISTEN_PID", str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port free for TCP and for UDP on 127.0.0.1 (another program of a
    parallel suite may hold one of them: then another port)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free for both TCP and UDP")


def listening_inodes(kind: str, port: int) -> list[int]:
    """Inodes of the sockets bound to 127.0.0.1:port (TCP: listening), from
    /proc/net/tcp or /proc/net/udp."""
    wanted = f"0100007F:{port:04X}"
    found = []
    with open(f"/proc/net/{kind}") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] == wanted and (kind == "udp" or fields[3] == "0A"):
                found.append(int(fields[9]))
    return found


def holds_socket(pid: int, inode: int) -> bool:
    """Whether process pid has an fd on the socket with this inode."""
    target = f"socket:[{inode}]"
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                return True
        except FileNotFoundError:
            continue
    return False


class ProgramRun:
    """A pyse program in a session of its own, its output in a log file;
    close() kills the whole group and reaps it."""

    def __init__(self, directory: Path, argv: list, *, name: str = "run",
                 env: Optional[dict] = None, supervised: bool = False, **popen) -> None:
        self.log_path = directory / f"{name}.log"
        self.supervised = supervised
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(a) for a in argv], env=helpers.marked_env(env),
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         **popen)
        self.pid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self, pids: list[int]) -> list[int]:
        return [p for p in pids if helpers.is_running(p)]

    def servers(self) -> list[int]:
        """The server processes (the top process itself without a supervisor)."""
        return self.running(helpers.children_of(self.pid)) if self.supervised else [self.pid]

    def workers(self) -> list[int]:
        """The worker processes of every server."""
        return [w for s in self.servers() for w in self.running(helpers.children_of(s))]

    def wait_workers(self, count: int, timeout: float = 15.0) -> list[int]:
        """Waits for one server with count running workers; returns them."""
        def ready():
            servers = self.servers()
            workers = self.workers()
            return len(servers) == 1 and len(workers) == count and workers
        return helpers.wait_for(ready, timeout, what=f"one server with {count} workers; log:\n"
                                + self.log()[-2000:])

    def stop(self, timeout: float = 20.0) -> int:
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {timeout} s after TERM; log:\n"
                                 + self.log()[-3000:]) from None

    def close(self) -> None:
        helpers.kill_group(self.pid)
        self.proc.wait(10)


def write_config(directory: Path, config: dict, name: str = "config") -> Path:
    path = directory / f"{name}.json"
    helpers.write_json_atomically(path, config)
    return path


# -- HTTP load ----------------------------------------------------------------------------

CLIENTS = 8
REQUESTS_PER_CLIENT = 250


def http_get(port: int) -> str:
    """One GET on a new connection: "ok", "refused", or "cut" (the
    connection died before a whole response)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            response = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                response += chunk
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        return "cut"
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 200 "):
        return "cut"
    length = next(int(line.split(b":")[1]) for line in lines[1:]
                  if line.lower().startswith(b"content-length:"))
    return "ok" if len(body) == length and body.startswith(b"Hello from worker") else "cut"


def wait_http_ready(run: ProgramRun, port: int, workers: int) -> None:
    helpers.wait_for(lambda: len(run.workers()) == workers and http_get(port) == "ok",
                     15, what=f"{workers} workers answering on port {port}")


def load_while(port: int, interval: float, disturb: Callable[[], bool],
               clients: int = CLIENTS, requests: int = REQUESTS_PER_CLIENT
               ) -> tuple[Counter, int]:
    """clients threads x requests GETs, calling disturb() every interval
    seconds until they are done; returns the outcomes and how many calls of
    disturb() returned True (the events the load crossed)."""
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            outcome = http_get(port)
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    events = 0
    deadline = time.monotonic() + 90
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        events += bool(disturb())
        time.sleep(interval)  # the cadence of the disturbance, not a wait for an event
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the clients did not finish within 90 s"
    return outcomes, events
