"""CONT: write every thread's Python stack, GC counts and memory figures to
``$TMPDIR/sigdump-PID.log`` (or /tmp), never following a planted symlink."""
from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
import traceback
from typing import Optional


def dump_path(directory: Optional[str] = None) -> str:
    directory = directory or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(directory, f"sigdump-{os.getpid()}.log")


def render() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = [f"Sigdump at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} process {os.getpid()} "
             f"({' '.join(sys.argv) or sys.executable})"]
    for ident, frame in sys._current_frames().items():
        lines.append(f"  Thread {names.get(ident, '?')!r} (ident {ident})")
        for entry in traceback.format_stack(frame):
            lines.extend("    " + line for line in entry.rstrip("\n").split("\n"))
    lines.append(f"  GC: counts {gc.get_count()} thresholds {gc.get_threshold()} "
                 f"objects {len(gc.get_objects())}")
    for i, stats in enumerate(gc.get_stats()):
        lines.append(f"  GC generation {i}: {stats}")
    lines.append(f"  Memory: {_memory()}")
    try:
        import tracemalloc
        if tracemalloc.is_tracing():
            lines.append("  tracemalloc top allocations:")
            for stat in tracemalloc.take_snapshot().statistics("lineno")[:10]:
                lines.append(f"    {stat}")
    except ImportError:  # pragma: no cover
        pass
    return "\n".join(lines) + "\n"


def _memory() -> str:
    try:
        with open("/proc/self/status") as f:
            return ", ".join(line.split(":", 1)[0] + line.split(":", 1)[1].strip()
                             .join([" ", ""]) for line in f
                             if line.startswith(("VmRSS", "VmHWM", "VmSize")))
    except OSError as e:
        return f"unknown ({e})"


def dump(directory: Optional[str] = None) -> str:
    """Writes the dump; returns its path.  The file is opened with
    O_NOFOLLOW and written through a private temp file, so a symlink planted
    at the path is refused (OSError) and no other file is ever written."""
    path = dump_path(directory)
    if os.path.islink(path):
        raise OSError(f"refusing to write a sigdump through the symlink {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, render().encode("utf-8", "replace"))
    finally:
        os.close(fd)
    return path
