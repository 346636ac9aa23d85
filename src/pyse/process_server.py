"""``worker_type: "process"``: one forked process per worker, watched by the
C loop through a heartbeat pipe, stopped through the kill escalation.

The forking, the watching, the lifeline and the fds each side owns are
:mod:`pyse.process_manager`'s; this module says what a worker process is
(:mod:`pyse.worker_process` runs in it) and what the server does about its
life and death.  The server runs no thread of its own: it forks.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from pyse import lowlevel, worker_process
from pyse.lowlevel import Event, EventKind
from pyse.multi_worker_server import MultiWorkerServer, WorkerSlot
from pyse.process_manager import ProcessManager, kill_config
from pyse.reporter import ServingLoop
from pyse.signals import DUMP, RELOAD, describe_wait_status
from pyse.socket_manager_tree import OwnedBrokers


class ProcessServer(MultiWorkerServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.manager = ProcessManager(self.logger)
        self._by_pid: dict[int, WorkerSlot] = {}
        #: (the configuration, its reload message for the workers)
        self._reload_message: tuple[Optional[dict[str, Any]], bytes] = (None, b"")

    @property
    def private_fds(self) -> list[int]:
        """fds of this process no worker may inherit (a pid file's lock)."""
        return self.manager.private_fds

    # -- the loop ----------------------------------------------------------
    def open_manager(self) -> None:
        link = self.parent_link
        if link is not None and link.loop is not None:
            # Under a supervisor: the set-up made our loop, which owns our
            # signals, watches the supervisor's lifeline and beats to it.
            self.manager.adopt_loop(link.loop)
            self.manager.private_fds.extend(link.fds())
        else:
            self.manager.open()
        self.reporter.attach(ServingLoop(self.manager.add_watcher, self.manager.remove_watcher))

    def run(self) -> None:
        self.open_manager()
        # The brokers of the socket managers this process owns (ours without
        # a supervisor, or one before_run() opened) are served by our loop.
        self.manager.add_watcher(OwnedBrokers())
        try:
            while True:
                deadline = self.manage_workers(lowlevel.now())
                if self.alive_or_pending() == 0:
                    break
                self.reporter.workers_changed()
                for event in self.manager.wait(deadline):
                    self.dispatch_event(event)
        finally:
            self.reporter.close()
            self.manager.close()

    def dispatch_event(self, event: Event) -> None:
        if event.kind is EventKind.SIGNAL:
            self.dispatch_signal(event.status)
        elif event.kind is EventKind.PARENT_GONE:
            self.parent_gone(lowlevel.now())
        elif event.kind is EventKind.HEARTBEAT:
            # Its first heartbeat: the worker's set-up is done, run() starts.
            slot = self._by_pid.get(event.pid)
            if slot is not None:
                self.worker_up(slot)
        elif event.kind is EventKind.EXITED:
            slot = self._by_pid.pop(event.pid, None)
            if slot is not None:
                status = event.status
                self.worker_exited(slot, describe_wait_status(status),
                                   os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                                   lowlevel.now())

    # -- workers -------------------------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        worker = self.create_worker(slot.worker_id)
        worker.before_fork()
        child = self.manager.fork(
            f"Worker {slot.worker_id}", worker_process.worker_role(self.config),
            lambda link: worker_process.main(worker, link), kill_config(self.config, "worker_"),
            failure_code=worker_process.EXIT_RUN_RAISED, now=now)
        self.adopt_worker(slot, worker, child.pid)

    def adopt_worker(self, slot: WorkerSlot, worker: Any, pid: int) -> None:
        """Records a started child in its slot, then after_start()."""
        slot.worker = worker
        slot.handle = pid
        self._by_pid[pid] = slot
        self.logger.info("Worker %d started (pid %d)", slot.worker_id, pid)
        try:
            worker.after_start()
        except Exception:
            # The worker is running: a failing hook in the parent must not
            # make the slot forget it.
            self.logger.exception("Worker %d: after_start() raised", slot.worker_id)

    def send_stop(self, slot: WorkerSlot, graceful: bool, now: float) -> None:
        if slot.handle is not None:
            self.manager.stop(slot.handle, immediate=not graceful, now=now)

    def send_reload(self, slot: WorkerSlot) -> None:
        """The server's configuration goes to the running worker, which puts
        it in place before its reload() (see worker_process.encode_reload)."""
        if slot.handle is None:
            return
        if self._reload_message[0] is not self.config:   # once per reload, not per worker
            self._reload_message = (self.config, worker_process.encode_reload(self.config))
        if not self.manager.send_message(slot.handle, self._reload_message[1]):
            self.signal_worker(slot, RELOAD)

    def send_dump(self, slot: WorkerSlot) -> None:
        self.signal_worker(slot, DUMP)

    def signal_worker(self, slot: WorkerSlot, signo: int) -> None:
        if slot.handle is not None:
            self.manager.send_signal(slot.handle, signo)

    def apply_config(self, config: dict[str, Any]) -> None:
        super().apply_config(config)
        self.manager.set_kill_config(kill_config(config, "worker_"))
