"""Servers that keep ``workers`` workers alive (thread and process types).

Each worker id is a slot with an explicit state; one transition table says
what may happen to a slot, and ``manage_workers(now)`` decides, from the
configuration and the clock it is given, which slots start, which stop and
when the next start is due.  Subclasses say how a worker starts, stops and
reloads.
"""
from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from pyse import restart_policy
from pyse.restart_policy import SlotHistory, StartTiming
from pyse.server import Server


class SlotState(enum.Enum):
    WAITING = "waiting"      # no worker; one starts when its start is due
    RUNNING = "running"      # a worker is alive
    STOPPING = "stopping"    # a worker is alive and was asked to stop
    IDLE = "idle"            # no worker, and none wanted (stopping, scaled down)
    FAILED = "failed"        # exited with an unrecoverable code: never restarted


S = SlotState
TRANSITIONS: dict[tuple[SlotState, str], SlotState] = {
    (S.WAITING, "start"): S.RUNNING,
    (S.WAITING, "unwant"): S.IDLE,
    (S.IDLE, "want"): S.WAITING,
    (S.RUNNING, "stop"): S.STOPPING,
    (S.STOPPING, "stop"): S.STOPPING,
    (S.RUNNING, "exit_restart"): S.WAITING,
    (S.STOPPING, "exit_restart"): S.WAITING,
    (S.RUNNING, "exit_idle"): S.IDLE,
    (S.STOPPING, "exit_idle"): S.IDLE,
    (S.RUNNING, "exit_failed"): S.FAILED,
    (S.STOPPING, "exit_failed"): S.FAILED,
}


class SlotTransitionError(RuntimeError):
    pass


@dataclass
class WorkerSlot:
    worker_id: int
    state: SlotState = SlotState.WAITING
    worker: Any = None          # the Worker object of the current run
    handle: Any = None          # the subclass's handle: a pid, a thread
    history: SlotHistory = field(default_factory=SlotHistory)
    spacing_draw: float = field(default_factory=random.random)

    def transition(self, event: str) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise SlotTransitionError(
                f"worker {self.worker_id}: event {event!r} is not allowed in state "
                f"{self.state.value!r}") from None
        if self.state is SlotState.WAITING:
            self.spacing_draw = random.random()

    @property
    def alive(self) -> bool:
        return self.state in (SlotState.RUNNING, SlotState.STOPPING)


def judge_worker_exit(server: Server, worker_id: int, history: SlotHistory, timing: StartTiming,
                      description: str, exit_code: Optional[int], stop_requested: bool,
                      restart_wanted: bool, now: float) -> Optional[float]:
    """What every server with worker slots does when a worker ends: logs it
    (an unexpected end at warning), counts it in the slot's history, and
    returns the backoff before the slot may start again, or None when the
    exit code is one of ``unrecoverable_exit_codes`` (then the server's
    exit status is that code, and the slot is not restarted)."""
    server.logger.log(logging.INFO if stop_requested else logging.WARNING,
                      "Worker %d finished%s with %s", worker_id,
                      "" if stop_requested else " unexpectedly", description)
    delay = history.record_exit(timing, now, stop_requested)
    history.last_exit = (description, exit_code, now)
    if exit_code is not None and exit_code in server.config["unrecoverable_exit_codes"]:
        server.stop_status = exit_code
        server.logger.error("Worker %d exited with unrecoverable code %d: not restarting it",
                            worker_id, exit_code)
        return None
    if restart_wanted and delay > 0:
        server.logger.warning("Worker %d failed %d times in a row: restarting it in %.3g s",
                              worker_id, history.failures, delay)
    return delay


