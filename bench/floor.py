"""The Python floor: the least a Python server that keeps N workers alive
can do.

    python bench/floor.py WORKERS     (events go to the FIFO in $BENCH_EVENTS)

``os.fork()`` per worker and ``os.waitpid()`` in a loop; a worker is a plain
function that sets its parent-death signal, reports "ready" and sleeps.  No
heartbeat, no logging, no threads.  TERM: TERM to every worker, wait for
them all, exit 0.  pyse's numbers are read as multiples of this one's.
"""
import ctypes
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from event_writer import EventWriter  # noqa: E402

PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True)


def worker(server_pid: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != server_pid:
        return  # the server died before the prctl
    EventWriter().record("ready")
    while True:
        signal.pause()


class FloorServer:
    def __init__(self, workers: int) -> None:
        self.children: dict[int, int] = {}   # pid -> slot
        self.stopping = False
        self.events = EventWriter()
        signal.signal(signal.SIGTERM, self.stop_workers)
        for slot in range(workers):
            self.spawn_worker(slot)

    def stop_workers(self, signo: int, frame: object) -> None:
        self.stopping = True
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # reaped by waitpid, not yet taken off the table: already gone

    def spawn_worker(self, slot: int) -> None:
        # TERM waits while the table changes, so stop_workers sees every child.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        self.events.record("fork")
        server_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                worker(server_pid)
            finally:
                os._exit(1)
        self.children[pid] = slot
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])

    def run(self) -> None:
        while self.children:
            pid, _ = os.waitpid(-1, 0)
            slot = self.children.pop(pid, None)
            if slot is not None and not self.stopping:
                self.spawn_worker(slot)


if __name__ == "__main__":
    FloorServer(int(sys.argv[1])).run()
