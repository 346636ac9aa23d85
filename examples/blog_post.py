"""The program of a blog post about ServerEngine's orphaned workers (a
Sneakers user's: a 2-worker process server whose workers run on forever
once the server is SIGKILLed), ported line by line: a daemon with two
process workers, a log file, a pid file and process names.

    python examples/blog_post.py          # returns once the daemon is up
    ps x | grep -v grep | grep -E "(se-server|se-worker)"
    head server.log
    kill -9 <a se-worker pid>             # replaced at once, and logged:
    grep -A 2 -B 2 SIGKILL server.log     #   "Worker 0 finished unexpectedly with signal SIGKILL"
    kill -9 <the se-server pid>           # unlike the post: no orphaned worker is left
    ps x | grep -v grep | grep -E "(se-server|se-worker)"

Stop it gracefully with ``kill $(cat server.pid)`` (or ``pyse stop -p server.pid``).
"""
import time

import pyse


class SimpleWorker(pyse.WorkerModule):  # module SimpleWorker
    def run(self) -> None:          #   def run
        while not getattr(self, "stopped", False):  # until @stop
            self.logger.info(f"[worker_id: {self.worker_id}] Awesome work!")
            time.sleep(5)           #     sleep 5

    def stop(self) -> None:         #   def stop
        self.stopped = True         #     @stop = true


pyse.create(None, SimpleWorker, {   # ServerEngine.create(nil, SimpleWorker, {
    "daemonize": True,
    "log": "server.log",
    "pid_path": "server.pid",
    "daemon_process_name": "se-server",
    "worker_process_name": "se-worker",
    "worker_type": "process",
    "workers": 2,
}).run()                            # }).run
