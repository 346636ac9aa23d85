"""The network examples under load: examples/http_server.py with 4 process
workers answering 8 client threads while workers are SIGKILLed or
restarted gracefully, examples/udp_server.py across restarts, and the
seed's examples/tcp_server.py."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import helpers

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).parent.parent / "examples"
PROGRAMS = Path(__file__).parent / "programs"
CLIENTS = 8
REQUESTS_PER_CLIENT = 250


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExampleRun:
    """One example program running in its own process group."""

    def __init__(self, tmp_path: Path, name: str, *args: object) -> None:
        self.log_path = tmp_path / f"{name}.log"
        # The crash-loop backoff off: these tests kill workers again and
        # again to measure the listeners, not the backoff.
        wrapper = [str(PROGRAMS / "run_example.py"), str(EXAMPLES / name),
                   json.dumps({"restart_backoff_base": 0})]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, *wrapper, *map(str, args)],
                                         env=helpers.marked_env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self.pid = self.proc.pid

    def worker_pids(self) -> list[int]:
        return [p for p in helpers.children_of(self.pid) if helpers.is_running(p)]

    def stop(self) -> int:
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.log_path.name}: no exit within 20 s after TERM; log:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:]) from None

    def close(self) -> None:
        helpers.kill_group(self.pid)
        self.proc.wait(10)


@pytest.fixture
def start_example(tmp_path):
    yield from helpers.started_runs(lambda name, *args: ExampleRun(tmp_path, name, *args))


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


def wait_http_ready(run: ExampleRun, port: int, workers: int) -> None:
    helpers.wait_for(lambda: len(run.worker_pids()) == workers and http_get(port) == "ok",
                     15, what=f"{workers} workers answering on port {port}")


def load_while(port: int, interval: float, disturb) -> tuple[Counter, int]:
    """8 client threads x 250 GETs, calling disturb() every interval seconds
    until they are done; returns the outcomes and how many calls of
    disturb() returned True."""
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(REQUESTS_PER_CLIENT):
            outcome = http_get(port)
            with lock:
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    events = 0
    deadline = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        events += bool(disturb())
        time.sleep(interval)  # the cadence of the disturbance, not a wait for an event
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "the clients did not finish within 60 s"
    return outcomes, events


def start_http_example(start_example) -> tuple[ExampleRun, int]:
    port = free_port()
    run = start_example("http_server.py", port, 4)
    wait_http_ready(run, port, 4)
    return run, port


def test_http_example_refuses_nobody_while_workers_are_sigkilled(start_example):
    run, port = start_http_example(start_example)

    def kill_a_worker() -> bool:
        pids = run.worker_pids()
        try:
            os.kill(random.choice(pids), signal.SIGKILL)
        except (IndexError, ProcessLookupError):
            return False   # none alive just now, or it died already
        return True

    started = time.monotonic()
    outcomes, kills = load_while(port, 0.05, kill_a_worker)
    elapsed = time.monotonic() - started
    print(f"\nHTTP, {CLIENTS}x{REQUESTS_PER_CLIENT} GETs in {elapsed:.2f} s while {kills} "
          f"workers were SIGKILLed (one every 50 ms): {dict(outcomes)}")
    assert outcomes["refused"] == 0
    assert sum(outcomes.values()) == CLIENTS * REQUESTS_PER_CLIENT
    # A killed worker cuts the requests it was answering: at most one per client.
    assert outcomes["cut"] <= kills * CLIENTS
    assert kills >= 3 and outcomes["ok"] >= CLIENTS * REQUESTS_PER_CLIENT // 2
    wait_http_ready(run, port, 4)
    assert run.stop() == 0


def test_http_example_loses_nothing_across_graceful_restarts(start_example):
    run, port = start_http_example(start_example)
    outcomes, restarts = load_while(port, 0.1, lambda: os.kill(run.pid, signal.SIGUSR1) or True)
    print(f"\nHTTP, {CLIENTS}x{REQUESTS_PER_CLIENT} GETs across {restarts} graceful restarts "
          f"(USR1, one every 100 ms): {dict(outcomes)}")
    assert restarts >= 3
    assert outcomes == Counter({"ok": CLIENTS * REQUESTS_PER_CLIENT})
    assert run.stop() == 0


def udp_ask(sock: socket.socket, port: int, text: bytes) -> bytes:
    sock.sendto(text, ("127.0.0.1", port))
    return sock.recv(1000)


def test_udp_example_answers_across_worker_deaths(start_example):
    port = free_port(socket.SOCK_DGRAM)
    run = start_example("udp_server.py", port, 2)
    helpers.wait_for(lambda: len(run.worker_pids()) == 2, 15, what="2 UDP workers")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        answerers = set()
        for round_ in range(5):
            answer = udp_ask(sock, port, b"round %d" % round_)
            assert answer.endswith(b": round %d" % round_), answer
            answerers.add(answer.split(b"(pid ")[1].split(b")")[0])
            # Every worker dies; a datagram sent before any replacement runs
            # waits in the socket, which the server holds.
            for pid in run.worker_pids():
                os.kill(pid, signal.SIGKILL)
        assert len(answerers) >= 5, "each round should be answered by a new worker"
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
