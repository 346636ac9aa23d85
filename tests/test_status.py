"""``pyse status`` against real trees: what the control socket answers for
each worker type, with and without a supervisor, fresh heartbeat ages, last
exits, a supervised server that does not answer, clients that stall, and
what it falls back to without a control socket."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

import helpers
from ops_harness import APP, start_pyse
from pyse import control_socket, status
from test_cli import pyse_command, write

pytestmark = pytest.mark.timeout(120)


WORKER_KEYS = {"id", "pid", "thread", "state", "uptime", "restarts", "failures",
               "heartbeat_age", "last_exit"}
SERVER_KEYS = {"pid", "state", "uptime", "worker_type", "workers", "restarts",
               "heartbeat_age", "last_exit"}


class Tree:
    """A foreground ``pyse run`` with a pid file, and what pyse status says."""

    def __init__(self, directory: Path, proc: subprocess.Popen) -> None:
        self.directory = directory
        self.proc = proc

    def status(self, *args: str) -> subprocess.CompletedProcess:
        return pyse_command("status", "-p", "app.pid", *args, cwd=self.directory)

    def report(self) -> dict:
        result = self.status("--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def wait_report(self, predicate: Callable[[dict], bool], what: str,
                    timeout: float = 20) -> dict:
        return helpers.wait_for(lambda: (lambda r: r if predicate(r) else None)(self.report()),
                                timeout, interval=0.1, what=what)

    def log(self) -> Path:
        return self.directory / "out.log"

    def stop(self) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def run_tree(tmp_path: Path) -> Iterator[Callable[..., Tree]]:
    write(tmp_path, "app.py", APP)
    procs = []

    def start(*args: str, worker: str = "app:W", env: Optional[dict] = None) -> Tree:
        proc = start_pyse(tmp_path, "run", worker, "-p", "app.pid", *args, env=env)
        procs.append(proc)
        tree = Tree(tmp_path, proc)
        helpers.wait_for(lambda: (tmp_path / "app.pid.sock").exists() or proc.poll() is not None,
                         20, what="the control socket")
        return tree

    yield start
    for proc in procs:
        helpers.kill_group(proc.pid)
        proc.wait(10)


def all_running(count: int) -> Callable[[dict], bool]:
    return lambda r: (r.get("counts") or {}).get("running") == count and \
        (r.get("counts") or {}).get("starting") == 0


# -- the report of each kind of tree ---------------------------------------------------------

@pytest.mark.parametrize("worker_type", ["process", "thread", "embedded"])
def test_the_report_of_a_server_shows_each_worker(run_tree, worker_type):
    workers = 1 if worker_type == "embedded" else 2
    tree = run_tree("-k", worker_type, "-w", str(workers))
    report = tree.wait_report(all_running(workers), f"{workers} workers running")
    assert report["daemon"] == "running" and report["pid"] == tree.proc.pid
    assert report["version"] == status.REPORT_VERSION and report["supervisor"] is None
    server = report["server"]
    assert set(server) == SERVER_KEYS
    assert server["pid"] == tree.proc.pid and server["state"] == "running"
    assert server["worker_type"] == worker_type and server["workers"] == workers
    assert [w["id"] for w in report["workers"]] == list(range(workers))
    for worker in report["workers"]:
        assert set(worker) == WORKER_KEYS
        assert worker["state"] == "running" and worker["restarts"] == 0
        assert worker["last_exit"] is None and worker["uptime"] >= 0
        if worker_type == "process":
            assert worker["pid"] in helpers.children_of(tree.proc.pid)
            assert worker["heartbeat_age"] is not None and worker["thread"] is None
        else:
            assert worker["pid"] == tree.proc.pid and worker["heartbeat_age"] is None
            assert worker["thread"] == ("MainThread" if worker_type == "embedded"
                                        else f"pyse-worker-{worker['id']}")
    assert report["counts"] == {"wanted": workers, "running": workers, "starting": 0,
                                "stopping": 0, "waiting": 0, "failed": 0}
    assert tree.stop() == 0
    assert not (tree.directory / "app.pid.sock").exists()


def test_spawned_commands_are_workers_with_their_own_pids(run_tree):
    tree = run_tree("-k", "spawn", "-w", "2", worker="app:Spawner")
    report = tree.wait_report(all_running(2), "two commands")
    assert [helpers.cmdline(w["pid"]) for w in report["workers"]] == ["sleep 60", "sleep 60"]
    assert tree.stop() == 0


def test_heartbeat_ages_are_fresh_although_the_loop_reads_beats_lazily(run_tree):
    """The loop reads a worker's stamps only at its heartbeat deadline (180 s
    away here); status reads them now."""
    tree = run_tree("-k", "process", "-w", "2", "--set", "worker_heartbeat_interval=0.2")
    report = tree.wait_report(lambda r: all_running(2)(r) and
                              all(w["uptime"] > 1.5 for w in r["workers"]), "1.5 s of uptime")
    ages = [w["heartbeat_age"] for w in report["workers"]]
    assert all(age < 0.6 for age in ages), ages
    assert tree.stop() == 0


def test_a_killed_worker_shows_its_restart_and_last_exit(run_tree):
    tree = run_tree("-k", "process", "-w", "2")
    report = tree.wait_report(all_running(2), "two workers")
    victim = report["workers"][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    report = tree.wait_report(lambda r: all_running(2)(r) and r["workers"][1]["pid"] != victim,
                              "worker 1 replaced")
    worker = report["workers"][1]
    assert worker["restarts"] == 1 and worker["failures"] == 1
    assert worker["last_exit"]["signal"] == "SIGKILL" and worker["last_exit"]["status"] is None
    assert worker["last_exit"]["description"] == "signal SIGKILL"
    assert 0 <= worker["last_exit"]["ago"] < 20
    assert report["workers"][0]["restarts"] == 0
    table = tree.status()
    assert table.returncode == 0
    row = [line for line in table.stdout.splitlines() if line.startswith("worker  1")][0]
    assert "signal SIGKILL, " in row and row.split()[2] == str(worker["pid"])
    assert tree.stop() == 0


def test_an_exit_status_is_shown_with_its_code(run_tree, tmp_path):
    tree = run_tree("-k", "thread", "-w", "1", worker="app:Crashing",
                    env={"CRASH_MARKER": str(tmp_path / "crashed")})
    report = tree.wait_report(lambda r: all_running(1)(r) and r["workers"][0]["restarts"] == 1,
                              "the crashed worker restarted")
    assert report["workers"][0]["last_exit"]["status"] == 3
    assert report["workers"][0]["last_exit"]["signal"] is None
    assert tree.stop() == 0


# -- under a supervisor ---------------------------------------------------------------------

@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_the_supervisor_adds_what_it_knows_of_its_server(run_tree, worker_type):
    tree = run_tree("-k", worker_type, "-w", "2", "--set", "supervisor=true")
    report = tree.wait_report(all_running(2), "two workers")
    supervisor, server = report["supervisor"], report["server"]
    assert supervisor["pid"] == tree.proc.pid and supervisor["state"] == "running"
    assert set(server) == SERVER_KEYS and server["worker_type"] == worker_type
    assert server["pid"] in helpers.children_of(tree.proc.pid)
    assert server["restarts"] == 0 and server["heartbeat_age"] is not None
    os.kill(server["pid"], signal.SIGKILL)
    report = tree.wait_report(lambda r: all_running(2)(r) and r["server"]["pid"] != server["pid"],
                              "a new server with two workers")
    assert report["server"]["restarts"] == 1
    assert report["server"]["last_exit"]["signal"] == "SIGKILL"
    assert report["supervisor"]["server_starts"] == 2
    lines = tree.status().stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["supervisor", "server", "worker"]
    assert tree.stop() == 0


def test_a_server_that_does_not_answer_leaves_the_supervisor_answering(run_tree, tmp_path):
    fifo = tmp_path / "reload.fifo"
    os.mkfifo(fifo)
    tree = run_tree("-k", "process", "-w", "1", "--set", "supervisor=true", "--server",
                    "app:WedgedReload", env={"RELOAD_FIFO": str(fifo)})
    tree.wait_report(all_running(1), "a worker")
    os.kill(tree.proc.pid, signal.SIGUSR2)
    helpers.wait_for_line(tree.log(), r"reload\(\) waits for the FIFO", 10)
    report = tree.report()
    assert report["supervisor"]["state"] == "running" and report["server"] is not None
    assert report["workers"] == []
    assert "did not answer within 2 s" in report["note"]
    assert "did not answer within 2 s" in status.format_table(report).splitlines()[-1]
    with open(fifo, "wb") as unblock:
        unblock.write(b"x")
    tree.wait_report(all_running(1), "the server answers again")
    assert tree.stop() == 0


# -- clients that stall, and no control socket ------------------------------------------------

def test_clients_that_never_send_or_never_read_do_not_stall_the_server(run_tree):
    tree = run_tree("-k", "process", "-w", "2")
    report = tree.wait_report(all_running(2), "two workers")
    path = str(tree.directory / "app.pid.sock")
    silent = []
    for _ in range(control_socket.MAX_CLIENTS + 4):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        silent.append(sock)
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    deaf.connect(path)
    deaf.sendall(b"status\n")
    try:
        # The loop goes on: a killed worker is replaced, status answers.
        os.kill(report["workers"][0]["pid"], signal.SIGKILL)
        helpers.wait_for_line(tree.log(), r"Worker 0 started", 10, skip=1)
        assert all_running(2)(tree.wait_report(all_running(2), "a new worker 0"))
        assert tree.stop() == 0
    finally:
        for sock in [*silent, deaf]:
            sock.close()


def test_without_its_control_socket_status_shows_the_process_tree(tmp_path, run_tree):
    (tmp_path / "app.pid.sock").write_text("in the way")
    tree = run_tree("-k", "process", "-w", "2")
    helpers.wait_for_line(tree.log(), r"No control socket .* not a socket is in the way", 10)
    helpers.wait_for(lambda: len(helpers.children_of(tree.proc.pid)) == 2, 10, what="workers")
    result = tree.status()
    assert result.returncode == 0
    assert "but control socket" in result.stderr and "not a socket" not in result.stdout
    first, *rest = result.stdout.splitlines()
    assert first.startswith(f"{tree.proc.pid} ") and len(rest) == 2
    as_json = json.loads(tree.status("--json").stdout)
    assert as_json["daemon"] == "running" and len(as_json["processes"]) == 3
    assert tree.stop() == 0
    assert (tmp_path / "app.pid.sock").read_text() == "in the way"


def test_status_of_no_daemon_in_json(tmp_path):
    result = pyse_command("status", "-p", "none.pid", "--json", cwd=tmp_path)
    assert result.returncode == 3
    answer = json.loads(result.stdout)
    assert answer["daemon"] == "not running" and "does not exist" in answer["reason"]


def test_without_a_pid_file_there_is_no_control_socket(tmp_path):
    write(tmp_path, "app.py", APP)
    proc = start_pyse(tmp_path, "run", "app:W", "-k", "thread")
    try:
        helpers.wait_for_line(tmp_path / "out.log", r"Worker 0 started", 15)
        assert not [name for name in os.listdir(tmp_path) if "sock" in name]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0


# -- the table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(None, "-"), (0.42, "0.4s"), (12.9, "12s"),
                                           (185, "3m05s"), (7380, "2h03m"), (273600, "3d04h")])
def test_durations(seconds, text):
    assert status.duration(seconds) == text


def test_the_table_of_a_report():
    report = {"supervisor": {"pid": 10, "state": "running", "uptime": 3700},
              "server": {"pid": 11, "state": "running", "uptime": 65, "restarts": 1,
                         "heartbeat_age": 0.31,
                         "last_exit": {"description": "signal SIGKILL", "ago": 66}},
              "workers": [{"id": 0, "pid": 11, "thread": "pyse-worker-0", "state": "running",
                           "uptime": 64, "restarts": 0, "heartbeat_age": None,
                           "last_exit": None}],
              "counts": {"wanted": 1, "running": 1, "starting": 0, "stopping": 0,
                         "waiting": 0, "failed": 0}}
    assert status.format_table(report).splitlines() == [
        "ROLE        ID  PID               STATE    UPTIME  RESTARTS  HEARTBEAT  LAST EXIT",
        "supervisor  -   10                running  1h01m   -         -          -",
        "server      -   11                running  1m05s   1         0.3s ago   signal SIGKILL, "
        "1m06s ago",
        "worker      0   11/pyse-worker-0  running  1m04s   0         -          -",
        "1 worker running, 0 starting",
    ]
