"""The socket manager in pyse's process tree (``socket_manager: true``): who
owns the sockets, how a server and each worker type reach them with and
without a supervisor, listeners that outlive a SIGKILLed server, socket
activation through a real ``pyse run``, and worker_chuser."""
from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import helpers
import pyse
from pyse.embedded_server import EmbeddedServer
from pyse.socket_manager_address import inet_address
from pyse.socket_manager_client import request_socket
from socket_manager_harness import (EXEC_ACTIVATED, PROGRAMS, ProgramRun, free_port_pair,
                                    holds_socket, listening_inodes, write_config)

pytestmark = pytest.mark.timeout(60)

PROGRAM = PROGRAMS / "socket_tree.py"
WORKER_TYPES = ["embedded", "thread", "process", "spawn"]


@pytest.fixture
def start_run(tmp_path):
    yield from helpers.started_runs(lambda *a, **kw: ProgramRun(tmp_path, *a, **kw))


def tree_config(tmp_path: Path, worker_type: str, supervisor: bool, **extra) -> dict:
    return {"worker_type": worker_type, "workers": 1 if worker_type == "embedded" else 2,
            "supervisor": supervisor, "socket_manager": True, "log": str(tmp_path / "pyse.log"),
            "server_restart_wait": 0, "test_port": free_port_pair(),
            "test_info": str(tmp_path / "info.json"), **extra}


def start_tree(start_run, tmp_path: Path, config: dict) -> ProgramRun:
    path = write_config(tmp_path, config)
    return start_run([sys.executable, PROGRAM, path], supervised=config["supervisor"])


def ask_tcp(port: int, timeout: float = 15.0) -> dict:
    """The first answer a worker gives on 127.0.0.1:port."""
    def answer():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                return json.loads(conn.makefile().readline())
        except (ConnectionRefusedError, ValueError):
            return None
    return helpers.wait_for(answer, timeout, what=f"an answer on port {port}")


def ask_udp(port: int, text: bytes, timeout: float = 10.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(text, ("127.0.0.1", port))
        return sock.recv(1000)


@pytest.mark.parametrize("supervisor", [False, True], ids=["server", "supervisor"])
@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_the_top_process_owns_the_sockets_every_worker_type_reaches(start_run, tmp_path,
                                                                    worker_type, supervisor):
    config = tree_config(tmp_path, worker_type, supervisor)
    config["test_udp_port"] = config["test_port"]
    run = start_tree(start_run, tmp_path, config)
    port = config["test_port"]
    answer = ask_tcp(port)
    if worker_type == "spawn":
        # A spawned program has no server object: the broker's path and
        # token came in its environment.
        assert answer["how"] == "client"
    else:
        assert answer["how"] == "server" and answer["same"] is True, answer
    # The UDP socket was first asked for by a worker, after it started:
    # the owner bound it (a forked worker got it through the broker).
    assert ask_udp(port, b"ping").endswith(b": ping")
    (tcp_inode,) = listening_inodes("tcp", port)
    (udp_inode,) = listening_inodes("udp", port)
    assert holds_socket(run.pid, tcp_inode) and holds_socket(run.pid, udp_inode), \
        "the top process does not hold the sockets"
    info = json.loads(Path(config["test_info"]).read_text())
    assert info["pid"] != run.pid if supervisor else info["pid"] == run.pid
    # The broker is served (by the supervisor's loop, a process or spawn
    # server's loop, or an in-process server's broker thread): another
    # program gets the same socket.
    asked = request_socket(info["path"], info["token"],
                           inet_address("tcp", "127.0.0.1", port), None, timeout=5)
    assert os.fstat(asked.fileno()).st_ino == tcp_inode
    asked.close()
    assert run.stop() == 0
    assert not os.path.exists(info["path"]), "the broker's socket was left behind"
    assert "Traceback" not in Path(config["log"]).read_text()


@pytest.mark.parametrize("worker_type,how", [("thread", "SIGKILL"), ("process", "SIGKILL"),
                                              ("process", "restart_server_process")])
def test_a_new_server_serves_on_the_same_listener(start_run, tmp_path, worker_type, how):
    """The server SIGKILLed, or restarted by USR1 with restart_server_process."""
    config = tree_config(tmp_path, worker_type, supervisor=True,
                         restart_server_process=how == "restart_server_process")
    run = start_tree(start_run, tmp_path, config)
    port = config["test_port"]
    first = ask_tcp(port)
    before = listening_inodes("tcp", port)
    (server,) = run.servers()
    if how == "SIGKILL":
        os.kill(server, signal.SIGKILL)
    else:
        os.kill(run.pid, signal.SIGUSR1)
    helpers.wait_for(lambda: run.servers() and server not in run.servers(), 15,
                     what="a new server")

    def answered_by_a_new_worker():
        answer = ask_tcp(port)
        return answer if answer["pid"] != first["pid"] else None
    helpers.wait_for(answered_by_a_new_worker, 15, what="an answer from the new server")
    assert listening_inodes("tcp", port) == before, "the listener changed"
    assert run.stop() == 0


def test_without_the_key_the_server_says_which_key_to_set():
    config = pyse.config.load({})
    server = EmbeddedServer(pyse.Worker, {}, config,
                            types.SimpleNamespace(logger=logging.getLogger("test")))
    with pytest.raises(AttributeError, match="set the configuration key socket_manager to true"):
        server.socket_manager.listen_tcp("127.0.0.1", 0)
    assert getattr(server, "socket_manager", None) is None
    # A server may hold a manager of its own, as ServerEngine programs do.
    with pyse.SocketManager.Server(activation=False) as mine:
        server.socket_manager = mine
        assert server.socket_manager is mine


def test_socket_activation_through_a_pyse_run(start_run, tmp_path):
    """`pyse run` started as systemd starts a socket-activated service: the
    top process adopts the passed socket, and the workers serve on it."""
    passed = socket.create_server(("127.0.0.1", 0))
    port = passed.getsockname()[1]
    config = tree_config(tmp_path, "process", supervisor=True, test_port=port,
                         test_name="web")
    path = write_config(tmp_path, config)
    try:
        run = start_run([sys.executable, "-c", EXEC_ACTIVATED, passed.fileno(), sys.executable,
                         "-m", "pyse", "run", "socket_tree:TreeWorker", "--server",
                         "socket_tree:TreeServer", "-c", path],
                        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
                        pass_fds=[passed.fileno()], cwd=PROGRAMS, supervised=True)
        assert ask_tcp(port)["same"] is True
        # Nothing else was bound: the one listener is the passed one, and
        # the top process holds it.
        assert listening_inodes("tcp", port) == [os.fstat(passed.fileno()).st_ino]
        assert holds_socket(run.pid, os.fstat(passed.fileno()).st_ino)
        assert "Socket activation: adopted fd 3 (web) tcp 127.0.0.1:%d" % port \
            in Path(config["log"]).read_text()
        assert run.stop() == 0
    finally:
        passed.close()


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0, reason="worker_chuser needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"needs {SYSTEM_PYTHON}, "
                    "which another user can run (this suite's Python may be root's only)")
