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
      holding the lock;
  test_python_logging: the server (before_run) and each worker log through
      Python loggers of their own ("myapp.server", "myapp.worker") and a
      library's ("urllib3"), at several levels, one with a traceback; the
      config callable logs "config loaded" to "myapp.config" (so at a
      reload, in the supervisor too); each worker then records "done";
  test_log_forever: each worker logs "steady w<id> n<i>" every millisecond
      until it is stopped, recording "done" after its first line;
  test_user_dictconfig: each worker calls logging.config.dictConfig itself
      (a console handler to stderr, disable_existing_loggers left true),
      then logs through self.logger and "myapp.worker", then records "done";
  test_basic_config: logging.basicConfig() (to stderr, "USER" format)
      before pyse.create(), as a program that configures logging itself.
With worker_type "spawn", each worker spawns this file with --child: it
prints to fd 1 and 2, logs through its own logging.basicConfig() to
stderr, records "done" and waits for TERM.
stop() print()s "last words of worker <id>" without a newline or a flush.
The server print()s and os.write()s to fd 1 in before_run, and os.write()s
"server raw at reload" at every reload.
$PYSE_TEST_FSIZE: a file size limit (RLIMIT_FSIZE, bytes) for the whole
tree, so that writes past it fail with EFBIG as on a full disk (Python
ignores SIGXFSZ).
"""
import fcntl
import json
import logging
import logging.config
import os
import resource
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


def log_through_python(who, wid):
    """What a user's module and a library do; the test looks for each line."""
    app = logging.getLogger(f"myapp.{who}")
    app.debug("app debug from %s %d", who, wid)
    app.info("app info from %s %d", who, wid)
    app.warning("app warning from %s %d", who, wid)
    logging.getLogger("urllib3").error("library error from %s %d", who, wid)
    try:
        raise ValueError(f"boom in {who} {wid}")
    except ValueError:
        app.exception("app exception from %s %d", who, wid)


class WriterServer:
    def before_run(self):
        print("server print in before_run")
        os.write(1, b"server raw in before_run\n")
        if self.config.get("test_python_logging"):
            log_through_python("server", -1)
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
        if self.config.get("test_python_logging"):
            log_through_python("worker", wid)
            record("done", wid)
        if self.config.get("test_user_dictconfig"):
            logging.config.dictConfig({"version": 1, "handlers": {"console": {
                "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "root": {"handlers": ["console"], "level": "INFO"}})
            self.logger.info("pyse logger after dictConfig in worker %d", wid)
            logging.getLogger("myapp.worker").warning("app after dictConfig in worker %d", wid)
            record("done", wid)
        if self.config.get("test_log_forever"):
            self.log_forever(wid)
        flood = self.config.get("test_flood_bytes")
        if flood:
            line = "f" * 99
            for _ in range(flood // 100):
                print(line)
            sys.stdout.flush()
            record("done", wid)
        while not self.flag.wait_for_set(0.5):
            pass

    def log_forever(self, wid):
        steady = logging.getLogger("myapp.steady")
        i = 0
        while not self.flag.is_set():
            steady.info("steady w%d n%d", wid, i)
            if i == 0:
                record("done", wid)
            i += 1
            self.flag.wait_for_set(0.001)

    def spawn(self, process_manager):
        record("spawn", self.worker_id)
        process_manager.spawn({}, sys.executable, os.path.abspath(__file__), "--child",
                              str(self.worker_id))

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
        config = json.load(f)
    if config.get("test_python_logging"):
        logging.getLogger("myapp.config").info("config loaded in %d", os.getpid())
    return config


def child_main(wid):
    """The spawned command (worker_type "spawn")."""
    print(f"spawned stdout of worker {wid}", flush=True)
    os.write(2, f"spawned stderr of worker {wid}\n".encode())
    logging.basicConfig(format="CHILD %(levelname)s %(name)s: %(message)s")
    logging.getLogger("child.app").warning("spawned logging of worker %d", wid)
    record("done", wid)
    signal.pause()   # until TERM (its default action) ends it


def main():
    limit = os.environ.get("PYSE_TEST_FSIZE")
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))
    config = load_config()
    if config.get("test_basic_config"):
        logging.basicConfig(level=logging.INFO, format="USER %(name)s: %(message)s")
    pyse.create(WriterServer, WriterWorker, load_config).run()


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child_main(int(sys.argv[2]))
    else:
        main()
