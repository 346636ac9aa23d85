"""``worker_type: "thread"``: one thread per worker, ``workers`` of them.

The main thread is the server thread: it keeps the slots of
pyse.multi_worker_server (start delays, crash-loop backoff, scaling at
reload) and waits on the event queue until the next start is due.  Worker
threads post their own end to that queue; the control thread (see
pyse.in_process_server) posts signals and the supervisor's death.

``stop()`` and ``reload()`` run on a new thread each time, as in
ServerEngine.  A thread cannot be killed, so there is no kill escalation:
a graceful stop waits for ``run()`` to return, and QUIT/HUP act as TERM/USR1.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Optional

from pyse import lowlevel
from pyse.embedded_server import run_worker
from pyse.in_process_server import InProcessServer, ServerEvent, WorkerThreadExited
from pyse.multi_worker_server import MultiWorkerServer, WorkerSlot
from pyse.worker import Worker


class ThreadServer(InProcessServer, MultiWorkerServer):
    def run(self) -> None:
        self.start_control()
        try:
            while True:
                now = lowlevel.now()
                due = self.manage_workers(now)
                if self.alive_or_pending() == 0:
                    break
                self.reporter.workers_changed()
                timeout = None if due is None else max(0.0, due - lowlevel.now())
                try:
                    event = self.events.get(timeout=timeout)
                except queue.Empty:
                    continue  # a delayed start is due
                if event is not None:
                    self.handle_event_logged(event)
        finally:
            self.stop_control()

    def handle_event(self, event: ServerEvent) -> None:
        if isinstance(event, WorkerThreadExited):
            if event.slot.worker is event.worker:
                self.worker_exited(event.slot, event.description, event.exit_code,
                                   lowlevel.now())
            return
        super().handle_event(event)

    # -- workers -------------------------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        worker = self.create_worker(slot.worker_id)
        worker.before_fork()
        thread = threading.Thread(target=self.run_in_thread, args=(slot, worker),
                                  name=f"pyse-worker-{slot.worker_id}", daemon=True)
        slot.worker = worker
        slot.handle = thread
        thread.start()
        self.logger.info("Worker %d started (thread %s)", slot.worker_id, thread.name)
        self.worker_up(slot)
        try:
            worker.after_start()
        except Exception:
            # The thread runs: a failing hook must not make the slot forget it.
            self.logger.exception("Worker %d: after_start() raised", slot.worker_id)

    def run_in_thread(self, slot: WorkerSlot, worker: Worker) -> None:
        description: str = "status 1"
        code: Optional[int] = 1
        try:
            description, code = run_worker(worker, self.logger)
        finally:
            # Posted whatever happened (even a BaseException), or the slot
            # would wait for this thread forever.
            self.post(WorkerThreadExited(slot, worker, description, code))

    def send_stop(self, slot: WorkerSlot, graceful: bool, now: float) -> None:
        worker: Optional[Any] = slot.worker
        if worker is not None:
            self.call_in_thread(worker.stop, f"worker {slot.worker_id} stop()")

    def send_reload(self, slot: WorkerSlot) -> None:
        if slot.worker is not None:
            self.call_in_thread(slot.worker.reload, f"worker {slot.worker_id} reload()")

    def send_dump(self, slot: WorkerSlot) -> None:
        if slot.worker is not None:
            self.dump_worker(slot.worker)
