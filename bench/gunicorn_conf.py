"""gunicorn configuration for the benchmark: sync workers, settings read
from the environment the bench sets (BENCH_WORKERS, BENCH_BIND, BENCH_LOG).

A worker reports "ready" from post_worker_init: its app is loaded and its
signal handlers installed, the moment before it starts accepting — the
counterpart of run() starting in pyse and ServerEngine.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from event_writer import EventWriter  # noqa: E402

workers = int(os.environ["BENCH_WORKERS"])
worker_class = "sync"
bind = [os.environ["BENCH_BIND"]]   # "unix:PATH", or "127.0.0.1:PORT" for HTTP
# The app is imported once in the master, as pyse and ServerEngine hold their
# worker code in the server before forking.
preload_app = True
errorlog = os.environ["BENCH_LOG"]
loglevel = "info"
# gunicorn >= 24 starts a control-socket thread in the master by default;
# pyse and ServerEngine have no such thing, so it is off to compare masters.
control_socket_disable = True
proc_name = "bench-gunicorn"


MASTER_EVENTS = []


def pre_fork(server, worker):
    """In the master, just before each fork (pyse and ServerEngine: before_fork)."""
    if not MASTER_EVENTS:
        MASTER_EVENTS.append(EventWriter())
    MASTER_EVENTS[0].record("fork")


def post_worker_init(worker):
    worker.bench_events = EventWriter()
    worker.bench_events.record("ready")
