"""Runs an example program with configuration keys of the test's on top of
its own, without editing the example:

    python run_example.py EXAMPLE.py '{"restart_backoff_base": 0}' ARGS...

Tests that SIGKILL workers again and again turn the crash-loop backoff off
this way: they measure the listeners, not the backoff."""
import json
import runpy
import sys

import pyse

example, extra = sys.argv[1], json.loads(sys.argv[2])
original_create = pyse.create


def create(server, worker, config=None):
    if callable(config):
        return original_create(server, worker, lambda: {**config(), **extra})
    return original_create(server, worker, {**(config or {}), **extra})


pyse.create = create
sys.argv = [example, *sys.argv[3:]]
runpy.run_path(example, run_name="__main__")
