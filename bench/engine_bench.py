"""Every measurement of one engine, in a fixed order, each on its own
launch; fills ``cells`` (row key -> Cell) and ``details`` (lines for the
section under the table)."""
from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

from engines import Engine
from escalation import EscalationResult, measure_once, nominal_sequence
from http_load import http_load
from measure import (Launch, Respawn, boot_then_stop, churn_memory, churn_rate, graceful_stop,
                     orphans_after_master_kill, respawn_latencies)
from procfs import cannot_run
from provision import progress
from report import median_ms, ms, percentile
from scale import ServerIdle, boot_only, flatness, server_idle, workers_idle
from watcher import BenchError, Watcher

T = TypeVar("T")
#: per worker, for the machine-limit check before a big launch (pyse runs
#: a few threads per worker and holds a few pipes per worker in the server)
THREADS_PER_WORKER, FDS_PER_WORKER = 4, 4
#: engines whose first 256-worker boot took longer get no more boot rounds
SLOW_BOOT = 5.0
#: seconds of churn before a round's window opens (the first kills, the
#: server's first respawns)
CHURN_WARMUP = 0.5


@dataclass(frozen=True)
class Cell:
    text: str
    value: Optional[float] = None   # what a ratio divides; None: no ratio


class EngineBench:
    def __init__(self, engine: Engine, o, watcher: Watcher, tmp: Path,
                 load_tool: Optional[str]) -> None:
        self.engine, self.o, self.watcher, self.tmp = engine, o, watcher, tmp
        self.load_tool = load_tool
        self.cells: dict[str, Cell] = {}
        self.errors: list[str] = []
        self.details: list[str] = []
        self.escalation = EscalationResult()
        self.respawns: list[Respawn] = []
        self.churn_rates: list[float] = []     # starts per second, one per round
        self.worker_kb: Optional[int] = None   # a worker's private memory, once measured
        self.boots: list[float] = []            # launch -> 256 workers ready
        self.stops: list[float] = []            # TERM -> 64 workers gone

    def attempt(self, what: str, measure: Callable[[], T]) -> Optional[T]:
        try:
            return measure()
        except (BenchError, OSError) as e:
            self.errors.append(f"{self.engine.title}, {what}: {e}")
            return None

    def launch(self, workers: int, mode: str = "normal") -> Launch:
        return Launch(self.engine, self.watcher, self.tmp, workers, mode)

    def say(self, text: str) -> None:
        progress(f"{self.engine.title}: {text}")

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        """The measurements in order, each a step that every engine takes
        before the next one starts: two columns of the same engine are then
        measured a minute apart, not ten, under much the same load."""
        o = self.o
        respawns = [(f"respawn {i}", lambda i=i: self.measure_respawn(i))
                    for i in range(1, o.respawn_rounds + 1)]
        churns = [(f"churn {i}", lambda i=i: self.measure_churn(i))
                  for i in range(1, o.churn_rounds + 1)]
        sizes = [(f"{n} workers idle", lambda n=n: self.measure_size(n)) for n in o.sizes]
        return [*respawns, *churns, ("churn memory", self.measure_churn_memory), *sizes,
                ("boot and stop rounds", self.measure_rounds),
                ("orphans", self.measure_orphans), ("escalation", self.measure_escalation),
                ("HTTP load", self.measure_http)]

    # -- rows ---------------------------------------------------------------------
    def measure_respawn(self, round_number: int) -> None:
        o = self.o
        kills = -(-o.kills // o.respawn_rounds)
        self.say(f"respawn round {round_number} of {o.respawn_rounds}: {kills} kills of 4 workers")
        with self.launch(4) as run:
            respawns = self.attempt("respawn", lambda: respawn_latencies(run, kills, o.kill_gap))
        self.respawns += respawns or []
        if not self.respawns or round_number < o.respawn_rounds:
            return
        latencies = [r.latency for r in self.respawns]
        for key, p in (("respawn_p50", 50), ("respawn_p99", 99)):
            value = percentile(latencies, p)
            self.cells[key] = Cell(ms(value, 2), value)
        to_fork = [r.to_fork for r in self.respawns if r.to_fork is not None]
        start = [r.latency - r.to_fork for r in self.respawns if r.to_fork is not None]
        if to_fork:
            self.cells["respawn_fork"] = Cell(median_ms(to_fork, 2), statistics.median(to_fork))
            self.cells["respawn_start"] = Cell(median_ms(start, 2), statistics.median(start))
        self.details.append(f"respawn: {len(latencies)} kills, max {ms(max(latencies), 2)}, "
                            f"p90 {ms(percentile(latencies, 90), 2)}")

    def measure_churn(self, round_number: int) -> None:
        o = self.o
        self.say(f"churn round {round_number} of {o.churn_rounds}")
        with self.launch(8) as run:
            rate = self.attempt("churn", lambda: churn_rate(run, CHURN_WARMUP, o.churn_window))
        self.churn_rates += [rate] if rate is not None else []
        if self.churn_rates and round_number == o.churn_rounds:
            median = statistics.median(self.churn_rates)
            self.cells["churn"] = Cell(f"{median:.0f} /s ({len(self.churn_rates)})", median)
            self.details.append("churn rounds: " + ", ".join(f"{r:.0f}/s"
                                                             for r in self.churn_rates))

    def measure_churn_memory(self) -> None:
        o = self.o
        self.say(f"churn to {o.churn_starts} starts (or {o.churn_cap:g} s), server RSS")
        with self.launch(8) as run:
            result = self.attempt("churn memory", lambda: churn_memory(
                run, o.churn_starts, o.churn_cap, 10))
        if result is None:
            return
        flat = flatness(result.rss_kb)
        if flat:
            self.cells["rss_churn"] = Cell(flat)
        samples = ", ".join(f"{n}: {kb / 1024:.1f}" for n, kb in result.rss_kb)
        self.details.append(f"churn: {result.starts} starts in {result.seconds:.1f} s; "
                            f"server RSS (MB) by starts: {samples}")

    def measure_size(self, size: int) -> None:
        key = f"idle_{size}"
        reason = (self.engine.max_reason if size > self.engine.max_workers else
                  cannot_run(size, THREADS_PER_WORKER, FDS_PER_WORKER, self.worker_kb))
        if reason:
            self.cells[key] = Cell("skipped")
            self.details.append(f"{size} workers: skipped: {reason}")
            return
        self.say(f"{size} workers idle")
        with self.launch(size) as run:
            idle = self.attempt(f"{size} workers", lambda: self.idle_at(run, size))
            if idle is None:
                return
            if size == 16:
                self.worker_kb = self.fill_workers(run)
            if size == 64:
                stop = self.attempt("stop of 64", lambda: graceful_stop(run))
                self.stops += [stop] if stop is not None else []
        if size == 256:
            self.boots.append(idle.boot)
        self.cells[key] = Cell(f"{idle.server.cpu_percent:.2f} %", idle.server.cpu_percent)
        self.details.append(
            f"{size} workers: boot {ms(idle.boot)}, server idle {idle.server.cpu_percent:.3f} % "
            f"of a core and {idle.server.wakeups:.1f} wake-ups/s (median of {idle.slices} "
            f"1-s slices); loadavg then: {idle.load}")

    def measure_rounds(self) -> None:
        o = self.o
        self.more_rounds(256, self.boots, o.boot_rounds, "boot of 256", boot_only, 256 in o.sizes)
        self.more_rounds(64, self.stops, o.stop_rounds, "stop of 64",
                         boot_then_stop, 64 in o.sizes)
        for key, values in (("boot_256", self.boots), ("stop_64", self.stops)):
            if values:
                self.cells[key] = Cell(f"{median_ms(values)} ({len(values)})",
                                       statistics.median(values))

    def idle_at(self, run: Launch, size: int) -> ServerIdle:
        boot = run.wait_ready()
        return server_idle(run, boot, self.o.idle, self.o.settle)

    def fill_workers(self, run: Launch) -> Optional[int]:
        idle = self.attempt("idle workers", lambda: workers_idle(run, self.o.idle))
        if idle is None:
            return None
        c = self.cells
        c["worker_cpu"] = Cell(f"{idle.worker.cpu_percent:.3f} %", idle.worker.cpu_percent)
        c["worker_wakeups"] = Cell(f"{idle.worker.wakeups:.1f} /s", idle.worker.wakeups)
        for key, m in (("server_rss", idle.server_memory), ("worker_rss", idle.worker_memory)):
            c[key] = Cell(f"{m.rss_kb / 1024:.1f} MB ({m.uss_kb / 1024:.2f})", m.rss_kb)
        return idle.worker_memory.uss_kb

    def more_rounds(self, size: int, values: list[float], rounds: int, what: str,
                    measure: Callable[[Launch], float], measured: bool) -> None:
        """Adds launches of ``size`` workers until there are ``rounds``
        values; an engine whose boot of 256 is slow gets the one it had."""
        if not measured or not values or (size == 256 and values[0] > SLOW_BOOT):
            return
        while len(values) < rounds:
            self.say(f"{what}, round {len(values) + 1} of {rounds}")
            with self.launch(size) as run:
                value = self.attempt(what, lambda: measure(run))
            if value is None:
                return
            values.append(value)

    def measure_orphans(self) -> None:
        self.say("orphans of 8 workers")
        with self.launch(8) as run:
            orphans = self.attempt("orphans", lambda: orphans_after_master_kill(
                run, self.o.orphan_window))
        if orphans is None:
            return
        if orphans.all_gone_after is not None:
            self.cells["orphans"] = Cell(ms(orphans.all_gone_after), orphans.all_gone_after)
        else:
            self.cells["orphans"] = Cell(f"{orphans.alive_after_1s} of {orphans.workers} alive "
                                         f"after {orphans.window:g} s")

    def measure_escalation(self) -> None:
        if not self.engine.escalation:
            return
        self.say("escalation")
        for _ in range(self.o.escalation_rounds):
            with self.launch(4, "stubborn") as run:
                self.attempt("escalation", lambda: measure_once(run, self.escalation))
        r, c = self.escalation, self.cells
        if r.reactions:
            c["esc_reaction"] = Cell(median_ms(r.reactions, 2), statistics.median(r.reactions))
        for key, errors in (("esc_late", r.lateness), ("esc_kill", r.kill_lateness)):
            # Early counts as much as late: ServerEngine sends some steps
            # hundreds of ms before their deadline.
            off = [abs(e) for e in errors]
            if off:
                c[key] = Cell(f"{median_ms(off, 2)} / {ms(max(off), 1)}")
        good = sum(1 for s in r.sequences if s == nominal_sequence())
        c["esc_seq"] = Cell(f"{good} of {len(r.sequences)}")

    def measure_http(self) -> None:
        o = self.o
        if not self.engine.http or self.load_tool is None:
            return
        for key, every in (("http", None), ("http_kills", o.http_kill_every)):
            self.say(f"HTTP load ({self.load_tool}, {o.http_seconds:g} s"
                     + (f", a kill every {every * 1000:g} ms)" if every else ")"))
            result = self.attempt("HTTP load", lambda: http_load(
                self.engine, self.watcher, self.tmp, 4, o.http_seconds, every, self.load_tool))
            if result is None:
                continue
            self.cells[key] = Cell(f"{result.per_second:.0f} /s", result.per_second)
            self.cells[key + "_failed"] = Cell(f"{result.failed} of {result.requests}",
                                               result.failed)
            if every:
                self.details.append(f"HTTP with kills: {result.kills} SIGKILLs in "
                                    f"{result.seconds:.1f} s")

    def escalation_details(self) -> Optional[str]:
        r = self.escalation
        if not r.sequences:
            return None
        seqs = ", ".join(f"{s or '(none)'} ×{n}"
                         for s, n in collections.Counter(r.sequences).most_common())
        deaths = ", ".join(f"{d} ×{n}" for d, n in r.deaths.most_common()) or "none logged"
        steps = r.lateness + r.kill_lateness
        early = sum(1 for x in steps if x < -0.005)
        return (f"escalation: {seqs}; deaths in the server log: {deaths}; "
                f"steps more than 5 ms early: {early} of {len(steps)}")
