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
from pyse.restart_policy import RestartIntensity, SlotHistory, StartTiming
from pyse.server import Server
from pyse.state_table import next_state


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


@dataclass
class WorkerSlot:
    worker_id: int
    state: SlotState = SlotState.WAITING
    worker: Any = None          # the Worker object of the current run
    handle: Any = None          # the subclass's handle: a pid, a thread
    history: SlotHistory = field(default_factory=SlotHistory)
    spacing_draw: float = field(default_factory=random.random)

    def transition(self, event: str) -> None:
        self.state = next_state(TRANSITIONS, self.state, event, f"worker {self.worker_id}")
        if self.state is SlotState.WAITING:
            self.spacing_draw = random.random()

    @property
    def alive(self) -> bool:
        return self.state in (SlotState.RUNNING, SlotState.STOPPING)


#: the exit status of a server stopped by the restart intensity limit:
#: EX_TEMPFAIL, "try again later", for what runs the server
EXIT_RESTART_LIMIT = 75


def restart_limit_reached(server: Server, worker_id: int, intensity: RestartIntensity) -> None:
    """Says, once and clearly, why the server stops, and sets its status
    (the caller stops it)."""
    server.stop_status = EXIT_RESTART_LIMIT
    server.logger.error("Worker %d would be the %s restart within %g s (restart_max_count is "
                        "%d): stopping the server with exit status %d", worker_id,
                        _ordinal(intensity.max_count + 1), intensity.window, intensity.max_count,
                        EXIT_RESTART_LIMIT)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class ExitVerdict(enum.Enum):
    RESTART = "restart"              # start the slot again after the delay
    IDLE = "idle"                    # not wanted any more (stopping, scaled down)
    UNRECOVERABLE = "unrecoverable"  # its exit code says: never again
    GIVE_UP = "give up"              # the restart intensity is exceeded


def judge_worker_exit(server: Server, worker_id: int, history: SlotHistory, timing: StartTiming,
                      intensity: RestartIntensity, description: str, exit_code: Optional[int],
                      stop_requested: bool, restart_wanted: bool,
                      now: float) -> tuple[ExitVerdict, float]:
    """What every server with worker slots does when a worker ends: logs it
    (an unexpected end at warning), counts it in the slot's history, and
    decides the slot's future: (verdict, backoff before its next start).

    An exit code in ``unrecoverable_exit_codes`` makes it the server's exit
    status; an unexpected exit beyond the restart intensity makes the
    server's exit status :data:`EXIT_RESTART_LIMIT` (the caller stops the
    server)."""
    server.logger.log(logging.INFO if stop_requested else logging.WARNING,
                      "Worker %d finished%s with %s", worker_id,
                      "" if stop_requested else " unexpectedly", description)
    delay = history.record_exit(timing, now, stop_requested)
    history.last_exit = (description, exit_code, now)
    if exit_code is not None and exit_code in server.config["unrecoverable_exit_codes"]:
        server.stop_status = exit_code
        server.logger.error("Worker %d exited with unrecoverable code %d: not restarting it",
                            worker_id, exit_code)
        return ExitVerdict.UNRECOVERABLE, 0.0
    if not restart_wanted:
        return ExitVerdict.IDLE, 0.0
    if not stop_requested and not intensity.allow(now):
        restart_limit_reached(server, worker_id, intensity)
        return ExitVerdict.GIVE_UP, 0.0
    if delay > 0:
        server.logger.warning("Worker %d failed %d times in a row: restarting it in %.3g s",
                              worker_id, history.failures, delay)
    return ExitVerdict.RESTART, delay


#: the exit status of a server whose first workers could not start (a
#: daemonizing launcher itself exits with daemonize_error_exit_code);
#: gunicorn's "worker failed to boot" is 3 too
EXIT_START_FAILED = 3


