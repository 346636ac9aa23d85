"""pyse vs ServerEngine vs gunicorn, side by side, in one run.

    python bench/run.py            # full run (a few minutes), writes bench/results.md
    python bench/run.py --quick    # < 1 min, writes bench/results-quick.md

Each engine runs the same trivial worker with the same number of workers;
the bench measures respawn latency, cold start, graceful stop, idle CPU,
orphans after the master's SIGKILL and (pyse and ServerEngine) kill
escalation accuracy, prints the environment and a Markdown table, and writes
both to the results file.  README.md says what each number means.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from engines import ENGINES, ESCALATION, Engine  # noqa: E402
from escalation import EscalationResult, measure_once, nominal_sequence  # noqa: E402
from measure import (Idle, Launch, Orphans, Respawn, graceful_stop, idle_cpu,  # noqa: E402
                     orphans_after_master_kill, respawn_latencies)
from report import median_ms, ms, percentile  # noqa: E402
from watcher import BenchError, Watcher, become_subreaper, list_children  # noqa: E402

T = TypeVar("T")
HERE = Path(__file__).resolve().parent


@dataclass
class Options:
    workers: int
    kills: int
    kill_gap: float
    rounds: int
    idle: float
    orphan_window: float
    escalation_rounds: int
    engines: list[str]
    out: Path
    command: str
    keep: bool


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer kills and rounds (< 1 min)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kills", type=int, help="workers to SIGKILL (default 200; quick 20)")
    p.add_argument("--rounds", type=int, help="cold start / graceful stop rounds (5; quick 2)")
    p.add_argument("--kill-gap", type=float, default=0.15,
                   help="seconds between a replacement's ready and the next kill (0.15)")
    p.add_argument("--idle", type=float, help="idle window in seconds (10; quick 3)")
    p.add_argument("--orphan-window", type=float,
                   help="seconds to wait for orphans after the 1 s mark (20; quick 2)")
    p.add_argument("--escalation-rounds", type=int, help="(3; quick 1)")
    p.add_argument("--engines", default=",".join(e.key for e in ENGINES),
                   help="comma-separated subset of: " + ", ".join(e.key for e in ENGINES))
    p.add_argument("--keep", action="store_true", help="keep the run directories (logs)")
    p.add_argument("--out", type=Path, help="results file (bench/results.md; quick: "
                   "bench/results-quick.md, so a quick run never replaces the full results)")
    a = p.parse_args(argv)
    q = a.quick
    pick = lambda given, full, quick: given if given is not None else (quick if q else full)  # noqa: E731
    engines = a.engines.split(",")
    unknown = set(engines) - {e.key for e in ENGINES}
    if unknown:
        p.error(f"--engines: unknown {', '.join(sorted(unknown))}")
    if a.workers < 1:
        p.error("--workers must be at least 1")
    if a.kill_gap < 0:
        p.error("--kill-gap must not be negative")
    return Options(a.workers, pick(a.kills, 200, 20), a.kill_gap, pick(a.rounds, 5, 2), pick(a.idle, 10.0, 3.0),
                   pick(a.orphan_window, 20.0, 2.0), pick(a.escalation_rounds, 3, 1), engines,
                   a.out or HERE / ("results-quick.md" if q else "results.md"),
                   "python bench/run.py" + ("".join(f" {x}" for x in argv)), a.keep)


def rows(o: Options) -> list[tuple[str, str]]:
    n = o.workers
    return [
        ("respawn_median", f"respawn latency, median ({o.kills} SIGKILLs)"),
        ("respawn_p90", "respawn latency, p90"),
        ("respawn_p99", "respawn latency, p99"),
        ("respawn_max", "respawn latency, max"),
        ("respawn_fork", "… of which kill → master's before_fork hook, median"),
        ("respawn_start", "… and before_fork → new worker ready, median"),
        ("cold", f"cold start: launch → {n} workers ready (median of {o.rounds})"),
        ("stop", f"graceful stop: TERM → whole tree gone (median of {o.rounds})"),
        ("idle_cpu", "master idle CPU per 10 s (schedstat)"),
        ("idle_ticks", "master idle CPU per 10 s (utime+stime, 10 ms ticks)"),
        ("idle_wakeups", "master idle wakeups per 10 s (context switches)"),
        ("idle_workers", f"idle CPU per 10 s of all {n} workers"),
        ("orphans", f"workers alive 1 s after master SIGKILL (of {n})"),
        ("orphans_gone", "… all workers gone after"),
        ("esc_reaction", "escalation: master TERM → worker's 1st TERM, median"),
        ("esc_late", "escalation: TERM/QUIT off deadline (early or late), median / max"),
        ("esc_kill", "escalation: KILL off deadline (early or late), median / max"),
        ("esc_seq", f"escalation: workers that got {nominal_sequence()} as configured"),
    ]


class EngineBench:
    """All measurements of one engine; fills ``cells`` (row key -> text)."""

    def __init__(self, engine: Engine, o: Options, watcher: Watcher, tmp: Path) -> None:
        self.engine, self.o, self.watcher, self.tmp = engine, o, watcher, tmp
        self.cells: dict[str, str] = {}
        self.errors: list[str] = []
        self.sequences: collections.Counter[str] = collections.Counter()
        self.deaths: collections.Counter[str] = collections.Counter()
        self.early_late: list[float] = []
        self.load: list[float] = []   # 1-minute load average at start and end

    def attempt(self, what: str, measure: Callable[[], T]) -> Optional[T]:
        try:
            return measure()
        except BenchError as e:
            self.errors.append(f"{self.engine.title}, {what}: {e}")
            return None

    def launch(self, mode: str = "normal") -> Launch:
        return Launch(self.engine, self.watcher, self.tmp, self.o.workers, mode)

    def run(self) -> None:
        # Other work on the machine shows in the tails: say how busy it was.
        self.load.append(os.getloadavg()[0])
        try:
            self.measure_all()
        finally:
            self.load.append(os.getloadavg()[0])

    def measure_all(self) -> None:
        self.lifecycle()
        progress(f"{self.engine.title}: orphans")
        with self.launch() as run:
            orphans = self.attempt("orphans", lambda: orphans_after_master_kill(
                run, self.o.orphan_window))
        self.fill_orphans(orphans)
        if self.engine.escalation:
            progress(f"{self.engine.title}: escalation")
            result = EscalationResult()
            for _ in range(self.o.escalation_rounds):
                with self.launch("stubborn") as run:
                    self.attempt("escalation", lambda: measure_once(run, result))
            self.fill_escalation(result)
        else:
            for key in ("esc_reaction", "esc_late", "esc_kill", "esc_seq"):
                self.cells[key] = "n/a"

    def lifecycle(self) -> None:
        """Cold start and graceful stop every round; idle CPU and respawns
        in the first round, between the two."""
        colds, stops = [], []
        idle: Optional[Idle] = None
        respawns: Optional[list[Respawn]] = None
        for r in range(self.o.rounds):
            progress(f"{self.engine.title}: round {r + 1} of {self.o.rounds}")
            with self.launch() as run:
                cold = self.attempt("cold start", run.wait_ready)
                if cold is None:
                    continue
                colds.append(cold)
                if r == 0:
                    idle = self.attempt("idle CPU", lambda: idle_cpu(run, self.o.idle))
                    progress(f"{self.engine.title}: {self.o.kills} kills")
                    respawns = self.attempt("respawn", lambda: respawn_latencies(
                        run, self.o.kills, self.o.kill_gap))
                stop = self.attempt("graceful stop", lambda: graceful_stop(run))
                if stop is not None:
                    stops.append(stop)
        c = self.cells
        if respawns:
            latencies = [r.latency for r in respawns]
            c["respawn_median"] = median_ms(latencies, 2)
            for key, p in (("respawn_p90", 90), ("respawn_p99", 99), ("respawn_max", 100)):
                c[key] = ms(percentile(latencies, p), 2)
            to_fork = [r.to_fork for r in respawns if r.to_fork is not None]
            start = [r.latency - r.to_fork for r in respawns if r.to_fork is not None]
            c["respawn_fork"], c["respawn_start"] = median_ms(to_fork, 2), median_ms(start, 2)
        c["cold"], c["stop"] = median_ms(colds), median_ms(stops)
        if idle is not None:
            c["idle_cpu"] = f"{idle.master_cpu_ms:.2f} ms"
            c["idle_ticks"] = f"{idle.master_tick_ms:.0f} ms"
            c["idle_wakeups"] = f"{idle.master_wakeups:.0f}"
            c["idle_workers"] = f"{idle.workers_cpu_ms:.1f} ms"

    def fill_orphans(self, orphans: Optional[Orphans]) -> None:
        if orphans is None:
            return
        self.cells["orphans"] = f"{orphans.alive_after_1s}"
        self.cells["orphans_gone"] = (ms(orphans.all_gone_after) if orphans.all_gone_after is not None
                                      else f"alive after {orphans.window:g} s")

    def fill_escalation(self, r: EscalationResult) -> None:
        c = self.cells
        c["esc_reaction"] = median_ms(r.reactions, 2)
        for key, errors in (("esc_late", r.lateness), ("esc_kill", r.kill_lateness)):
            # Early counts as much as late: ServerEngine sends some steps
            # hundreds of ms before their deadline.
            off = [abs(e) for e in errors]
            if off:
                c[key] = f"{median_ms(off, 2)} / {ms(max(off), 1)}"
        good = sum(1 for s in r.sequences if s == nominal_sequence())
        c["esc_seq"] = f"{good} of {len(r.sequences)}"
        self.sequences.update(r.sequences)
        self.deaths.update(r.deaths)
        self.early_late = r.lateness + r.kill_lateness


def escalation_details(benches: list[EngineBench]) -> list[str]:
    out = []
    for b in benches:
        if not b.sequences:
            continue
        seqs = ", ".join(f"{s or '(none)'} ×{n}" for s, n in b.sequences.most_common())
        deaths = ", ".join(f"{d} ×{n}" for d, n in b.deaths.most_common()) or "none logged"
        early = sum(1 for x in b.early_late if x < -0.005)
        out.append(f"- {b.engine.title}: {seqs}; deaths in the server log: {deaths}; "
                   f"steps more than 5 ms early: {early} of {len(b.early_late)}")
    if not out:
        return []
    return ["", "## Escalation details (T TERM, Q QUIT, K death seen by pidfd)", ""] + out


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    started = time.monotonic()
    become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="pyse-bench-"))
    watcher = Watcher(tmp)
    engines = [e for e in ENGINES if e.key in o.engines]
    benches, skipped, versions = [], {}, {}
    try:
        for engine in engines:
            reason = engine.skip_reason()
            if reason:
                skipped[engine.title] = reason
                progress(f"{engine.title}: {reason}")
                continue
            versions[engine.title] = engine.version()
            bench = EngineBench(engine, o, watcher, tmp)
            bench.run()
            benches.append(bench)
    finally:
        watcher.close()
        left = list_children()
        if left:
            print(f"warning: processes still running: {left}", file=sys.stderr)
    text = render(o, engines, benches, skipped, versions, time.monotonic() - started)
    print(text)
    o.out.write_text(text)
    if o.keep:
        progress(f"run directories kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(b.errors for b in benches) else 0


def render(o: Options, engines: list[Engine], benches: list[EngineBench], skipped: dict[str, str],
           versions: dict[str, str], took: float) -> str:
    by_title = {b.engine.title: b for b in benches}
    table_rows = []
    for i, (key, label) in enumerate(rows(o)):
        row = [label]
        for e in engines:
            if e.title in skipped:
                row.append(skipped[e.title] if i == 0 else "–")
            else:
                row.append(by_title[e.title].cells.get(key, "error"))
        table_rows.append(row)
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    out = ["# pyse vs ServerEngine vs gunicorn", "",
           f"Produced by `{o.command}` on {when} (took {took:.0f} s).", ""]
    out += report.table(["measure"] + [e.title for e in engines], table_rows)
    out += ["", "What each row means and how it is measured: bench/README.md."]
    out += ["", "## Settings", "",
            f"- {o.workers} workers per engine; {o.kills} SIGKILLs, one worker at a time, "
            f"{o.kill_gap * 1000:g} ms after the previous replacement was ready; "
            f"{o.rounds} launch/stop rounds; idle window {o.idle:g} s; orphans watched "
            f"{1 + o.orphan_window:g} s; {o.escalation_rounds} escalation round(s)",
            "- pyse and ServerEngine: the same JSON configuration, `worker_type: process`, "
            "defaults otherwise (heartbeat 1 s, heartbeat timeout 180 s, no start delay), "
            "log to a file at level info",
            "- gunicorn: sync workers, `preload_app`, unix socket, control socket off, "
            "defaults otherwise (timeout 30 s, graceful timeout 30 s), log at level info",
            "- escalation (stubborn workers): " + ", ".join(f"`{k}` {v:g}" for k, v in
                                                          ESCALATION.items()),
            "", "## Environment", ""]
    out += report.environment(versions)
    out.append("- 1-minute load average at the start / end of each engine's measurements: "
               + ", ".join(f"{b.engine.title} {b.load[0]:.2f} / {b.load[-1]:.2f}" for b in benches))
    out += escalation_details(benches)
    errors = [e for b in benches for e in b.errors]
    if errors:
        out += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
