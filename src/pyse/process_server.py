"""``worker_type: "process"``: one forked process per worker, watched by the
C loop through a heartbeat pipe, stopped through the kill escalation.

fd ownership is the point of most of this file.  The server holds, per
worker, the read end of its heartbeat pipe (owned by the C loop) and, for
all workers, the write end of one lifeline pipe that it never writes to.  A
worker holds the write end of its heartbeat pipe and the read end of the
lifeline.  When the server dies, for any reason, the kernel closes its
lifeline end and every worker sees the hangup at once.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable, Optional

from pyse import lowlevel, worker_process
from pyse.lowlevel import Event, EventKind, KillConfig
from pyse.multi_worker_server import MultiWorkerServer, SlotState, WorkerSlot
from pyse.signals import (DUMP, RELOAD, SERVER_SIGNALS, describe_wait_status, signal_name)


class ProcessServer(MultiWorkerServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop: Optional[lowlevel.Loop] = None
        self.kill_config = KillConfig()
        self._lifeline: Optional[tuple[int, int]] = None
        #: fds of this process that no worker may inherit (set by whoever
        #: started this server, e.g. a supervisor's lifeline).
        self.private_fds: list[int] = []
        self._by_pid: dict[int, WorkerSlot] = {}
        super().__init__(*args, **kwargs)
        self.kill_config = KillConfig.from_config(self.config, "worker_")

    # -- the loop ----------------------------------------------------------
    def open_loop(self) -> lowlevel.Loop:
        loop = lowlevel.Loop(reap_any=True)
        loop.own_signals(SERVER_SIGNALS)
        loop.watch_python_signals()
        self._lifeline = os.pipe()
        return loop

    def close_loop(self) -> None:
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None

    def run(self) -> None:
        self.loop = self.open_loop()
        link = self.parent_link
        if link is not None:
            self.loop.set_lifeline_fd(link.lifeline_fd)
        try:
            while True:
                now = lowlevel.now()
                deadline = self.manage_workers(now)
                if self.alive_or_pending() == 0:
                    break
                if link is not None and link.gone_at is None:
                    # The server has no spare thread (it forks): its loop beats.
                    if not link.beat_if_due(now):
                        self.parent_gone(now)
                    deadline = link.next_beat if deadline is None else min(deadline, link.next_beat)
                for event in self.loop.wait(deadline):
                    self.dispatch_event(event)
        finally:
            self.close_loop()

    def dispatch_event(self, event: Event) -> None:
        if event.kind is EventKind.SIGNAL:
            self.dispatch_signal(event.status)
            return
        if event.kind is EventKind.PARENT_GONE:
            self.parent_gone(lowlevel.now())
            return
        slot = self._by_pid.get(event.pid)
        if event.kind is EventKind.EXITED:
            if slot is not None:
                del self._by_pid[event.pid]
                status = event.status
                self.worker_exited(slot, describe_wait_status(status),
                                   os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                                   lowlevel.now())
            return
        if slot is None:
            return
        wid = slot.worker_id
        if event.kind is EventKind.HEARTBEAT_TIMEOUT:
            self.logger.warning("Worker %d (pid %d): no heartbeat for %g s, stopping it immediately",
                                wid, event.pid, self.kill_config.heartbeat_timeout)
        elif event.kind is EventKind.GRACEFUL_TIMEOUT:
            self.logger.warning("Worker %d (pid %d): still alive %g s after a graceful stop, "
                                "stopping it immediately", wid, event.pid,
                                self.kill_config.graceful_timeout)
        elif event.kind is EventKind.KILL:
            if event.err:
                self.logger.debug("Worker %d (pid %d): sending %s failed: %s", wid, event.pid,
                                  signal_name(event.status), os.strerror(event.err))
            else:
                self.logger.debug("Worker %d (pid %d): sent %s", wid, event.pid,
                                  signal_name(event.status))
        elif event.kind is EventKind.CLOSED:
            self.logger.debug("Worker %d (pid %d) closed its heartbeat pipe", wid, event.pid)

    # -- workers -------------------------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        assert self.loop is not None and self._lifeline is not None
        worker = self.create_worker(slot.worker_id)
        worker.before_fork()
        loop, lifeline_r, server_pid = self.loop, self._lifeline[0], os.getpid()

        def child_main(heartbeat_w: int, close_fds: list[int], restore_mask: set) -> None:
            worker_process.main(worker, loop=loop, server_pid=server_pid,
                                heartbeat_fd=heartbeat_w, lifeline_fd=lifeline_r,
                                close_fds=close_fds, restore_mask=restore_mask)

        pid, heartbeat_r = self.fork_child(child_main)
        self.adopt_worker(slot, worker, pid, heartbeat_r, now)

    def fork_child(self, child_main: Callable[[int, list[int], set], Optional[int]]
                   ) -> tuple[int, int]:
        """Forks a worker monitored through a new heartbeat pipe; see
        :func:`fork_monitored`."""
        assert self._lifeline is not None
        return fork_monitored(child_main, [self._lifeline[1], *self.private_fds,
                                           *(self.parent_link.fds() if self.parent_link else ())],
                              worker_process.EXIT_RUN_RAISED)

    def adopt_worker(self, slot: WorkerSlot, worker: Any, pid: int, heartbeat_r: int,
                     now: float) -> None:
        """Hands a started child to the loop and the slot, then after_start()."""
        assert self.loop is not None
        self.loop.add_child(pid, heartbeat_r, self.kill_config_for(pid), now)
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

    def kill_config_for(self, pid: int) -> KillConfig:
        """The escalation timing of one child (subclasses may vary it)."""
        return self.kill_config

    def send_stop(self, slot: WorkerSlot, graceful: bool, now: float) -> None:
        if self.loop is not None and slot.handle is not None:
            try:
                self.loop.stop_child(slot.handle, immediate=not graceful, now=now)
            except ProcessLookupError:
                # The loop reaped it in the batch that brought this signal;
                # its EXITED event comes later in the same batch.
                pass

    def send_reload(self, slot: WorkerSlot) -> None:
        self.signal_worker(slot, RELOAD)

    def send_dump(self, slot: WorkerSlot) -> None:
        self.signal_worker(slot, DUMP)

    def signal_worker(self, slot: WorkerSlot, signo: int) -> None:
        if slot.handle is None:
            return
        try:
            os.kill(slot.handle, signo)
        except ProcessLookupError:
            pass  # it exited; its EXITED event is on the way

    def apply_config(self, config: dict) -> None:
        super().apply_config(config)
        self.kill_config = KillConfig.from_config(config, "worker_")
        if self.loop is not None:
            for pid in self._by_pid:
                try:
                    self.loop.set_child_config(pid, self.kill_config_for(pid))
                except ProcessLookupError:
                    pass  # reaped in this batch; its EXITED event follows

    def worker_pids(self) -> dict[int, int]:
        """worker id -> pid of the workers alive now."""
        return {s.worker_id: s.handle for s in self.slots
                if s.state in (SlotState.RUNNING, SlotState.STOPPING) and s.handle}


def fork_monitored(child_main: Callable[[int, list[int], set], Optional[int]],
                   close_fds: list[int], failure_code: int) -> tuple[int, int]:
    """Forks a child that a loop will monitor through a new heartbeat pipe;
    returns its pid and the pipe's read end (the write end is closed here).

    The child runs ``child_main(heartbeat write end, fds it must close,
    signal mask to restore)``, which owns the child's fd hygiene, and then
    ends in ``os._exit`` with what child_main returned (``failure_code`` if
    it returned None or raised): it never returns into the parent's stack."""
    heartbeat_r, heartbeat_w = os.pipe()
    close_fds = [heartbeat_r, *close_fds]
    # Block the signals the loop owns across the fork: until the child has
    # dropped the parent's handlers, a signal sent to it would land in the
    # parent's self-pipe and look like a signal to the parent.  The child
    # keeps them blocked until its own loop takes them over.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(heartbeat_r)
        os.close(heartbeat_w)
        raise
    if pid == 0:
        code = failure_code
        try:
            returned = child_main(heartbeat_w, close_fds, blocked)
            if returned is not None:
                code = returned
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(heartbeat_w)
    return pid, heartbeat_r