def test_workers_of_another_user_get_the_sockets_but_bind_none(start_run, tmp_path):
    """worker_chuser: the broker is opened to the workers' group; a spawned
    program running as that user receives what the server bound, and cannot
    make the (root) owner bind anything.  The program speaks the broker's
    protocol without pyse, so the system's Python runs it."""
    nobody = pwd.getpwnam("nobody")
    client = [SYSTEM_PYTHON, str(PROGRAMS / "socket_broker_client.py")]
    config = tree_config(tmp_path, "spawn", supervisor=True, worker_chuser="nobody")
    request = {"kind": "tcp", "host": "127.0.0.1", "port": config["test_port"]}
    config["test_spawn_argv"] = [*client, json.dumps(request)]
    run = start_tree(start_run, tmp_path, config)

    def served() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", config["test_port"]), timeout=5) as c:
                return c.recv(100)
        except ConnectionRefusedError:
            return b""
    answer = helpers.wait_for(served, 15, what="an answer from a spawned program")
    assert answer.startswith(b"served by ")
    info = json.loads(Path(config["test_info"]).read_text())
    st = os.stat(info["path"])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, nobody.pw_gid, 0o660)
    directory = os.stat(os.path.dirname(info["path"]))
    assert (directory.st_gid, directory.st_mode & 0o777) == (nobody.pw_gid, 0o710)
    asker = subprocess.run(
        [*client, json.dumps({"kind": "udp", "host": "127.0.0.1", "port": 0})],
        env=helpers.marked_env({"PYSE_SOCKET_MANAGER_PATH": info["path"],
                                "PYSE_SOCKET_MANAGER_TOKEN": info["token"]}),
        user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], capture_output=True,
        text=True, timeout=20)
    reply = json.loads(asker.stdout.splitlines()[0])
    assert reply["ok"] is False and "only its owner's user may have it bind one" \
        in reply["error"], asker.stdout + asker.stderr
    assert run.stop() == 0


