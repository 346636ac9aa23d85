"""The control socket's server side as a watcher, served by a real C loop in
a thread of the test, and its client (pyse.control_socket.query): modes,
paths, and clients that never send, never read, or send too much."""
from __future__ import annotations

import os
import pwd
import select
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

import helpers
from pyse import control_socket, lowlevel
from pyse.control_socket import ControlSocketError, ControlSocketServer
from pyse.lowlevel import EventKind
from pyse.watching import WatcherSet
from test_socket_manager import fork_and_report

pytestmark = pytest.mark.timeout(60)


class ServedSocket:
    """A ControlSocketServer served from a C loop on a thread, as a server's
    loop serves it."""

    def __init__(self, path: str, answer: Callable, client_timeout: float) -> None:
        import logging
        self.logger = logging.getLogger("test.control")
        self.server = ControlSocketServer(path, answer, self.logger, client_timeout)
        self.server.open()
        self.loop = lowlevel.Loop()
        self.wakeup = os.pipe()
        self.loop.wake_on_readable(self.wakeup[0])
        self.watchers = WatcherSet(self.logger)
        self.watchers.add(self.server)
        self.closing = False
        self.turns = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.closing:
            self.watchers.sync(self.loop)
            events = self.loop.wait(self.watchers.earliest(None))
            self.watchers.serve([e for e in events if e.kind is EventKind.FD_READY])
            self.turns += 1

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        os.write(self.wakeup[1], b"x")
        self.thread.join(10)
        self.server.close()
        self.loop.close()
        for fd in self.wakeup:
            os.close(fd)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[..., ServedSocket]]:
    started = []

    def start(answer: Callable = lambda request, respond: respond({"ok": request}),
              path: str = str(tmp_path / "app.pid.sock"),
              client_timeout: float = 0.5) -> ServedSocket:
        served_socket = ServedSocket(path, answer, client_timeout)
        started.append(served_socket)
        return served_socket

    yield start
    for served_socket in started:
        served_socket.close()


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with control_socket.unix_address(path) as address:
        sock.connect(address)
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closed sock within timeout (reading what it sent)."""
    sock.setblocking(False)
    deadline = lowlevel.now() + timeout
    while lowlevel.now() < deadline:
        select.select([sock], [], [], max(0.0, deadline - lowlevel.now()))
        try:
            if sock.recv(1 << 20) == b"":
                return True
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_a_request_gets_one_json_answer_and_the_file_is_0600_then_removed(served, tmp_path):
    path = str(tmp_path / "app.pid.sock")
    s = served()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert control_socket.query(path) == {"ok": "status"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".pyse-control-")]
    s.close()
    assert not os.path.exists(path)


def test_a_path_longer_than_sun_path_works(served, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "app.pid.sock")
    assert len(path) > control_socket.SUN_PATH_MAX
    served(path=path)
    assert control_socket.query(path) == {"ok": "status"}


def test_an_unknown_request_is_an_error_naming_the_known_ones(served, tmp_path):
    served()
    with pytest.raises(ControlSocketError, match="unknown request 'shutdown'; known: status"):
        control_socket.query(str(tmp_path / "app.pid.sock"), request="shutdown")


def test_a_client_that_never_sends_is_dropped_and_stalls_nobody(served, tmp_path):
    path = str(tmp_path / "app.pid.sock")
    served(client_timeout=0.5)
    silent = connect(path)
    assert control_socket.query(path, timeout=2) == {"ok": "status"}   # meanwhile, at once
    assert closed_by_peer(silent, 5), "the silent client was not dropped"
    silent.close()


def test_a_client_that_never_reads_a_large_answer_stalls_nobody(served, tmp_path):
    path = str(tmp_path / "app.pid.sock")
    big = {"filler": "x" * (8 << 20)}
    served(answer=lambda request, respond: respond(big if request == "status" else {}),
           client_timeout=1.0)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(path)
    stuck.sendall(b"status\n")
    # The server wrote what the socket took and went on: another client is
    # answered (in full) while the first reads nothing.
    assert control_socket.query(path, timeout=5) == big
    assert closed_by_peer(stuck, 5), "the client that never read was not dropped"
    stuck.close()


def test_a_request_line_that_never_ends_is_dropped(served, tmp_path):
    path = str(tmp_path / "app.pid.sock")
    served(client_timeout=5)
    flood = connect(path)
    flood.sendall(b"s" * (control_socket.MAX_REQUEST + 10))
    assert closed_by_peer(flood, 3)
    flood.close()


def test_more_clients_than_the_limit_drop_the_oldest(served, tmp_path):
    path = str(tmp_path / "app.pid.sock")
    served(client_timeout=30)
    idle = [connect(path) for _ in range(control_socket.MAX_CLIENTS)]
    assert control_socket.query(path, timeout=2) == {"ok": "status"}
    assert closed_by_peer(idle[0], 3), "the oldest idle client made room"
    for sock in idle:
        sock.close()


def test_a_late_answer_goes_to_a_client_still_there(served, tmp_path):
    """The supervisor answers after asking its server: respond() later."""
    path = str(tmp_path / "app.pid.sock")
    pending = []
    served(answer=lambda request, respond: pending.append(respond), client_timeout=5)
    result: dict = {}
    asker = threading.Thread(target=lambda: result.update(control_socket.query(path)))
    asker.start()
    helpers.wait_for(lambda: pending, 5, what="the request")
    pending[0]({"later": True})
    asker.join(5)
    assert result == {"later": True}


def test_an_old_socket_is_replaced_and_another_file_is_refused(tmp_path):
    path = tmp_path / "app.pid.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))
    old.close()                     # a killed daemon's socket, left behind
    new = control_socket.bind_private(str(path), 4)
    new.close()
    path.unlink()
    path.write_text("mine")
    with pytest.raises(ControlSocketError, match="not a socket is in the way"):
        control_socket.bind_private(str(path), 4)
    assert path.read_text() == "mine"


def test_query_errors_name_the_socket(tmp_path):
    with pytest.raises(ControlSocketError, match="app.pid.sock' does not exist"):
        control_socket.query(str(tmp_path / "app.pid.sock"))
    listener = control_socket.bind_private(str(tmp_path / "mute.sock"), 4)
    try:
        with pytest.raises(ControlSocketError, match="no answer within 0.3 s"):
            control_socket.query(str(tmp_path / "mute.sock"), timeout=0.3)
    finally:
        listener.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="pyse-open-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_turned_away_even_with_a_widened_mode(served, open_dir):
    path = str(open_dir / "app.pid.sock")
    served(path=path, client_timeout=5)
    nobody = pwd.getpwnam("nobody").pw_uid

    def attempt(widen: bool) -> str:
        os.chmod(path, 0o666 if widen else 0o600)

        def as_nobody() -> bytes:
            os.setuid(nobody)
            try:
                return b"answered: %r" % control_socket.query(path, timeout=3)
            except ControlSocketError as e:
                return b"refused: " + str(e).encode()
        return fork_and_report(as_nobody).decode()

    refused = attempt(widen=False)
    assert refused.startswith("refused: ") and "Permission denied" in refused, refused
    # Dropped without an answer, whenever the server's close meets the
    # client's request (a reset, a broken pipe, an empty answer).
    refused = attempt(widen=True)
    assert refused.startswith("refused: "), refused
