"""systemd socket activation: the test makes the sockets and starts a
program the way systemd would, with them from fd 3 on and LISTEN_PID,
LISTEN_FDS and LISTEN_FDNAMES set."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from helpers import marked_env
from pyse.socket_manager_activation import adopt_activated_sockets
from socket_manager_harness import EXEC_ACTIVATED, PROGRAMS

pytestmark = pytest.mark.timeout(30)


def run_activated(fds: list[int], names: list[str], requests: list, *,
                  listen_pid: str = "") -> dict:
    """Runs programs/socket_activated.py as systemd would start it, with
    fds from 3 on; LISTEN_PID is the program's own pid unless given."""
    env = marked_env({"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": ":".join(names)})
    env.pop("LISTEN_PID", None)
    if listen_pid:
        env["LISTEN_PID"] = listen_pid
    out = subprocess.run([sys.executable, "-c", EXEC_ACTIVATED, ",".join(map(str, fds)),
                          sys.executable, str(PROGRAMS / "socket_activated.py"),
                          json.dumps(requests)],
                         env=env, pass_fds=fds, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def inode(sock) -> int:
    return os.fstat(sock.fileno() if hasattr(sock, "fileno") else sock).st_ino


@pytest.fixture
def passed_sockets(tmp_path):
    """What a .socket unit would pass: a TCP and a unix listener, a UDP
    socket, and two fds the manager must leave alone (a pipe, a TCP socket
    that does not listen)."""
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "admin.sock"))
    unix.listen()
    idle = socket.socket()
    idle.bind(("127.0.0.1", 0))
    pipe_r, pipe_w = os.pipe()
    yield {"web": tcp, "dns": udp, "admin": unix, "pipe": pipe_r, "idle": idle,
           "unix_path": str(tmp_path / "admin.sock")}
    for s in (tcp, udp, unix, idle):
        s.close()
    os.close(pipe_r)
    os.close(pipe_w)


def test_passed_sockets_are_adopted_and_matched_by_address_or_name(passed_sockets):
    s = passed_sockets
    names = ["web", "dns", "admin", "pipe", "idle"]
    fds = [s[n] if isinstance(s[n], int) else s[n].fileno() for n in names]
    tcp_port, udp_port = s["web"].getsockname()[1], s["dns"].getsockname()[1]
    result = run_activated(fds, names, [
        ["listen_tcp", ["127.0.0.1", tcp_port], {}],            # by address
        ["listen_tcp", ["0.0.0.0", 1], {"name": "web"}],         # by name
        ["listen_udp", ["127.0.0.1", udp_port], {}],
        ["listen_named", ["dns"], {}],
        ["listen_unix", [s["unix_path"]], {}],
        ["listen_named", ["pipe"], {}],                          # not a socket: not adopted
        ["listen_named", ["idle"], {}],                          # not listening: not adopted
    ])
    assert result["env"] == {}, "the activation variables must be cleared"
    assert result["adopted"] == [
        ["web", ["tcp", "127.0.0.1", tcp_port]],
        ["dns", ["udp", "127.0.0.1", udp_port]],
        ["admin", ["unix", s["unix_path"]]],
    ]
    answers = result["answers"]
    assert [a.get("inode") for a in answers[:5]] == [
        inode(s["web"]), inode(s["web"]), inode(s["dns"]), inode(s["dns"]), inode(s["admin"])]
    assert "named 'pipe'" in answers[5]["error"]
    assert "named 'idle'" in answers[6]["error"]


def test_sockets_meant_for_another_pid_are_not_adopted(passed_sockets):
    s = passed_sockets
    tcp_port = s["web"].getsockname()[1]
    result = run_activated([s["web"].fileno()], ["web"],
                           [["listen_tcp", ["127.0.0.1", tcp_port], {}]], listen_pid="1")
    assert result["env"] == {} and result["adopted"] == []
    # Not adopted, so the manager tried to bind the address itself.
    assert "Address already in use" in result["answers"][0]["error"]


def test_without_fdnames_every_socket_is_unknown(passed_sockets):
    s = passed_sockets
    result = run_activated([s["web"].fileno()], [], [["listen_named", ["unknown"], {}]])
    assert result["adopted"][0][0] == "unknown"
    assert result["answers"] == [{"inode": inode(s["web"])}]


@pytest.mark.parametrize("environ, why", [
    ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, "another pid"),
    ({"LISTEN_PID": "me", "LISTEN_FDS": "2"}, "not a number"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}, "no LISTEN_PID"),
])
def test_variables_that_do_not_apply_adopt_nothing_and_are_cleared(environ, why, caplog):
    environ = dict(environ, OTHER="kept")
    with caplog.at_level(logging.DEBUG, "pyse.socket_manager"):
        assert adopt_activated_sockets(environ, pid=os.getpid() + 100000) == [], why
    assert environ == {"OTHER": "kept"}
    if why == "not a number":
        assert "expected numbers" in caplog.text
