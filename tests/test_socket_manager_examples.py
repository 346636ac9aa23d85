"""The network examples as a user runs them: examples/http_server.py and
examples/udp_server.py (4 process workers under a supervisor, on the
socket manager) across a worker's SIGKILL, USR1, a server's SIGKILL and a
live restart (INT), and the seed's examples/tcp_server.py.  The load runs
against the HTTP example's code are in test_socket_manager_load.py."""
from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

import helpers
from socket_manager_harness import ProgramRun, free_port, http_get, wait_http_ready

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).parent.parent / "examples"
#: every way the tree may lose a process, in the order the tests go through them
EVENTS = ("worker SIGKILL", "USR1", "server SIGKILL", "INT")


@pytest.fixture
def start_example(tmp_path):
    def make(name: str, *args: object) -> ProgramRun:
        return ProgramRun(tmp_path, [sys.executable, EXAMPLES / name, *args], name=name,
                          supervised=name != "tcp_server.py")
    yield from helpers.started_runs(make)


def disturb(run: ProgramRun, event: str, workers: int) -> list[int]:
    """Causes event once run has one server with its workers; returns the
    pids the event ends (they are gone once it is over)."""
    workers = run.wait_workers(workers)
    if event == "worker SIGKILL":
        os.kill(workers[0], signal.SIGKILL)
        return workers[:1]
    if event == "server SIGKILL":
        os.kill(run.servers()[0], signal.SIGKILL)
    else:
        os.kill(run.pid, signal.SIGUSR1 if event == "USR1" else signal.SIGINT)
    return workers


def test_http_example_answers_across_every_kind_of_restart(start_example):
    port = free_port()
    run = start_example("http_server.py", port, 4)
    wait_http_ready(run, port, 4)
    for event in EVENTS:
        ended = disturb(run, event, 4)
        # Asked at once: the connection waits in the listener's queue if
        # nobody accepts just now.
        assert [http_get(port) for _ in range(5)] == ["ok"] * 5, event
        helpers.wait_for(lambda: not set(ended) & set(run.workers()), 15,
                         what=f"the processes the {event} ended to be gone")
    assert "Address already in use" not in run.log()
    assert run.stop() == 0


def udp_ask(sock: socket.socket, port: int, text: bytes) -> bytes:
    sock.sendto(text, ("127.0.0.1", port))
    return sock.recv(1000)


def test_udp_example_answers_across_every_kind_of_restart(start_example):
    port = free_port(socket.SOCK_DGRAM)
    run = start_example("udp_server.py", port, 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        run.wait_workers(2)
        helpers.wait_for(lambda: udp_ask(sock, port, b"hello").endswith(b": hello"), 15,
                         what="the UDP example answering")
        for event in EVENTS:
            ended = disturb(run, event, 2)
            answer = udp_ask(sock, port, event.encode())
            assert answer.endswith(b": " + event.encode()), answer
            helpers.wait_for(lambda: not set(ended) & set(run.workers()), 15,
                             what=f"the processes the {event} ended to be gone")
        # A datagram sent while every worker is dead waits in the socket.
        for pid in run.wait_workers(2):
            os.kill(pid, signal.SIGKILL)
        assert udp_ask(sock, port, b"last").endswith(b": last")
    assert run.stop() == 0


def test_the_seed_tcp_example_still_works(start_example):
    port = free_port()
    run = start_example("tcp_server.py", port)

    def answered() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                return c.recv(100)
        except ConnectionRefusedError:
            return b""

    assert helpers.wait_for(answered, 15, what="tcp_server.py answering") == b"Awesome work!"
    assert run.stop() == 0
