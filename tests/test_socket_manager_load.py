"""No refused connection: examples/http_server.py's workers (through
tests/programs/socket_http.py) answer 8 client threads x 250 GETs, each on
a new connection, while workers are SIGKILLed every 50 ms or restarted
gracefully (USR1), with process and spawn workers, and while a supervised
server is SIGKILLed or live-restarted (INT) again and again.

What every run asserts: no connection refused; every request answered,
except the ones a SIGKILLed worker was answering (at most one per client
per kill); none lost across graceful events.  With ``-m stress`` each
runs again with ten times the requests."""
from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections import Counter

import pytest

import helpers
from socket_manager_harness import (CLIENTS, PROGRAMS, REQUESTS_PER_CLIENT, ProgramRun,
                                    free_port, holds_socket, listening_inodes, load_while,
                                    wait_http_ready, write_config)

pytestmark = pytest.mark.timeout(180)

WORKERS = 4


@pytest.fixture(params=[REQUESTS_PER_CLIENT,
                        pytest.param(10 * REQUESTS_PER_CLIENT, marks=pytest.mark.stress)],
                ids=["250", "2500"])
def requests(request) -> int:
    """GETs per client thread."""
    return request.param


@pytest.fixture
def start_http(tmp_path):
    def start(worker_type: str = "process", supervisor: bool = False, **extra) -> tuple:
        port = free_port()
        path = write_config(tmp_path, {
            "worker_type": worker_type, "workers": WORKERS, "supervisor": supervisor,
            "socket_manager": True, "bind": "127.0.0.1", "port": port, "log_level": "info",
            "log": str(tmp_path / "pyse.log"), "restart_backoff_base": 0,
            "server_restart_wait": 0, **extra})
        run = ProgramRun(tmp_path, [sys.executable, PROGRAMS / "socket_http.py", path],
                         supervised=supervisor)
        runs.append(run)
        wait_http_ready(run, port, WORKERS)
        return run, port

    runs: list[ProgramRun] = []
    yield start
    for run in runs:
        run.close()


#: each test crosses at least this many events (a spawned program takes a
#: few hundred ms to start, so its tests cross fewer than process workers')
MIN_EVENTS = 2


def report_events(what: str, outcomes: Counter, events: int, started: float) -> None:
    """Prints what the load met; a load that crossed too few events proves
    nothing, and fails."""
    print(f"\n{CLIENTS}x{sum(outcomes.values()) // CLIENTS} GETs in "
          f"{time.monotonic() - started:.2f} s across {events} {what}: {dict(outcomes)}")
    assert events >= MIN_EVENTS


def assert_all_answered(outcomes: Counter, requests: int) -> None:
    assert outcomes == Counter({"ok": CLIENTS * requests})


def serving_workers(run: ProgramRun, inode: int) -> list[int]:
    """The workers that hold the listener (inode): they serve (a spawned
    program needs a while to start and ask the broker for it)."""
    return [pid for pid in run.workers() if holds_socket(pid, inode)]


def listener_of(port: int) -> int:
    """The inode of the listener on port (read once: /proc/net/tcp grows
    with every connection the load leaves in TIME_WAIT)."""
    (inode,) = listening_inodes("tcp", port)
    return inode


@pytest.mark.parametrize("worker_type", ["process", "spawn"])
def test_no_refused_connection_while_workers_are_sigkilled(start_http, requests, worker_type):
    run, port = start_http(worker_type)
    listener = listener_of(port)

    def kill_a_worker() -> bool:
        # One that serves, while another one does: a spawned program takes
        # a few hundred ms to start, and four of them killed within 200 ms
        # would leave the load waiting for the next to start.
        serving = serving_workers(run, listener)
        if len(serving) < 2:
            return False
        try:
            os.kill(random.choice(serving), signal.SIGKILL)
        except ProcessLookupError:
            return False   # it died already
        return True

    started = time.monotonic()
    outcomes, kills = load_while(port, 0.05, kill_a_worker, requests=requests)
    report_events(f"SIGKILLs of serving {worker_type} workers (one every 50 ms while another serves)", outcomes, kills,
           started)
    assert outcomes["refused"] == 0
    assert sum(outcomes.values()) == CLIENTS * requests
    # A killed worker cuts the requests it was answering: at most one per client.
    assert outcomes["cut"] <= kills * CLIENTS
    wait_http_ready(run, port, WORKERS)
    assert run.stop() == 0


@pytest.mark.parametrize("worker_type", ["process", "spawn"])
def test_nothing_lost_across_graceful_worker_restarts(start_http, requests, worker_type):
    run, port = start_http(worker_type)
    listener = listener_of(port)

    def restart_the_workers() -> bool:
        # Once the previous restart is over: all of them serve.
        if len(serving_workers(run, listener)) < WORKERS:
            return False
        os.kill(run.pid, signal.SIGUSR1)
        return True

    started = time.monotonic()
    outcomes, restarts = load_while(port, 0.1, restart_the_workers, requests=requests)
    report_events(f"graceful restarts of {worker_type} workers (USR1 every 100 ms once all serve)",
           outcomes, restarts, started)
    assert_all_answered(outcomes, requests)
    assert run.stop() == 0


def server_up(run: ProgramRun) -> int:
    """The server's pid once it is alone and its workers all run, else 0."""
    servers = run.servers()
    return servers[0] if len(servers) == 1 and len(run.workers()) == WORKERS else 0


def test_no_refused_connection_across_server_sigkills(start_http, requests):
    """The supervisor holds the listener: while a SIGKILLed server is
    replaced, connections wait in its queue.  The dead server's workers see
    it die and finish what they were answering."""
    run, port = start_http("process", supervisor=True)
    killed: set[int] = set()

    def kill_the_server() -> bool:
        server = server_up(run)
        if not server or server in killed:
            return False
        os.kill(server, signal.SIGKILL)
        killed.add(server)
        return True

    started = time.monotonic()
    outcomes, kills = load_while(port, 0.05, kill_the_server, requests=requests)
    report_events("server SIGKILLs (once the last one's successor is up)", outcomes, kills, started)
    assert_all_answered(outcomes, requests)
    wait_http_ready(run, port, WORKERS)
    assert run.stop() == 0


def test_nothing_lost_across_live_restarts(start_http, requests):
    """INT: the old server stops gracefully while the new one starts (at
    once here: server_detach_wait 0, so old and new overlap); both take
    connections from the one listener the supervisor holds."""
    run, port = start_http("process", supervisor=True, server_detach_wait=0)
    detached: set[int] = set()

    def live_restart() -> bool:
        server = server_up(run)
        if not server or server in detached:
            return False
        os.kill(run.pid, signal.SIGINT)
        detached.add(server)
        return True

    started = time.monotonic()
    outcomes, restarts = load_while(port, 0.05, live_restart, requests=requests)
    report_events("live restarts (INT, once the last one's successor is up)", outcomes, restarts,
           started)
    assert_all_answered(outcomes, requests)
    helpers.wait_for(lambda: server_up(run), 15, what="one server after the live restarts")
    assert run.stop() == 0
