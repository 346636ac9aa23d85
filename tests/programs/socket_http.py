"""examples/http_server.py's server and worker under a configuration read
from a JSON file (again at every reload and restart), with process or
spawn workers.

Usage: python socket_http.py CONFIG.json                 the daemon
       python socket_http.py --spawned CONFIG.json ID    what a spawn worker runs

CONFIG.json holds pyse keys and the example's ``bind`` and ``port``.  A
spawn worker runs this program with --spawned: the example's worker in a
program of its own, which finds the socket manager through its environment
(pyse.SocketManager.Client()) and stops gracefully on TERM.
"""
import importlib.util
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pyse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "http_server.py"
_spec = importlib.util.spec_from_file_location("http_server_example", EXAMPLE)
http_server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(http_server)


def read_config(path):
    with open(path) as f:
        return json.load(f)


class SpawnedHTTPWorker:
    def spawn(self, process_manager):
        process_manager.spawn(None, sys.executable, os.path.abspath(__file__), "--spawned",
                              sys.argv[1], str(self.worker_id))


class StandaloneHTTPWorker(http_server.HTTPWorker):
    """The example's worker without pyse's worker around it."""

    def __init__(self, config, worker_id):
        self.config, self.worker_id = config, worker_id
        self.logger = logging.getLogger("spawned")
        self.initialize()


def run_spawned(config_path, worker_id):
    worker = StandaloneHTTPWorker(read_config(config_path), worker_id)
    # The handler runs on the main thread, which waits in select(): stop()
    # only sets an event and writes to a socket pair.
    signal.signal(signal.SIGTERM, lambda signo, frame: worker.stop())
    worker.run()


if __name__ == "__main__":
    if sys.argv[1] == "--spawned":
        run_spawned(sys.argv[2], int(sys.argv[3]))
    else:
        spawn = read_config(sys.argv[1]).get("worker_type") == "spawn"
        pyse.create(http_server.HTTPServer, SpawnedHTTPWorker if spawn else http_server.HTTPWorker,
                    lambda: read_config(sys.argv[1])).run()
