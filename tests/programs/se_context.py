"""ServerEngine's spec context (spec/server_worker_context.rb) in Python: its
TestServer, TestWorker, RunErrorWorker, TestExitWorker and
InitializeErrorServer modules, counting their hook calls as the Ruby
``incr_test_state`` does, plus the few modules the signal_thread port needs.

Each count appends one line to $PYSE_TEST_EVENTS (the format of
tests/programs/supervised.py, so tests/supervised_harness.py reads it):

    <key> <worker id or -1> <pid> <CLOCK_MONOTONIC seconds> [detail]

and ``test_state(key)`` is the number of lines with that key.

Usage: python se_context.py CONFIG.json   (re-read at every reload/restart).
Test-only config keys:
  test_server: the server module, a class name below or null (no module);
      TestServer by default;
  test_worker: the worker module, a class name below; TestWorker by default;
  test_exit_step: TestExitWorker's seconds per worker number (the Ruby
      original waits 2 s per number);
  test_initialize_delay: seconds TestServer.initialize() takes;
  test_log_stream / test_logger_stream: "stdout" or "stderr": the ``log``
      key becomes that stream object, or the ``logger`` key a ready
      logging.Logger writing to it (JSON cannot hold either).
After Daemon.main() returns (in the foreground or in a daemonize launcher),
the program records ``main_returned`` (detail: the status),
``signal_handling_after_main`` ("restored" when the signals it catches are
those it caught before main()), ``threads_after_main`` (the names of the
threads left) and ``server_logger`` ("given" or "built <class>"), then
exits with the status.
"""
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time

import pyse

EVENTS = os.environ["PYSE_TEST_EVENTS"]
#: what main() was given as its ready logger, to tell it from one pyse built
GIVEN_LOGGER = None


def incr_test_state(key, worker_id=-1, detail=""):
    """Appends one count of key; returns how many there are now (the Ruby
    original returns the new count too; TestExitWorker numbers itself by it)."""
    line = f"{key} {worker_id} {os.getpid()} {time.monotonic():.6f} {detail}".rstrip() + "\n"
    with open(EVENTS, "a+") as f:
        # One writer at a time, so the count read back is this write's.
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line)
        f.flush()
        f.seek(0)
        return sum(1 for row in f if row.split(" ", 1)[0] == key)


# -- the modules of server_worker_context.rb ------------------------------------
class TestServer:
    def initialize(self):
        incr_test_state("server_initialize")
        time.sleep(float(self.config.get("test_initialize_delay", 0)))

    def before_run(self):
        incr_test_state("server_before_run")

    def after_run(self):
        incr_test_state("server_after_run")

    def after_start(self):
        incr_test_state("server_after_start")

    def stop(self, stop_graceful):
        incr_test_state("server_stop")
        incr_test_state("server_stop_graceful" if stop_graceful else "server_stop_immediate")
        super().stop(stop_graceful)

    def restart(self, stop_graceful):
        incr_test_state("server_restart")
        incr_test_state("server_restart_graceful" if stop_graceful
                        else "server_restart_immediate")
        super().restart(stop_graceful)

    def reload(self):
        incr_test_state("server_reload")
        super().reload()

    # The Ruby module also counts detach; pyse's server has no detach() of
    # its own (INT without a supervisor is a graceful stop) and no spec
    # example reads that count.

    def dump(self):
        incr_test_state("server_dump")
        super().dump()


class TestWorker:
    def initialize(self):
        incr_test_state("worker_initialize", self.worker_id)
        self.stop_flag = pyse.BlockingFlag()

    def before_fork(self):
        incr_test_state("worker_before_fork", self.worker_id)

    def run(self):
        incr_test_state("worker_run", self.worker_id)
        for _ in range(5):
            # repeated as in the original, where signal handlers interrupt waits
            self.stop_flag.wait(5.0)
        self.stop_flag.reset()

    def stop(self):
        incr_test_state("worker_stop", self.worker_id)
        self.stop_flag.set()

    def reload(self):
        incr_test_state("worker_reload", self.worker_id)

    def after_start(self):
        incr_test_state("worker_after_start", self.worker_id)

    def spawn(self, process_manager):
        # The original runs TestWorker again in a new Ruby process; so does this.
        process_manager.spawn({}, sys.executable, os.path.abspath(__file__), "--child",
                              str(self.worker_id))