def test_udp_datagrams_reach_a_worker_across_every_kind_of_restart(start_run, tmp_path):
    """A datagram sent while no worker reads (its server was just
    SIGKILLed, or is being replaced) waits in the socket, which the
    supervisor holds, and some worker of the next server answers it."""
    config = tree_config(tmp_path, "process", supervisor=True, restart_backoff_base=0)
    config["test_udp_port"] = port = config["test_port"]
    run = start_tree(start_run, tmp_path, config)
    ask_tcp(port)   # a worker serves: the UDP socket exists
    assert ask_udp(port, b"first").endswith(b": first")
    for what in ("worker SIGKILL", "server SIGKILL", "USR1", "INT"):
        workers = run.wait_workers(2)
        if what == "worker SIGKILL":
            os.kill(workers[0], signal.SIGKILL)
            workers = workers[:1]
        elif what == "server SIGKILL":
            os.kill(run.servers()[0], signal.SIGKILL)
        else:
            os.kill(run.pid, signal.SIGUSR1 if what == "USR1" else signal.SIGINT)
        answer = ask_udp(port, what.encode())
        assert answer.endswith(b": " + what.encode()), answer
        helpers.wait_for(lambda: not set(workers) & set(run.workers()), 15,
                         what=f"the workers of before the {what} to be gone")
    assert run.stop() == 0


#: seconds within which a SIGKILLed worker (or server) must be replaced
#: while abusers hammer the broker (normally a few ms; a 2-core machine
#: running other suites and the flooder adds its share)
REPLACED_WITHIN = 2.0
#: seconds within which a well-behaved broker request must be answered
SERVED_WITHIN = 0.5


def broker_abusers(info: dict) -> tuple[list[socket.socket], subprocess.Popen]:
    """20 silent clients, one that sent half a request, one that never reads
    its reply, and a program flooding the broker with oversized garbage."""
    def connect() -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(10)
        conn.connect(info["path"])
        return conn
    abusers = [connect() for _ in range(20)]
    slow = connect()
    slow.sendall(b'{"token": "' + info["token"][:10].encode())
    deaf = connect()
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    deaf.sendall(json.dumps({"token": info["token"], "kind": "udp", "host": "127.0.0.1",
                             "port": 0}).encode() + b"\n")
    flooder = subprocess.Popen([sys.executable, str(PROGRAMS / "socket_broker_flooder.py")],
                               env=helpers.marked_env({"PYSE_SOCKET_MANAGER_PATH": info["path"]}),
                               stdout=subprocess.PIPE)
    assert flooder.stdout.readline() == b"flooding\n"
    return [*abusers, slow, deaf], flooder


def time_replacement(run: ProgramRun, kill_server: bool) -> float:
    """Seconds from a SIGKILL (of a worker, or of the server) to its
    replacement running."""
    before = run.wait_workers(2)
    victim = run.servers()[0] if kill_server else before[0]
    started = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    if kill_server:
        helpers.wait_for(lambda: victim not in run.servers() and len(run.servers()) == 1, 15,
                         what="a new server")
    else:
        helpers.wait_for(lambda: victim not in run.workers() and len(run.workers()) == 2, 15,
                         what="a new worker")
    return time.monotonic() - started


@pytest.mark.parametrize("supervisor", [False, True], ids=["server", "supervisor"])
def test_broker_abusers_cannot_stall_the_loop_that_serves_it(start_run, tmp_path, supervisor):
    """The broker runs in the supervising loop of its owner (the server, or
    the supervisor): clients that send nothing, garbage, or never read
    neither slow a well-behaved client nor keep the loop from replacing a
    SIGKILLed worker or server."""
    config = tree_config(tmp_path, "process", supervisor, restart_backoff_base=0,
                         socket_manager_timeout=1.0)
    run = start_tree(start_run, tmp_path, config)
    ask_tcp(config["test_port"])
    info = json.loads(Path(config["test_info"]).read_text())
    address = inet_address("tcp", "127.0.0.1", config["test_port"])
    abusers, flooder = broker_abusers(info)
    try:
        replaced = [time_replacement(run, kill_server=False) for _ in range(3)]
        if supervisor:
            replaced.append(time_replacement(run, kill_server=True))
        served = []
        for _ in range(20):
            started = time.monotonic()
            request_socket(info["path"], info["token"], address, None, timeout=5).close()
            served.append(time.monotonic() - started)
    finally:
        flooder.kill()
        flooder.wait()
    print(f"\nwith broker abusers: replaced in {[round(t * 1000) for t in replaced]} ms; "
          f"requests served in at most {max(served) * 1000:.1f} ms")
    assert max(replaced) < REPLACED_WITHIN and max(served) < SERVED_WITHIN
    # The loop's deadline drops those that never finished.
    for conn in abusers[:21]:
        assert conn.recv(10) == b"", "an idle client was not dropped"
        conn.close()
    assert run.stop() == 0
    assert "the loop goes on" not in Path(config["log"]).read_text()
