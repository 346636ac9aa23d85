"""pyse: ServerEngine for Python.

A framework for robust multi-process servers: supervisor -> server ->
workers, heartbeats over pipes, automatic restarts, timed TERM -> QUIT ->
KILL escalation, live restart, configuration reload and log rotation, and no
orphaned workers when a parent dies.

    import pyse

    class MyWorker:
        def initialize(self):
            self.flag = pyse.BlockingFlag()
        def run(self):
            while not self.flag.wait_for_set(1.0):
                self.logger.info("Awesome work!")
        def stop(self):
            self.flag.set()

    pyse.create(None, MyWorker, {"worker_type": "process", "workers": 4}).run()
"""
from pyse.blocking_flag import BlockingFlag
from pyse.config import ConfigError
from pyse.daemon import Daemon, create
from pyse.server import Server
# Imported with pyse, not on first use: a server's before_run() may open
# sockets after the daemon switched to chuser, when the interpreter's files
# may no longer be readable.
from pyse.socket_manager import SocketManager
from pyse.worker import Worker

__all__ = ["BlockingFlag", "ConfigError", "Daemon", "Server", "SocketManager", "Worker", "create"]
__version__ = "0.1.0"
