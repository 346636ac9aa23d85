"""A process server for daemon and supervisor tests.  Records what happens
into $PYSE_TEST_EVENTS, one line per event:

    <event> <worker id or -1> <pid> <CLOCK_MONOTONIC seconds> [detail]

Server events: initialize, before_run, after_start (recorded by the process
that runs the hook, so after_start carries the supervisor's pid and the
server's pid as detail), after_run.  Worker events: run, stop, reload,
return, ids (detail: "uid gid umask setuid0=<ok|refused>").

Usage: python supervised.py CONFIG.json  (re-read at every reload/restart).
Test-only config keys: test_stop_delay (seconds a worker's run() keeps
going after stop()), test_before_run ("raise": before_run raises; a number:
sleeps that long first), test_control ("stop", "reload", ...: instead of
running a daemon, call that Daemon method on the running one and exit),
test_exit_code (worker 0 exits with it at once), test_worker_initialize
("raise": every worker's initialize() raises).

With PYSE_TEST_NO_IMPORT_AFTER_DROP=1 set, any import of a module not yet
loaded fails once the process no longer runs as root, in every process of
the tree: as if the interpreter's files could not be read by the user it
switched to (a venv in a root-only directory), whatever this machine's
permissions are.
"""
import importlib.abc
import json
import os
import sys
import time

import pyse


class NoImportAfterDrop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if os.geteuid() != 0:
            raise ImportError(f"import of {name!r} after the privilege drop: the "
                              f"interpreter's files are unreadable to this user")
        return None


if os.environ.get("PYSE_TEST_NO_IMPORT_AFTER_DROP"):
    sys.meta_path.insert(0, NoImportAfterDrop())

EVENTS = os.environ["PYSE_TEST_EVENTS"]


def record(event, worker_id, detail=""):
    line = f"{event} {worker_id} {os.getpid()} {time.monotonic():.6f} {detail}".rstrip() + "\n"
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class TestServer:
    def initialize(self):
        record("initialize", -1)

    def before_run(self):
        mode = self.config.get("test_before_run")
        if mode == "raise":
            raise RuntimeError("before_run failed on purpose")
        if isinstance(mode, (int, float)):
            time.sleep(mode)
        record("before_run", -1)
        record("ids", -1, ids())

    def after_start(self):
        record("after_start", -1)

    def after_run(self):
        record("after_run", -1)


def ids():
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.setuid(0)
        regained = "ok"
    except PermissionError:
        regained = "refused"
    return f"{os.getuid()} {os.getgid()} {mask:o} setuid0={regained}"


class TestWorker:
    def initialize(self):
        if self.config.get("test_worker_initialize") == "raise":
            raise RuntimeError("no database for the workers")
        self.flag = pyse.BlockingFlag()

    def run(self):
        record("run", self.worker_id)
        record("ids", self.worker_id, ids())
        code = self.config.get("test_exit_code")
        if code is not None and self.worker_id == 0:
            sys.exit(code)
        while not self.flag.wait_for_set(0.5):
            pass
        time.sleep(float(self.config.get("test_stop_delay", 0)))
        record("return", self.worker_id)

    def stop(self):
        record("stop", self.worker_id)
        self.flag.set()

    def reload(self):
        record("reload", self.worker_id)


def load_config():
    with open(sys.argv[1]) as f:
        return json.load(f)


if __name__ == "__main__":
    daemon = pyse.create(TestServer, TestWorker, load_config)
    control = load_config().get("test_control")
    if control:
        pid = daemon.running_pid()   # before: a stopped daemon removes its pid file
        getattr(daemon, control)()
        print(f"sent {control} to {pid}")
        sys.exit(0)
    code = daemon.main()
    if daemon.config["daemonize"]:
        # The launcher: its intermediate child must have been reaped.
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            children = f.read().split()
        print(f"launcher exit {code} daemon {daemon.pid} children {children}", flush=True)
    sys.exit(code)
