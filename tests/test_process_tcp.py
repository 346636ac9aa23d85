"""The seed README's prefork TCP server: the listening socket lives in the
server, so clients are never refused while workers die and restart."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from recorder_harness import RecorderRun

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_connection_refused_while_workers_are_killed(tmp_path):
    port = free_port()
    run = RecorderRun(tmp_path, {"workers": 4, "test_server": "tcp", "test_port": port,
                                 "restart_backoff_base": 0,
                                 "log_level": "info"})
    try:
        run.wait_workers(4)
        stop = threading.Event()
        counts = {"ok": 0, "refused": 0, "reset": 0}
        lock = threading.Lock()

        def client():
            # Bounded: at most 2000 requests per client, all to 127.0.0.1.
            for _ in range(2000):
                if stop.is_set():
                    return
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                        data = c.recv(64)
                    outcome = "ok" if data == b"Awesome work!" else "reset"
                except ConnectionRefusedError:
                    outcome = "refused"
                except (ConnectionResetError, socket.timeout):
                    outcome = "reset"  # accepted by a worker that was then killed
                with lock:
                    counts[outcome] += 1

        clients = [threading.Thread(target=client) for _ in range(8)]
        for t in clients:
            t.start()
        kills = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            pids = run.worker_pids()
            if pids:
                try:
                    os.kill(pids[kills % len(pids)], signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        stop.set()
        for t in clients:
            t.join(30)
        print(f"{kills} workers killed; clients: {counts}")
        assert kills >= 50
        assert counts["refused"] == 0
        assert counts["ok"] > 100
        run.wait_workers(4)
        run.signal(signal.SIGTERM)
        assert run.wait_exit(10) == 0
    finally:
        run.close()