class MultiWorkerServer(Server):
    waits_for_workers = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots: list[WorkerSlot] = []
        self.last_start: Optional[float] = None
        #: slots of the first round whose worker is not up yet (None once
        #: the server announced that it is up)
        self._first_round: Optional[set[int]] = None
        self._first_round_started = False
        super().__init__(*args, **kwargs)
        self._timing = StartTiming.from_config(self.config)
        self.restart_intensity = RestartIntensity.from_config(self.config)

    @property
    def num_workers(self) -> int:
        return int(self.config["workers"])

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

    def apply_config(self, config: dict[str, Any]) -> None:
        self._timing = StartTiming.from_config(config)
        self.restart_intensity.reconfigure(config)

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
        if not self._first_round_started:
            self._first_round_started = True
            self._first_round = set(range(n))
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
            due = self.start_due(slot)
            if due <= now:
                self.launch(slot, now)
                if slot.state is not SlotState.WAITING:
                    continue
                # The start failed: its retry is a deadline like any other
                # (nothing else may ever wake this loop).
                due = self.start_due(slot)
            if next_due is None or due < next_due:
                next_due = due
        # Slots above `workers` that are idle are forgotten from the top.
        while self.slots and self.slots[-1].worker_id >= n and self.slots[-1].state in (
                SlotState.IDLE, SlotState.FAILED):
            self.slots.pop()
        return next_due

    def start_due(self, slot: WorkerSlot) -> float:
        return restart_policy.earliest_start(self._timing, self.last_start, slot.spacing_draw,
                                             slot.history.died_at, slot.history.failures)

    def launch(self, slot: WorkerSlot, now: float) -> None:
        slot.transition("start")
        self.last_start = now
        try:
            self.start_worker(slot, now)
        except Exception as e:
            # The start failed in the parent (initialize() or before_fork()
            # raised, fork failed): a crash like any other, so the backoff
            # applies, and go on.
            self.logger.exception("Worker %d failed to start", slot.worker_id)
            slot.transition("exit_restart")
            slot.history.record_failed_start(now)
            if not self.first_start_failed(slot, f"{type(e).__name__}: {e}") \
                    and not self.restart_intensity.allow(now):
                restart_limit_reached(self, slot.worker_id, self.restart_intensity)
                self.stop(True)
            return
        slot.history.record_start(now)

    # -- the first round: when the server is up --------------------------------
    def worker_up(self, slot: WorkerSlot) -> None:
        """slot's worker runs (subclasses say when: a process worker's first
        heartbeat, a thread's start)."""
        pending = self._first_round
        if pending is None:
            return
        pending.discard(slot.worker_id)
        if not pending:
            self._first_round = None
            self.announce_ready()

    def first_start_failed(self, slot: WorkerSlot, reason: str) -> bool:
        """slot's worker could not start, or ended before it was up.  In the
        first round that fails the server's start: True, and it stops."""
        if self._first_round is None or slot.worker_id not in self._first_round:
            return False
        self.announce_start_failure(f"worker {slot.worker_id} failed to start: {reason}")
        self._first_round = None
        self.stop_status = EXIT_START_FAILED
        self.stop(True)
        return True

    def worker_exited(self, slot: WorkerSlot, description: str, exit_code: Optional[int],
                      now: float) -> None:
        """Records the end of slot's worker: logs it and decides its future."""
        stop_requested = slot.state is SlotState.STOPPING or self._stop
        restart_wanted = not self._stop and slot.worker_id < self.num_workers
        slot.worker = slot.handle = None
        # A worker that exits by itself before it was up failed to start; one
        # killed by a signal then (by someone else, the OOM killer...) is a
        # crash like any other.
        if not stop_requested and exit_code is not None and self.first_start_failed(
                slot, f"it ended with {description} before it was up"):
            slot.history.record_exit(self._timing, now, True)
            slot.transition("exit_idle")
            return
        verdict, _ = judge_worker_exit(self, slot.worker_id, slot.history, self._timing,
                                       self.restart_intensity, description, exit_code,
                                       stop_requested, restart_wanted, now)
        if verdict is ExitVerdict.UNRECOVERABLE:
            slot.transition("exit_failed")
            if self.config["stop_immediately_at_unrecoverable_exit"] and not self._stop:
                self.stop(True)
        elif verdict is ExitVerdict.RESTART:
            slot.transition("exit_restart")
        else:
            slot.transition("exit_idle")
            if verdict is ExitVerdict.GIVE_UP:
                self.stop(True)

    def alive_or_pending(self) -> int:
        return sum(1 for s in self.slots if s.state in (
            SlotState.RUNNING, SlotState.STOPPING, SlotState.WAITING))

    def worker_status(self) -> list[dict[str, Any]]:
        """What each slot is doing, for logs, dumps and tools."""
        return [{"worker_id": s.worker_id, "state": s.state.value,
                 "failures": s.history.failures, "starts": s.history.starts,
                 "handle": s.handle} for s in self.slots]
