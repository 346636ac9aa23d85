"""A process server written as a user would, that records what its workers
see into the file named by $PYSE_TEST_EVENTS, one line per event:

    <event> <worker id> <pid> <CLOCK_MONOTONIC seconds>

Usage: python recorder.py CONFIG.json  (re-read at every reload/restart).
Test-only config keys: test_mode ("normal", or "stubborn": stop() is
recorded but ignored and QUIT is recorded and survived, so the kill
escalation runs to its end; or "gil_hog": worker 0 holds the GIL
forever), test_exit_code (worker 0 exits with it at
once), test_server ("tcp": bind 127.0.0.1:test_port
in before_run; workers accept and answer), test_reload_spawns (reload()
starts `sleep 30` and records "spawned:<its pid>"), test_initialize_failures
(after the first worker object, the next N raise in initialize()),
test_run_raises (every run() raises at once).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pyse

EVENTS = os.environ["PYSE_TEST_EVENTS"]


def record(event, worker_id):
    line = f"{event} {worker_id} {os.getpid()} {time.monotonic():.6f}\n".encode()
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class RecordingServer:
    def before_run(self):
        record("before_run", -1)
        if self.config.get("test_server") == "tcp":
            self.sock = socket.create_server(("127.0.0.1", self.config["test_port"]), backlog=1024)

    def after_run(self):
        record("after_run", -1)


class RecordingWorker:
    created = 0

    def initialize(self):
        # In the server process, before each fork: a class counter counts
        # the worker objects built there.
        RecordingWorker.created += 1
        failures = self.config.get("test_initialize_failures", 0)
        if 1 < RecordingWorker.created <= 1 + failures:
            record("initialize_failed", self.worker_id)
            raise RuntimeError(f"initialize failure {RecordingWorker.created - 1} of {failures}")
        self.flag = pyse.BlockingFlag()

    def run(self):
        mode = self.config.get("test_mode", "normal")
        if mode == "stubborn":
            signal.signal(signal.SIGQUIT, lambda signo, frame: record("quit", self.worker_id))
        record("run", self.worker_id)
        if self.config.get("test_run_raises"):
            raise RuntimeError("run() fails at once")
        code = self.config.get("test_exit_code")
        if code is not None and self.worker_id == 0:
            sys.exit(code)
        if mode == "gil_hog" and self.worker_id == 0:
            sum(range(10**13))  # one C call: holds the GIL for hours
        if self.config.get("test_server") == "tcp":
            self.serve(self.server.sock)
        else:
            while not self.flag.wait_for_set(0.5) or mode == "stubborn":
                pass
        record("return", self.worker_id)

    def serve(self, sock):
        sock.settimeout(0.1)
        while not self.flag.is_set():
            try:
                conn, _ = sock.accept()
            except (socket.timeout, BlockingIOError):
                continue
            with conn:
                conn.sendall(b"Awesome work!")

    def stop(self):
        record("stop", self.worker_id)
        if self.config.get("test_mode", "normal") != "stubborn":
            self.flag.set()

    def reload(self):
        record("reload", self.worker_id)
        if self.config.get("test_reload_spawns"):
            self.child = subprocess.Popen(["sleep", "30"])
            record(f"spawned:{self.child.pid}", self.worker_id)


def load_config():
    with open(sys.argv[1]) as f:
        return json.load(f)


if __name__ == "__main__":
    pyse.create(RecordingServer, RecordingWorker, load_config).run()