class RunErrorWorker(TestWorker):
    def run(self):
        incr_test_state("worker_run", self.worker_id)
        raise RuntimeError("error test")


class TestExitWorker:
    def initialize(self):
        self.stop_flag = pyse.BlockingFlag()
        self.worker_num = incr_test_state("worker_initialize", self.worker_id)
        self.exit_code = {1: 5, 4: 3}.get(self.worker_num, 4)

    def run(self):
        incr_test_state("worker_run", self.worker_id)
        exit_at = time.monotonic() + self.worker_num * float(self.config.get("test_exit_step", 2))
        while not self.stop_flag.wait(0.1):
            if time.monotonic() >= exit_at:
                # Ruby's exit!(code); sys.exit(code) is how a pyse worker of
                # any type reports an exit code.
                sys.exit(self.exit_code)
        incr_test_state("worker_finished", self.worker_id)

    def stop(self):
        incr_test_state("worker_stop", self.worker_id)
        self.stop_flag.set()


class InitializeErrorServer:
    def initialize(self):
        raise RuntimeError("error test")


# -- for the signal_thread port ---------------------------------------------------
class ResignallingServer(TestServer):
    """Its CONT reaction sends CONT again, three times (signal in handler)."""

    def dump(self):
        super().dump()
        if incr_test_state("resignal") <= 3:
            os.kill(os.getpid(), signal.SIGCONT)


class StopInReloadServer(TestServer):
    """Its USR2 reaction stops the server (stop in handler)."""

    def reload(self):
        super().reload()
        self.stop(True)


class QuitIgnoringWorker(TestWorker):
    """run() ignores QUIT with SIG_IGN, as user code may (SIG_IGN)."""

    def run(self):
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)
        super().run()


# -- the program ------------------------------------------------------------------
def stream(name):
    return {"stdout": sys.stdout, "stderr": sys.stderr}[name]


def load_config():
    global GIVEN_LOGGER
    with open(sys.argv[1]) as f:
        config = json.load(f)
    if config.get("test_log_stream"):
        config["log"] = stream(config["test_log_stream"])
    if config.get("test_logger_stream"):
        if GIVEN_LOGGER is None:
            GIVEN_LOGGER = logging.Logger("given")
            GIVEN_LOGGER.addHandler(logging.StreamHandler(stream(config["test_logger_stream"])))
        config["logger"] = GIVEN_LOGGER
    return config


def child_main(worker_id):
    """A spawned worker: TestWorker's run() in a plain process, stopped by TERM."""
    worker = TestWorker.__new__(TestWorker)
    worker.worker_id = worker_id
    worker.stop_flag = pyse.BlockingFlag()
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run()


def caught_signals():
    """The standard signals this process catches (SigCgt, as the kernel
    reports it).  Real-time ones are left out: the C library installs its
    own (33 for set*id() in a threaded process) when it first needs them."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return f"{int(line.split()[1], 16) & 0x7fffffff:08x}"
    return "?"


def main():
    config = load_config()
    caught_before = caught_signals()
    server = config.get("test_server", "TestServer")
    worker = config.get("test_worker", "TestWorker")
    daemon = pyse.create(server and globals()[server], globals()[worker], load_config)
    code = daemon.main()
    incr_test_state("main_returned", -1, f"status={code}")
    caught_after = caught_signals()
    incr_test_state("signal_handling_after_main", -1,
                    "restored" if caught_after == caught_before
                    else f"changed {caught_before} -> {caught_after}")
    incr_test_state("threads_after_main", -1,
                    " ".join(sorted(t.name for t in threading.enumerate())))
    logger = daemon.server.logger if daemon.server is not None else None
    if logger is not None:
        incr_test_state("server_logger", -1, "given" if logger is GIVEN_LOGGER
                        else f"built {type(logger).__module__}.{type(logger).__name__}")
    sys.exit(code)


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child_main(int(sys.argv[2]))
    else:
        main()
