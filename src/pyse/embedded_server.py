"""``worker_type: "embedded"`` (the default): the server's main thread runs
worker 0's ``run()``, again and again until the server stops.

Signals are handled off the main thread (see pyse.in_process_server), so
they work while ``run()`` is busy, even inside a C call.  TERM calls the
worker's ``stop()`` from another thread; ``run()`` returns and the server
exits.  USR1/HUP stop the worker, reload the configuration and run a new
worker object (a fresh ``initialize()``, so a flag that ``stop()`` set does
not end the next ``run()`` at once).  USR2 reloads the configuration,
reopens the log and calls ``reload()``.  A ``run()`` that returns or raises
without being asked to is logged and run again, after the crash-loop
backoff when ``restart_backoff_base`` is set.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from pyse import lowlevel
from pyse.in_process_server import InProcessServer
from pyse.multi_worker_server import (EXIT_START_FAILED, ExitVerdict, judge_worker_exit,
                                      restart_limit_reached)
from pyse.restart_policy import RestartIntensity, SlotHistory, StartTiming, backoff_delay
from pyse.worker import Worker


def run_worker(worker: Worker, logger: Any) -> tuple[str, Optional[int]]:
    """Runs worker.run(); returns (how it ended, exit code or None).

    ``sys.exit(n)`` in run() reports exit code n, as it does in a process
    worker (e.g. one of ``unrecoverable_exit_codes``)."""
    try:
        worker.run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return f"status {code}", code
    except Exception as e:
        logger.exception("Worker %d: run() raised", worker.worker_id)
        return f"an exception ({type(e).__name__}: {e})", None
    return "status 0", 0


class EmbeddedServer(InProcessServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Guards the hand-over between the main thread (which starts runs)
        # and the server thread (which stops them).
        self._lock = threading.Lock()
        self.worker: Optional[Worker] = None
        self._restarting: Optional[Worker] = None
        self._wake = threading.Event()
        #: worker 0's starts and exits (what the backoff and status need)
        self.history = SlotHistory()
        super().__init__(*args, **kwargs)
        self.restart_intensity = RestartIntensity.from_config(self.config)

    def apply_config(self, config: dict[str, Any]) -> None:
        super().apply_config(config)
        self.restart_intensity.reconfigure(config)

    def run(self) -> None:
        self.start_control()
        server_thread = threading.Thread(target=self.serve_events, name="pyse-server",
                                         daemon=True)
        server_thread.start()
        try:
            self.run_until_stop()
        finally:
            self.stop_control()   # first: no new event after the sentinel
            self.post(None)
            server_thread.join()

    waits_for_workers = True

    def run_until_stop(self) -> None:
        history = self.history
        while True:
            worker = self.start_worker_0(history)
            if worker is None:
                if self._stop:
                    return
                continue
            with self._lock:
                # Checked under the lock that stop() takes to find the
                # worker: either this sees _stop, or stop() sees this worker.
                if self._stop:
                    return
                self.worker = worker
            self.announce_ready()
            history.record_start(lowlevel.now())
            self.reporter.workers_changed()
            description, code = run_worker(worker, self.logger)
            with self._lock:
                self.worker = None
                asked = self._stop or self._restarting is worker
            verdict, delay = judge_worker_exit(
                self, 0, history, StartTiming.from_config(self.config), self.restart_intensity,
                description, code, asked, not self._stop, lowlevel.now())
            self.reporter.workers_changed()
            if verdict is not ExitVerdict.RESTART:
                # An unrecoverable exit code or the restart intensity ends
                # the server (a stop ends it too: IDLE).
                return
            if delay > 0:
                self._wake.wait(delay)   # stop() sets it

    def start_worker_0(self, history: SlotHistory) -> Optional[Worker]:
        """A new worker object (its initialize() runs), or None when that
        failed: a crash like any other, after which this waits out the
        backoff (or the server stops, its status set)."""
        try:
            return self.create_worker(0)
        except Exception as e:
            self.logger.exception("Worker 0 failed to start")
            reason = f"{type(e).__name__}: {e}"
        now = lowlevel.now()
        history.record_failed_start(now)
        if history.starts == 0:
            self.announce_start_failure(f"worker 0 failed to start: {reason}")
            self.stop_status = EXIT_START_FAILED
            self._stop = True
        elif not self.restart_intensity.allow(now):
            restart_limit_reached(self, 0, self.restart_intensity)
            self._stop = True
        else:
            timing = StartTiming.from_config(self.config)
            delay = backoff_delay(history.failures, timing.backoff_base, timing.backoff_max)
            if delay > 0:
                self._wake.wait(delay)   # stop() sets it
        return None

    # -- signals (on the server thread) ------------------------------------
    def stop(self, stop_graceful: bool) -> None:
        super().stop(stop_graceful)
        self._wake.set()
        worker = self.current_worker()
        if worker is not None:
            self.call_in_thread(worker.stop, "worker 0 stop()")

    def restart(self, stop_graceful: bool) -> None:
        super().restart(stop_graceful)
        with self._lock:
            worker = self._restarting = self.worker
        if worker is not None:
            self.call_in_thread(worker.stop, "worker 0 stop()")

    def reload(self) -> None:
        super().reload()
        worker = self.current_worker()
        if worker is not None:
            self.call_in_thread(worker.reload, "worker 0 reload()")

    def dump(self) -> None:
        super().dump()
        worker = self.current_worker()
        if worker is not None:
            self.dump_worker(worker)

    def current_worker(self) -> Optional[Worker]:
        """The worker whose run() is running now, if any."""
        with self._lock:
            return self.worker
