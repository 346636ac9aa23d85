"""The rows of the table, the ratio columns, and the whole results text."""
from __future__ import annotations

import time
from typing import Optional

import report
from engine_bench import Cell, EngineBench
from engines import ESCALATION, Engine
from escalation import nominal_sequence
from procfs import loadavg

PYTHON_FLOOR, PYSE, BEFORE = "Python floor", "pyse", "pyse (before)"


def rows(o) -> list[tuple[str, str]]:
    out = [
        ("respawn_p50", f"respawn after SIGKILL, p50 (4 workers, {o.kills} kills)"),
        ("respawn_p99", "respawn after SIGKILL, p99"),
        ("respawn_fork", "… kill → server's fork line, p50"),
        ("respawn_start", "… fork line → new worker ready, p50"),
        ("churn", "churn: starts/s, each worker killed as it starts (8 slots; rounds)"),
    ]
    out += [(f"idle_{n}", f"server idle CPU, {n} workers, heartbeat 1 s") for n in o.sizes]
    out += [
        ("worker_cpu", "worker idle CPU (median of 16)"),
        ("worker_wakeups", "worker idle wake-ups (median of 16)"),
        ("boot_256", "boot: launch → 256 workers ready (rounds)"),
        ("stop_64", "TERM → all 64 workers gone (rounds)"),
        ("server_rss", "server RSS (private), 16 workers"),
        ("worker_rss", "worker RSS (private), median of 16"),
        ("rss_churn", f"server RSS over {o.churn_starts} respawns (churn)"),
        ("orphans", "server SIGKILL → all 8 workers gone"),
        ("http", "HTTP requests/s, 4 workers"),
        ("http_failed", "… failed requests"),
        ("http_kills", f"HTTP requests/s, a worker SIGKILLed every "
                       f"{o.http_kill_every * 1000:g} ms"),
        ("http_kills_failed", "… failed requests"),
        ("esc_reaction", "escalation: server TERM → worker's 1st TERM, p50"),
        ("esc_late", "escalation: TERM/QUIT off deadline, p50 / max"),
        ("esc_kill", "escalation: KILL off deadline, p50 / max"),
        ("esc_seq", f"escalation: workers that got {nominal_sequence()}"),
    ]
    return out


def ratio(numerator: Optional[Cell], denominator: Optional[Cell]) -> str:
    if (numerator is None or denominator is None or numerator.value is None
            or denominator.value is None or denominator.value <= 0):
        return "–"
    return f"{numerator.value / denominator.value:.2f}×"


def ratio_columns(titles: list[str]) -> list[tuple[str, str, str]]:
    """(heading, numerator engine, denominator engine) for the engines present."""
    out = []
    if BEFORE in titles and PYTHON_FLOOR in titles:
        out.append(("before ÷ Py floor", BEFORE, PYTHON_FLOOR))
    if PYSE in titles and PYTHON_FLOOR in titles:
        out.append(("pyse ÷ Py floor", PYSE, PYTHON_FLOOR))
    if PYSE in titles and BEFORE in titles:
        out.append(("pyse ÷ before", PYSE, BEFORE))
    return out


def results_table(o, engines: list[Engine], benches: dict[str, EngineBench],
                  skipped: dict[str, str]) -> list[str]:
    titles = [e.title for e in engines]
    ratios = ratio_columns([t for t in titles if t in benches])
    table_rows = []
    for key, label in rows(o):
        row = [label]
        for e in engines:
            if e.title in skipped:
                row.append("skipped")
            else:
                cell = benches[e.title].cells.get(key)
                row.append(cell.text if cell else "–")
        for _, num, den in ratios:
            row.append(ratio(benches[num].cells.get(key), benches[den].cells.get(key)))
        table_rows.append(row)
    return report.table(["measure"] + titles + [h for h, _, _ in ratios], table_rows)


def render(o, engines: list[Engine], benches: dict[str, EngineBench], skipped: dict[str, str],
           versions: dict[str, str], started_load: str, loads: list[str], took: float) -> str:
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    out = ["# pyse beside the floors, ServerEngine and gunicorn", "",
           f"Produced by `{o.command}` on {when} (took {took:.0f} s).", ""]
    out += results_table(o, engines, benches, skipped)
    out += ["", "What each row means and how it is measured: bench/README.md. "
            "A ratio column divides the numbers of two columns (times, rates, sizes); "
            "\"–\" where one is missing or zero.", ""]
    out += [f"- {title}: {reason}" for title, reason in skipped.items()]
    out += ["", "## Settings", "",
            f"- respawn: {o.kills} SIGKILLs of 4 workers over {o.respawn_rounds} launches, one "
            f"at a time, {o.kill_gap * 1000:g} ms after the previous replacement was ready",
            f"- churn: 8 workers, each SIGKILLed as soon as its ready line is read; "
            f"{o.churn_rounds} launches, each counting the starts of {o.churn_window:g} s after "
            f"0.5 s; the median launch. For the memory row one more launch churns to "
            f"{o.churn_starts} starts or {o.churn_cap:g} s",
            f"- idle: servers of {', '.join(map(str, o.sizes))} workers, {o.settle:g} s of "
            f"settling after the boot, then {o.idle:g} 1-s slices; boot of 256 and stop of 64: "
            f"up to {o.boot_rounds} and {o.stop_rounds} launches (one for a boot over 5 s)",
            f"- orphans: 8 workers, watched {1 + o.orphan_window:g} s after the server's SIGKILL",
            f"- HTTP: {o.http_seconds:g} s per run, 8 connections, one request per connection",
            f"- escalation: {o.escalation_rounds} round(s) of 4 stubborn workers, "
            + ", ".join(f"`{k}` {v:g}" for k, v in ESCALATION.items()),
            "- pyse and ServerEngine: the same JSON configuration, `worker_type: process`, "
            "heartbeat 1 s, defaults otherwise, log to a file at level info",
            "- gunicorn: sync workers, `preload_app`, control socket off, defaults otherwise, "
            "log at level info",
            "", "## Environment", ""]
    out += report.environment(versions)
    out.append(f"- /proc/loadavg at the start: {started_load}; at the end: {loadavg()}")
    out.append("- 1-minute load average at the start of each measurement: " + ", ".join(loads))
    out += ["", "## Details", ""]
    for b in benches.values():
        esc = b.escalation_details()
        for line in b.details + ([esc] if esc else []):
            out.append(f"- {b.engine.title}, {line}")
    errors = [e for b in benches.values() for e in b.errors]
    if errors:
        out += ["", "## Errors", ""] + [f"- {e}" for e in errors]
    return "\n".join(out) + "\n"
