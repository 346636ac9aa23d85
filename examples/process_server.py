"""A process server with 2 workers, logging to the terminal.

    python examples/process_server.py

Watch it:   ps -o pid,ppid,args -C python3 -C python   (the names say se-worker-0/1)
Signal it:  kill -USR2 <server pid>   reload: workers log "reloaded"
            kill -KILL <worker pid>   the worker is replaced at once
            kill -TERM <server pid>   (or Ctrl-C) graceful stop
            kill -KILL <server pid>   the workers notice and exit too
"""
import os

import pyse


class MyWorker(pyse.Worker):
    def initialize(self) -> None:
        self.flag = pyse.BlockingFlag()

    def run(self) -> None:
        self.logger.info("worker %d running in pid %d", self.worker_id, os.getpid())
        while not self.flag.wait_for_set(2.0):
            self.logger.info("worker %d: awesome work!", self.worker_id)
        self.logger.info("worker %d: run() returns", self.worker_id)

    def stop(self) -> None:
        self.flag.set()

    def reload(self) -> None:
        self.logger.info("worker %d reloaded", self.worker_id)


if __name__ == "__main__":
    pyse.create(None, MyWorker, {
        "worker_type": "process",
        "workers": 2,
        "daemon_process_name": "se-server",
        "worker_process_name": "se-worker-%d",
        "log_level": "info",
    }).run()
