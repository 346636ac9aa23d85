"""pyse: ServerEngine for Python.

A framework for robust multi-process servers: supervisor -> server ->
workers, heartbeats over pipes, automatic restarts, timed TERM -> QUIT ->
KILL escalation, live restart, configuration reload and log rotation, and no
orphaned workers when a parent dies.

    import pyse

    class MyWorker(pyse.Worker):
        def initialize(self) -> None:
            self.flag = pyse.BlockingFlag()
        def run(self) -> None:
            while not self.flag.wait_for_set(1.0):
                self.logger.info("Awesome work!")
        def stop(self) -> None:
            self.flag.set()

    pyse.create(None, MyWorker, {"worker_type": "process", "workers": 4}).run()

A plain class (ServerEngine's "module") works as well: pyse mixes it into
:class:`Worker`.  ``class MyWorker(pyse.WorkerModule)`` keeps it plain at
run time and makes it a Worker to a type checker (``ServerModule`` does
the same for servers).
"""
from pyse.blocking_flag import BlockingFlag
from pyse.config import ConfigError
from pyse.daemon import Daemon, create
from pyse.server import Server, ServerModule
# Imported with pyse, not on first use: a server's before_run() may open
# sockets after the daemon switched to chuser, when the interpreter's files
# may no longer be readable.
from pyse.socket_manager import SocketManager
from pyse.worker import Worker, WorkerModule

__all__ = ["BlockingFlag", "ConfigError", "Daemon", "Server", "ServerModule", "SocketManager",
           "Worker", "WorkerModule", "create"]
__version__ = "0.1.0"
