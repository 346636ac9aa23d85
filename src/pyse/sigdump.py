"""CONT: write every thread's Python stack, GC counts and memory figures to
``$TMPDIR/sigdump-PID.log`` (or /tmp/sigdump-PID.log).  As with Ruby's
sigdump, ``SIGDUMP_SIGNAL`` names another signal than CONT (one pyse gives
no other meaning to) and ``SIGDUMP_PATH`` another destination ("-" stdout,
"+" stderr, or a file).  A process that is stopping writes no dump:
systemd and timeout(1) send CONT right after their TERM.

The directory is usually world-writable, so someone else may have put
something at that name before us.  The file is opened with O_NOFOLLOW (a
planted symlink fails the open: ELOOP) and O_NONBLOCK (a planted FIFO fails
with ENXIO instead of hanging the dump), without O_TRUNC; then fstat must
show a regular file, owned by our effective uid, with one link (a hard link
to one of our own files, e.g. a config, would otherwise be overwritten).
Anything else is refused with OSError and nothing is written.

We append rather than require O_EXCL: a second CONT adds a second dump to
our own file, as Ruby's sigdump does, instead of failing because the first
dump is there.

Callable from any thread (a worker runs it on its hook thread): it only
reads other threads' frames.
"""
from __future__ import annotations

import errno
import gc
import os
import stat
import sys
import threading
import time
import traceback
import tracemalloc  # here, not lazily: a dump after chuser may not read the stdlib
from typing import Optional

_OPEN_FLAGS = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
               | os.O_CLOEXEC)
TRACEMALLOC_TOP = 10


def dump_path(directory: Optional[str] = None) -> str:
    """Where a dump goes: ``SIGDUMP_PATH`` as Ruby's sigdump reads it ("-" is
    stdout, "+" stderr, anything else a file every process appends to), else
    ``sigdump-PID.log`` in ``directory``, $TMPDIR or /tmp."""
    chosen = os.environ.get("SIGDUMP_PATH")
    if chosen and directory is None:
        return chosen
    directory = directory or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(directory, f"sigdump-{os.getpid()}.log")


def render() -> str:
    """The dump's text."""
    lines = [f"Sigdump at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} process {os.getpid()} "
             f"({' '.join(sys.argv) or sys.executable})"]
    lines.extend(_thread_stacks())
    lines.extend(_gc_figures())
    lines.extend(_memory_figures())
    return "\n".join(lines) + "\n"


def _thread_stacks() -> list[str]:
    threads = {t.ident: t for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        thread = threads.get(ident)
        name = thread.name if thread is not None else "(not a threading.Thread)"
        daemon = " daemon" if thread is not None and thread.daemon else ""
        lines.append(f"  Thread {name!r} (ident {ident}{daemon})")
        for entry in traceback.format_stack(frame):
            lines.extend("    " + line for line in entry.rstrip("\n").split("\n"))
    return lines


def _gc_figures() -> list[str]:
    lines = [f"  GC: counts {gc.get_count()} thresholds {gc.get_threshold()} "
             f"objects {len(gc.get_objects())} enabled {gc.isenabled()}"]
    for generation, stats in enumerate(gc.get_stats()):
        lines.append(f"  GC generation {generation}: {stats}")
    return lines


def _memory_figures() -> list[str]:
    figures = []
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                    figures.append(f"{key} {value.strip()}")
    except OSError as e:
        figures.append(f"unknown ({e.strerror})")
    lines = ["  Memory: " + ", ".join(figures)]
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        lines.append(f"  tracemalloc: {current} bytes traced, peak {peak}; top allocations:")
        for entry in tracemalloc.take_snapshot().statistics("lineno")[:TRACEMALLOC_TOP]:
            lines.append(f"    {entry}")
    else:
        lines.append("  tracemalloc: not tracing (PYTHONTRACEMALLOC=1 turns it on)")
    return lines


def open_dump_file(path: str) -> int:
    """Opens path for appending, refusing anything but our own plain file."""
    fd = os.open(path, _OPEN_FLAGS, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"refusing to write a sigdump into {path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise OSError(f"refusing to write a sigdump into {path}: owned by uid {st.st_uid}")
        if st.st_nlink != 1:
            raise OSError(f"refusing to write a sigdump into {path}: it has {st.st_nlink} links")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def dump(directory: Optional[str] = None) -> str:
    """Writes the dump; returns its path.  Raises OSError (writing nothing)
    when the path holds a symlink or anything but our own regular file."""
    path = dump_path(directory)
    text = render().encode("utf-8", "backslashreplace")
    if path in ("-", "+"):
        _write_all(1 if path == "-" else 2, text)
        return "stdout" if path == "-" else "stderr"
    try:
        fd = open_dump_file(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError(e.errno, f"refusing to write a sigdump through the symlink {path}") \
                from e
        raise
    try:
        _write_all(fd, text)
    finally:
        os.close(fd)
    return path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
