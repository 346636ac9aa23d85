"""Measurements on servers of many workers: the idle cost of the server as
the number of workers grows, the idle cost of one worker, memory, boot.

Idle CPU is the on-CPU time of every thread of the server from
/proc/PID/task/*/schedstat (nanoseconds), taken in 1-second slices; the
row is the median slice, so a burst of another program's load on the shared
machine moves one slice, not the figure.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from measure import Launch
from procfs import CpuReading, Memory, loadavg, read_cpu, read_memory
from watcher import now


@dataclass(frozen=True)
class Rate:
    cpu_percent: float     # % of one core
    wakeups: float         # context switches per second, every thread


@dataclass
class ServerIdle:
    workers: int
    boot: float            # launch -> all workers ready, seconds
    server: Rate           # median of the 1-s slices
    slices: int
    load: str              # /proc/loadavg when the window ended


def rate(delta: CpuReading, seconds: float) -> Rate:
    return Rate(delta.cpu_ns / 1e9 / seconds * 100, delta.switches / seconds)


def server_idle(run: Launch, boot: float, seconds: float, settle: float) -> ServerIdle:
    """Lets start-up work (log flushes, the last forks' bookkeeping) finish
    for ``settle`` s, then reads the server's CPU every second."""
    watcher = run.watcher
    watcher.drain_until(now() + settle)
    rates = []
    before, t_before = read_cpu(run.proc.pid), now()
    for _ in range(max(1, round(seconds))):
        watcher.drain_until(t_before + 1.0)
        after, t_after = read_cpu(run.proc.pid), now()
        rates.append(rate(after - before, t_after - t_before))
        before, t_before = after, t_after
    median = Rate(statistics.median(r.cpu_percent for r in rates),
                  statistics.median(r.wakeups for r in rates))
    return ServerIdle(run.workers, boot, median, len(rates), loadavg())


@dataclass
class WorkersIdle:
    worker: Rate            # the median worker over the window
    worker_memory: Memory   # the median worker (by private size)
    server_memory: Memory


def workers_idle(run: Launch, seconds: float) -> WorkersIdle:
    """CPU and wake-ups of each idle worker over ``seconds`` (the heartbeat
    interval is 1 s, so every beat is in it), and memory."""
    workers = run.live_workers()
    before = {pid: read_cpu(pid) for pid in workers}
    t0 = now()
    run.watcher.drain_until(t0 + seconds)
    took = now() - t0
    rates = [rate(read_cpu(pid) - before[pid], took) for pid in workers]
    memories = sorted((read_memory(pid) for pid in workers), key=lambda m: m.uss_kb)
    return WorkersIdle(Rate(statistics.median(r.cpu_percent for r in rates),
                            statistics.median(r.wakeups for r in rates)),
                       memories[len(memories) // 2], read_memory(run.proc.pid))


def boot_only(run: Launch) -> float:
    return run.wait_ready()


def flatness(samples: list[tuple[int, int]]) -> Optional[str]:
    """'A → B → C MB (0, N, M starts)': before the churn, after its first
    tenth (allocators and caches fill in the first respawns), at its end."""
    if len(samples) < 3:
        return None
    picked = [samples[0], samples[1], samples[-1]]
    sizes = " → ".join(f"{kb / 1024:.1f}" for _, kb in picked)
    return f"{sizes} MB ({', '.join(str(n) for n, _ in picked)} starts)"
