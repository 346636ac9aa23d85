"""A process server whose workers write to the log in the ways the logging
tests need; it records events into $PYSE_TEST_EVENTS, one line each:

    <event> <worker id> <pid>

Usage: python log_writer.py CONFIG.json (re-read at every reload).
Test-only config keys:
  test_lines: each worker logs this many lines "line w<id> n<i>", then
      records "done";
  test_output: each worker print()s, os.write()s to fd 1 and 2 and runs a
      child program that writes to both, then records "done";
  test_flood_bytes: each worker prints this many bytes in 100-byte lines,
      then records "done";
  test_stuck_lock_holder: the first worker 0 takes the log's lock, records
      "holding" and stops itself (SIGSTOP), as a process stuck while
      holding the lock.
stop() print()s "last words of worker <id>" without a newline or a flush.
The server print()s and os.write()s to fd 1 in before_run, and os.write()s
"server raw at reload" at every reload.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys

import pyse

EVENTS = os.environ["PYSE_TEST_EVENTS"]


def record(event, worker_id):
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {worker_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def held_before():
    with open(EVENTS) as f:
        return any(line.startswith("holding ") for line in f)


class WriterServer:
    def before_run(self):
        print("server print in before_run")
        os.write(1, b"server raw in before_run\n")
        record("before_run", -1)

    def reload_config(self):
        super().reload_config()
        os.write(1, b"server raw at reload\n")
        record("server_reload", -1)


class WriterWorker:
    def initialize(self):
        self.flag = pyse.BlockingFlag()

    def run(self):
        wid = self.worker_id
        record("run", wid)
        if self.config.get("test_stuck_lock_holder") and wid == 0 and not held_before():
            fd = os.open(self.config["log"] + ".lock", os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            record("holding", wid)
            os.kill(os.getpid(), signal.SIGSTOP)
        lines = self.config.get("test_lines")
        if lines:
            for i in range(lines):
                self.logger.info("line w%d n%d", wid, i)
            record("done", wid)
        if self.config.get("test_output"):
            print(f"print from worker {wid}")
            os.write(1, f"fd1 from worker {wid}\n".encode())
            os.write(2, f"fd2 from worker {wid}\n".encode())
            subprocess.run([sys.executable, "-c",
                            f"import os; print('child stdout of worker {wid}', flush=True); "
                            f"os.write(2, b'child stderr of worker {wid}\\n')"], check=True)
            record("done", wid)
        flood = self.config.get("test_flood_bytes")
        if flood:
            line = "f" * 99
            for _ in range(flood // 100):
                print(line)
            sys.stdout.flush()
            record("done", wid)
        while not self.flag.wait_for_set(0.5):
            pass

    def stop(self):
        # No newline, no flush: the capture must still log it as the worker exits.
        print(f"last words of worker {self.worker_id}", end="")
        self.flag.set()

    def reload(self):
        self.logger.info("worker %d reloaded", self.worker_id)
        print(f"print at reload of worker {self.worker_id}")
        record("reload", self.worker_id)


def load_config():
    with open(sys.argv[1]) as f:
        return json.load(f)


if __name__ == "__main__":
    pyse.create(WriterServer, WriterWorker, load_config).run()
