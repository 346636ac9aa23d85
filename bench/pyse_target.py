"""The pyse side of the benchmark: a process server whose workers report to
the bench (see event_writer.py).

    python bench/pyse_target.py CONFIG.json

CONFIG.json holds pyse configuration keys (the same names ServerEngine
reads, see serverengine_target.rb) plus ``bench_mode``:

- ``normal``: the usual worker; "ready" when run() starts, stop() ends it
  (and the server records "fork" in before_fork());
- ``stubborn``: stop() records "term" and is ignored, QUIT is recorded
  ("quit") and survived, so the server's kill escalation runs to its SIGKILL.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyse  # noqa: E402
from event_writer import EventWriter  # noqa: E402


#: the server's own writer, for "fork" lines from before_fork()
MASTER_EVENTS = None


class BenchWorker:
    def before_fork(self):
        # Runs in the server just before each fork: splits a respawn into the
        # server's reaction and the new worker's start-up.
        global MASTER_EVENTS
        if MASTER_EVENTS is None:
            MASTER_EVENTS = EventWriter()
        MASTER_EVENTS.record("fork")

    def initialize(self):
        self.flag = pyse.BlockingFlag()
        self.stubborn = self.config.get("bench_mode") == "stubborn"

    def run(self):
        self.events = EventWriter()
        if self.stubborn:
            # run() is on the main thread, the only one with QUIT unblocked in
            # a pyse worker, so the handler interrupts the wait below at once.
            signal.signal(signal.SIGQUIT, lambda signo, frame: self.events.record("quit"))
        self.events.record("ready")
        while not self.flag.wait_for_set(1.0):
            pass

    def stop(self):
        self.events.record("term")
        if not self.stubborn:
            self.flag.set()


def load_config():
    with open(sys.argv[1]) as f:
        return json.load(f)


if __name__ == "__main__":
    pyse.create(None, BenchWorker, load_config).run()
