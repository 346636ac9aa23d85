"""pyse beside a C floor, a Python floor, ServerEngine and gunicorn, in one run.

    python bench/run.py                 # full run (~15 min), writes bench/results.md
    python bench/run.py --quick         # a few minutes, writes bench/results-quick.md
    python bench/run.py --baseline-src OLD_TREE --pyse-src NEW_TREE

Each engine runs the same trivial worker; the bench measures respawn,
churn, idle cost at growing worker counts, boot, stop, memory, orphans,
kill escalation and HTTP load under kills, prints the environment and a
Markdown table, and writes both to the results file.  README.md says what
each number means.  What the bench needs (ServerEngine, wrk, gunicorn, a C
compiler) is installed when missing, unless --no-install.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import EngineBench  # noqa: E402
from engines import all_engines  # noqa: E402
from http_load import load_tool  # noqa: E402
from procfs import loadavg, raise_fd_limit  # noqa: E402
from provision import Provisioner, progress  # noqa: E402
from table import render  # noqa: E402
from watcher import Watcher, become_subreaper, reap_leftovers  # noqa: E402

HERE = Path(__file__).resolve().parent
KEYS = ["cfloor", "pyfloor", "serverengine", "gunicorn", "pyse-before", "pyse"]


@dataclass
class Options:
    kills: int
    respawn_rounds: int
    kill_gap: float
    churn_rounds: int
    churn_window: float
    churn_starts: int
    churn_cap: float
    sizes: list[int]
    idle: float
    settle: float
    boot_rounds: int
    stop_rounds: int
    orphan_window: float
    escalation_rounds: int
    http_seconds: float
    http_kill_every: float
    engines: list[str]
    pyse_src: Optional[Path]
    baseline_src: Optional[Path]
    install: bool
    out: Path
    command: str
    keep: bool


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--quick", action="store_true", help="fewer kills, shorter windows, no 1024 workers")
    add("--kills", type=int, help="respawn: SIGKILLs of 4 workers (200; quick 30)")
    add("--respawn-rounds", type=int, help="respawn: launches the kills are shared among (5; quick 2)")
    add("--kill-gap", type=float, default=0.15,
        help="seconds between a replacement's ready and the next kill (0.15)")
    add("--churn-rounds", type=int, help="churn: launches, each counted for one window (5; quick 2)")
    add("--churn-window", type=float, default=1.0, help="churn: seconds counted per round (1)")
    add("--churn-starts", type=int, help="churn: starts to reach, for the RSS row (5000; quick 500)")
    add("--churn-cap", type=float, help="churn: give up on the starts after this many s (60; quick 10)")
    add("--sizes", help="idle rows: worker counts (16,64,256,1024; quick 16,64,256)")
    add("--idle", type=float, help="idle: 1-s slices per size (5; quick 2)")
    add("--settle", type=float, default=1.0, help="idle: seconds after the boot before (1)")
    add("--boot-rounds", type=int, help="launches of 256 workers for the boot row (3; quick 1)")
    add("--stop-rounds", type=int, help="launches of 64 workers for the stop row (3; quick 1)")
    add("--orphan-window", type=float, help="seconds to wait for orphans after the 1 s mark "
        "(20; quick 2)")
    add("--escalation-rounds", type=int, help="(3; quick 1)")
    add("--http-seconds", type=float, help="HTTP: seconds of load per run (5; quick 2)")
    add("--http-kill-every", type=float, default=0.1, help="HTTP: seconds between kills (0.1)")
    add("--engines", default=",".join(KEYS), help="comma-separated subset of: " + ", ".join(KEYS))
    add("--pyse-src", type=Path, help="build the \"pyse\" column from this source tree "
        "(default: the pyse this Python imports)")
    add("--baseline-src", type=Path, help="add a \"pyse (before)\" column built from this tree")
    add("--no-install", action="store_true", help="skip what is missing instead of installing it")
    add("--keep", action="store_true", help="keep the run directories (logs)")
    add("--out", type=Path, help="results file (bench/results.md; quick: "
        "bench/results-quick.md, so a quick run never replaces the full results)")
    a = p.parse_args(argv)

    def pick(given, full, quick):
        return given if given is not None else (quick if a.quick else full)
    engines = a.engines.split(",")
    unknown = set(engines) - set(KEYS)
    if unknown:
        p.error(f"--engines: unknown {', '.join(sorted(unknown))}")
    try:
        sizes = [int(x) for x in pick(a.sizes, "16,64,256,1024", "16,64,256").split(",")]
    except ValueError:
        p.error("--sizes: expected comma-separated worker counts, e.g. 16,64,256")
    if min(sizes) < 1 or a.kill_gap < 0 or a.http_kill_every <= 0 or a.churn_window <= 0:
        p.error("--sizes, --kill-gap, --http-kill-every and --churn-window must be positive")
    for name in ("respawn_rounds", "churn_rounds", "kills"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("pyse_src", "baseline_src"):
        tree = getattr(a, name)
        if tree is not None and not (tree / "src" / "pyse").is_dir():
            p.error(f"--{name.replace('_', '-')}: {tree} is not a pyse source tree "
                    "(no src/pyse)")
    return Options(
        pick(a.kills, 200, 30), pick(a.respawn_rounds, 5, 2), a.kill_gap,
        pick(a.churn_rounds, 5, 2), a.churn_window,
        pick(a.churn_starts, 5000, 500), pick(a.churn_cap, 60.0, 10.0), sizes,
        pick(a.idle, 5.0, 2.0), a.settle, pick(a.boot_rounds, 3, 1), pick(a.stop_rounds, 3, 1),
        pick(a.orphan_window, 20.0, 2.0), pick(a.escalation_rounds, 3, 1),
        pick(a.http_seconds, 5.0, 2.0), a.http_kill_every, engines,
        a.pyse_src and a.pyse_src.resolve(), a.baseline_src and a.baseline_src.resolve(),
        not a.no_install, a.out or HERE / ("results-quick.md" if a.quick else "results.md"),
        "python bench/run.py" + "".join(f" {x}" for x in argv), a.keep)


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    started, started_load = time.monotonic(), loadavg()
    become_subreaper()
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="pyse-bench-"))
    watcher = Watcher(tmp)
    provisioner = Provisioner(o.install)
    engines = [e for e in all_engines(o.pyse_src, o.baseline_src) if e.key in o.engines]
    tool = None
    if any(e.http for e in engines):
        for package in ("wrk", "apache2-utils"):
            provisioner.apt(package)
        tool = load_tool()
    benches: dict[str, EngineBench] = {}
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    loads: list[str] = []
    try:
        for engine in engines:
            reason = engine.prepare(provisioner, tmp)
            if reason:
                skipped[engine.title] = reason
                progress(f"{engine.title}: skipped: {reason}")
                continue
            versions[engine.title] = engine.version()
            benches[engine.title] = EngineBench(engine, o, watcher, tmp, tool)
        steps = [b.steps() for b in benches.values()]
        for i, (name, _) in enumerate(steps[0] if steps else []):
            loads.append(f"{name} {loadavg().split()[0]}")
            for engine_steps in steps:
                engine_steps[i][1]()
    finally:
        watcher.close()
        left = reap_leftovers(5.0)
        if left:
            print(f"warning: processes still running: {left}", file=sys.stderr)
    if tool is None and any(e.http for e in engines):
        skipped["HTTP rows"] = "no load generator: " + "; ".join(provisioner.failed.values())
    elif tool is not None:
        versions["load generator"] = (tool if tool == "wrk" else
                                      f"ab (wrk missing: {provisioner.failed.get('wrk', '?')})")
    text = render(o, engines, benches, skipped, versions, started_load, loads,
                  time.monotonic() - started)
    print(text)
    o.out.write_text(text)
    if o.keep:
        progress(f"run directories kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(b.errors for b in benches.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
