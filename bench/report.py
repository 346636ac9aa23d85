"""Statistics, the environment, and the Markdown table."""
from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
from typing import Optional, Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: Optional[float], digits: int = 1) -> str:
    if seconds is None:
        return "–"
    if abs(seconds) >= 10:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.{digits}f} ms"


def median_ms(values: Sequence[float], digits: int = 1) -> str:
    return ms(statistics.median(values), digits) if values else "–"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError as e:
        return f"unknown ({e.strerror})"
    return platform.processor() or "unknown"


def ruby_version() -> str:
    try:
        return subprocess.run(["ruby", "-v"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return "not installed"


def environment(versions: dict[str, str]) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; load average at start {load}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python: {sys.version.split()[0]} ({sys.executable})",
        f"- Ruby: {ruby_version()}",
    ]
    lines += [f"- {name}: {version}" for name, version in versions.items()]
    return lines


def table(headings: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out
