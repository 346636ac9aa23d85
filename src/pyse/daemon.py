"""The top of the process tree: ``pyse.create()`` and :class:`Daemon`.

The daemon validates the configuration before anything forks, sets up
logging, then becomes the server (or, with ``supervisor: true``, the
supervisor of a server process).
"""
from __future__ import annotations

import importlib
import os
import signal
from typing import Any, Optional

from pyse import config as config_mod
from pyse.server import ConfigSource, Server
from pyse.signals import (DETACH, DUMP, GRACEFUL_RESTART, GRACEFUL_STOP, IMMEDIATE_RESTART,
                          IMMEDIATE_STOP, RELOAD)
from pyse.worker import Worker, mix_in

#: worker_type -> the server class that runs that type of worker
SERVER_CLASSES = {
    "embedded": "pyse.embedded_server:EmbeddedServer",
    "thread": "pyse.thread_server:ThreadServer",
    "process": "pyse.process_server:ProcessServer",
    "spawn": "pyse.spawn_server:SpawnServer",
}


def server_base_class(worker_type: str) -> type:
    module, _, name = SERVER_CLASSES[worker_type].partition(":")
    return getattr(importlib.import_module(module), name)


def create(server_module: Optional[type], worker_module: type,
           config: Optional[ConfigSource] = None) -> "Daemon":
    """Builds a daemon; ``run()`` or ``main()`` starts it.

    config is a dict, or a callable returning one that is called again at
    every reload and restart.  Raises :class:`pyse.ConfigError` for a bad
    configuration and :class:`TypeError` for a worker module without run()."""
    return Daemon(server_module, worker_module, config)


class Daemon:
    def __init__(self, server_module: Optional[type], worker_module: type,
                 config: Optional[ConfigSource] = None) -> None:
        self.config_source: ConfigSource = {} if config is None else config
        self.config: dict = config_mod.load(self.config_source)
        required = "spawn" if self.config["worker_type"] == "spawn" else "run"
        if not callable(getattr(worker_module, required, None)):
            raise TypeError(f"worker module {getattr(worker_module, '__name__', worker_module)!r} "
                            f"has no {required}() method, which worker_type "
                            f"{self.config['worker_type']!r} requires")
        self.server_module = server_module
        self.worker_class = mix_in(worker_module, Worker, "worker")
        self.server_class = mix_in(server_module, server_base_class(self.config["worker_type"]),
                                   "server")
        self.pid: Optional[int] = None
        self.server: Optional[Server] = None

    # -- running -------------------------------------------------------------
    def main(self) -> int:
        """Runs the server in this process; returns its exit status."""
        from pyse.logger import LogSetup

        log_setup = LogSetup(self.config)
        log_setup.start()
        try:
            for key, likely in config_mod.near_misses(self.config):
                log_setup.logger.warning("Unknown config key %r: did you mean %r?", key, likely)
            self.pid = os.getpid()
            self.server = self.server_class(self.worker_class, self.config_source, self.config,
                                            log_setup)
            return self.server.main()
        finally:
            log_setup.close()

    def run(self) -> None:
        """Runs the server and ends the process with its exit status."""
        raise SystemExit(self.main())

    # -- controlling a running daemon -----------------------------------------
    def stop(self, graceful: bool = True) -> None:
        self.send_signal(GRACEFUL_STOP if graceful else IMMEDIATE_STOP)

    def restart(self, graceful: bool = True) -> None:
        self.send_signal(GRACEFUL_RESTART if graceful else IMMEDIATE_RESTART)

    def reload(self) -> None:
        self.send_signal(RELOAD)

    def detach(self) -> None:
        self.send_signal(DETACH)

    def dump(self) -> None:
        self.send_signal(DUMP)

    def send_signal(self, signo: signal.Signals) -> None:
        os.kill(self.running_pid(), signo)

    def running_pid(self) -> int:
        """The daemon's pid: this object's own run, or the pid file's."""
        if self.pid is not None:
            return self.pid
        path = self.config.get("pid_path")
        if not path:
            raise RuntimeError("this daemon was not started here and has no pid_path to find it by")
        with open(path) as f:
            text = f.read().strip()
        try:
            return int(text)
        except ValueError:
            raise RuntimeError(f"pid file {path!r} does not hold a pid: {text[:40]!r}") from None
