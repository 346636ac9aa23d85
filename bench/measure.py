"""The measurements, each on a freshly launched engine (``Launch``).

Times of worker events are the workers' own CLOCK_MONOTONIC readings; times
of deaths are when the bench's pidfd poll returned.  Every launch runs in a
new session, and leaving its ``with`` block SIGKILLs its process group and
every worker it saw, then reaps them.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engines import Engine
from watcher import BenchError, Event, Watcher, now, read_cpu, reap_children

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CLOCK_HZ = os.sysconf("SC_CLK_TCK")


class Launch:
    counter = 0

    def __init__(self, engine: Engine, watcher: Watcher, tmp: Path, workers: int,
                 mode: str = "normal") -> None:
        Launch.counter += 1
        self.engine, self.watcher, self.workers = engine, watcher, workers
        self.dir = tmp / f"{engine.key}-{Launch.counter}"
        self.dir.mkdir()
        cmd, extra_env = engine.command(self.dir, workers, mode)
        env = dict(os.environ, BENCH_EVENTS=str(watcher.path), **extra_env)
        self.output = open(self.dir / "output.log", "wb")
        self.mark = len(watcher.events)
        self.t_launch = now()
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        watcher.watch(self.proc.pid)

    def __enter__(self) -> "Launch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill_everything()

    # -- what the events say ----------------------------------------------------
    def events(self, kind: str) -> list[Event]:
        return self.watcher.since(self.mark, kind)

    def worker_pids(self) -> list[int]:
        """Every worker that reported ready, in order."""
        return list(dict.fromkeys(e.pid for e in self.events("ready")))

    def gone_at(self, pid: int) -> Optional[float]:
        """When ``pid`` died, counting only deaths after its own ready line: a
        recycled pid may have died once already as some other process."""
        events = self.watcher.events
        start = self.mark
        if pid != self.proc.pid:
            start = next((i for i in range(self.mark, len(events))
                          if events[i].kind == "ready" and events[i].pid == pid), len(events))
        return next((e.t for e in events[start:] if e.kind == "gone" and e.pid == pid), None)

    def live_workers(self) -> list[int]:
        return [p for p in self.worker_pids() if self.gone_at(p) is None]

    def server_log(self) -> str:
        log = self.dir / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def describe(self) -> str:
        tail = self.server_log().splitlines()[-5:]
        return f"{self.engine.title} (logs in {self.dir}): " + " | ".join(tail)

    # -- waiting ---------------------------------------------------------------
    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Waits for the first ``workers`` ready workers; returns the time
        from launch to the last of them (the cold start)."""
        n = self.workers

        def ready() -> Optional[list[Event]]:
            firsts = {}
            for e in self.events("ready"):
                firsts.setdefault(e.pid, e)
            if self.gone_at(self.proc.pid) is not None:
                raise BenchError(f"the master exited during start: {self.describe()}")
            return list(firsts.values()) if len(firsts) >= n else None
        events = self.watcher.wait_for(ready, timeout, f"{n} ready workers of {self.engine.title}")
        return max(e.t for e in events[:n]) - self.t_launch

    def wait_gone(self, pids: list[int], timeout: float, what: str) -> dict[int, float]:
        def all_gone() -> Optional[dict[int, float]]:
            times = {p: self.gone_at(p) for p in pids}
            return times if all(t is not None for t in times.values()) else None  # type: ignore[misc]
        try:
            return self.watcher.wait_for(all_gone, timeout, what)
        except BenchError as e:
            alive = [p for p in pids if self.gone_at(p) is None]
            roles = ", ".join(("master " if p == self.proc.pid else "worker ") + str(p)
                              for p in alive)
            raise BenchError(f"{e}; still alive: {roles}; {self.describe()}") from None

    def kill_everything(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty: everything already exited
        for pid in self.worker_pids():
            self.watcher.kill(pid, signal.SIGKILL)  # one that left the group
        self.proc.wait()
        try:
            self.wait_gone(self.worker_pids(), 10.0, "the SIGKILLed workers")
        except BenchError as e:
            # Cleaning up must not hide the measurement's own outcome.
            print(f"warning: {e}", file=sys.stderr)
        finally:
            reap_children()
            self.output.close()


# -- the measurements ------------------------------------------------------------
def graceful_stop(run: Launch) -> float:
    """TERM to the master; time until the master and every worker are gone."""
    pids = [run.proc.pid, *run.live_workers()]
    t0 = now()
    run.proc.send_signal(signal.SIGTERM)
    times = run.wait_gone(pids, STOP_TIMEOUT, f"{run.engine.title} to stop")
    return max(times.values()) - t0


@dataclass
class Idle:
    master_cpu_ms: float      # per 10 s, schedstat
    master_tick_ms: float     # per 10 s, utime+stime
    master_wakeups: float     # context switches per 10 s
    workers_cpu_ms: float     # all workers together, per 10 s


def idle_cpu(run: Launch, seconds: float, settle: float = 0.5) -> Idle:
    """CPU the master (and, beside it, the workers) use while nothing happens.
    ``settle`` lets start-up work (log flushes, a last fork) finish first."""
    run.watcher.drain_until(now() + settle)
    workers = run.live_workers()
    master_before = read_cpu(run.proc.pid)
    workers_before = [read_cpu(p) for p in workers]
    t0 = now()
    run.watcher.drain_until(t0 + seconds)
    master = read_cpu(run.proc.pid) - master_before
    workers_ns = sum((read_cpu(p) - b).cpu_ns for p, b in zip(workers, workers_before))
    scale = 10.0 / (now() - t0)
    return Idle(master.cpu_ns / 1e6 * scale, master.ticks * 1000 / CLOCK_HZ * scale,
                master.switches * scale, workers_ns / 1e6 * scale)



def respawn_latencies(run: Launch, kills: int, gap: float) -> list["Respawn"]:
    """SIGKILL a worker, time until its replacement reports ready; again,
    ``gap`` seconds after the replacement is ready (gunicorn's master sleeps
    up to 100 ms after each fork: a kill back-to-back with a respawn would
    time that sleep, not the reaction to a death)."""
    live = run.live_workers()
    watcher = run.watcher
    latencies: list[Respawn] = []
    for i in range(kills):
        if latencies:
            watcher.drain_until(now() + gap)
        slot = i % len(live)
        mark = len(watcher.events)
        t0 = now()
        if not watcher.kill(live[slot], signal.SIGKILL):
            raise BenchError(f"worker {live[slot]} was gone before the kill: {run.describe()}")
        replacement = watcher.wait_for(
            lambda: next((e for e in watcher.events[mark:] if e.kind == "ready"), None),
            10.0, f"the replacement of a killed {run.engine.title} worker (kill {i + 1})")
        fork = next((e for e in watcher.events[mark:] if e.kind == "fork"), None)
        latencies.append(Respawn(replacement.t - t0, fork.t - t0 if fork else None))
        live[slot] = replacement.pid
    return latencies


@dataclass(frozen=True)
class Respawn:
    latency: float            # kill -> replacement ready
    to_fork: Optional[float]  # kill -> the master's before_fork hook


@dataclass
class Orphans:
    workers: int
    alive_after_1s: int
    all_gone_after: Optional[float]   # None: still alive at the end of the window
    window: float


def orphans_after_master_kill(run: Launch, window: float) -> Orphans:
    """SIGKILL the master; count live workers 1 s later; wait up to
    ``window`` more seconds for the rest."""
    run.wait_ready()
    workers = run.live_workers()
    t0 = now()
    run.proc.kill()
    run.watcher.drain_until(t0 + 1.0)
    alive = sum(1 for p in workers if (run.gone_at(p) or float("inf")) > t0 + 1.0)
    try:
        times = run.wait_gone(workers, window, "orphans to exit")
        gone_after: Optional[float] = max(times.values()) - t0
    except BenchError:
        gone_after = None
    return Orphans(len(workers), alive, gone_after, 1.0 + window)