class MultiWorkerServer(Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots: list[WorkerSlot] = []
        self.last_start: Optional[float] = None
        super().__init__(*args, **kwargs)
        self._timing = StartTiming.from_config(self.config)

    @property
    def num_workers(self) -> int:
        return self.config["workers"]

    # -- what subclasses provide ------------------------------------------
    def start_worker(self, slot: WorkerSlot, now: float) -> None:
        """Starts slot's worker; sets slot.worker and slot.handle."""
        raise NotImplementedError

    def send_stop(self, slot: WorkerSlot, graceful: bool, now: float) -> None:
        raise NotImplementedError

    def send_reload(self, slot: WorkerSlot) -> None:
        raise NotImplementedError

    # -- signals -------------------------------------------------------------
    def stop(self, stop_graceful: bool) -> None:
        super().stop(stop_graceful)
        self.stop_workers(stop_graceful)

    def restart(self, stop_graceful: bool) -> None:
        super().restart(stop_graceful)
        self.stop_workers(stop_graceful)

    def reload(self) -> None:
        super().reload()
        for slot in self.slots:
            if slot.alive:
                self.send_reload(slot)

    def dump(self) -> None:
        super().dump()
        for status in self.worker_status():
            self.logger.info("Worker %(worker_id)d: %(state)s, handle %(handle)s, %(starts)d "
                             "starts, %(failures)d failures in a row", status)
        for slot in self.slots:
            if slot.alive:
                self.send_dump(slot)

    def send_dump(self, slot: WorkerSlot) -> None:
        """Asks a worker for its dump; worker types without one do nothing."""

    def apply_config(self, config: dict) -> None:
        self._timing = StartTiming.from_config(config)

    def stop_workers(self, graceful: bool) -> None:
        now = self.clock()
        for slot in self.slots:
            if slot.alive:
                slot.transition("stop")
                self.send_stop(slot, graceful, now)

    # -- the decisions -------------------------------------------------------
    def manage_workers(self, now: float) -> Optional[float]:
        """Starts the slots that are due, stops the surplus ones; returns when
        the next start is due (None: no start pending)."""
        n = self.num_workers
        while len(self.slots) < n:
            self.slots.append(WorkerSlot(len(self.slots)))
        next_due: Optional[float] = None
        for slot in self.slots:
            wanted = not self._stop and slot.worker_id < n
            if slot.state is SlotState.WAITING and not wanted:
                slot.transition("unwant")
            elif slot.state is SlotState.IDLE and wanted:
                slot.transition("want")
            elif slot.state is SlotState.RUNNING and slot.worker_id >= n:
                self.logger.info("Stopping worker %d: workers is now %d", slot.worker_id, n)
                slot.transition("stop")
                self.send_stop(slot, True, now)
            if slot.state is not SlotState.WAITING:
                continue
            due = restart_policy.earliest_start(self._timing, self.last_start, slot.spacing_draw,
                                                slot.history.died_at, slot.history.failures)
            if due <= now:
                self.launch(slot, now)
            elif next_due is None or due < next_due:
                next_due = due
        # Slots above `workers` that are idle are forgotten from the top.
        while self.slots and self.slots[-1].worker_id >= n and self.slots[-1].state in (
                SlotState.IDLE, SlotState.FAILED):
            self.slots.pop()
        return next_due

    def launch(self, slot: WorkerSlot, now: float) -> None:
        slot.transition("start")
        self.last_start = now
        try:
            self.start_worker(slot, now)
        except Exception:
            # The start failed in the parent (before_fork raised, fork failed):
            # count it as a failure so the backoff applies, and go on.
            self.logger.exception("Worker %d failed to start", slot.worker_id)
            slot.transition("exit_restart")
            slot.history.record_failed_start(now)
            return
        slot.history.record_start(now)

    def worker_exited(self, slot: WorkerSlot, description: str, exit_code: Optional[int],
                      now: float) -> None:
        """Records the end of slot's worker: logs it and decides its future."""
        stop_requested = slot.state is SlotState.STOPPING or self._stop
        restart_wanted = not self._stop and slot.worker_id < self.num_workers
        slot.worker = slot.handle = None
        delay = judge_worker_exit(self, slot.worker_id, slot.history, self._timing, description,
                                  exit_code, stop_requested, restart_wanted, now)
        if delay is None:
            slot.transition("exit_failed")
            if self.config["stop_immediately_at_unrecoverable_exit"] and not self._stop:
                self.stop(True)
        elif restart_wanted:
            slot.transition("exit_restart")
        else:
            slot.transition("exit_idle")

    def alive_or_pending(self) -> int:
        return sum(1 for s in self.slots if s.state in (
            SlotState.RUNNING, SlotState.STOPPING, SlotState.WAITING))

    def worker_status(self) -> list[dict]:
        """What each slot is doing, for logs, dumps and tools."""
        return [{"worker_id": s.worker_id, "state": s.state.value,
                 "failures": s.history.failures, "starts": s.history.starts,
                 "handle": s.handle} for s in self.slots]
