"""What a benchmarked worker (pyse's or gunicorn's) tells the bench.

One line per event, ``<kind> <pid> <CLOCK_MONOTONIC seconds>``, written with
one write(2) into the FIFO named by $BENCH_EVENTS.  A line is far below
PIPE_BUF, so lines from many workers never interleave.  The times come from
the worker, so the bench's own wake-up delay is not part of a measurement.
The Ruby side (serverengine_target.rb) writes the same lines.
"""
from __future__ import annotations

import os
import time


class EventWriter:
    def __init__(self) -> None:
        # Opened in the worker itself, after the fork: pyse closes every fd a
        # worker does not own, so an inherited one would not survive.  The
        # bench holds the read end open, so this open never blocks.
        self.fd = os.open(os.environ["BENCH_EVENTS"], os.O_WRONLY | os.O_NONBLOCK)

    def record(self, kind: str) -> None:
        os.write(self.fd, f"{kind} {os.getpid()} {time.monotonic():.6f}\n".encode())
