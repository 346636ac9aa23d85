"""Shared utilities for tests that run real processes.

Every wait has a deadline; nothing sleeps and hopes.  Everything about other
processes is read from /proc (Linux), so it works for processes that are not
our children too (orphans, workers of a server in a subprocess).

Typical use::

    from helpers import start_python, killing_group, wait_for_line

    def test_server_starts(tmp_path):
        log = tmp_path / "out.log"
        proc = start_python('''
            import pyse
            ...
        ''', tmp_path, stdout=log)
        with killing_group(proc):
            wait_for_line(log, r"Worker \\d+ started", timeout=10)

The session marker: conftest.py puts ``PYSE_TEST_SESSION=<uuid>`` into
os.environ, and :func:`marked_env` into every process started here, so the
session-end check can find leftovers even after they were re-parented to
init.  Processes forked inside the pytest process are recorded by conftest
too (an at-fork hook), so forked helpers that outlive their test are found.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, TypeVar, Union

MARKER_ENV = "PYSE_TEST_SESSION"
T = TypeVar("T")


# ---- the session marker ----------------------------------------------------

def session_marker() -> str:
    """This test session's marker value (conftest sets it; a fresh one here
    if helpers is used without conftest)."""
    value = os.environ.get(MARKER_ENV)
    if not value:
        value = os.environ[MARKER_ENV] = uuid.uuid4().hex
    return value


TMPDIR_ENV = "PYSE_TEST_TMPDIR"


def session_tmpdir() -> str:
    """A directory of this session's own (conftest removes it at the end)."""
    path = os.environ.get(TMPDIR_ENV)
    if not path:
        import tempfile

        path = os.environ[TMPDIR_ENV] = tempfile.mkdtemp(prefix="pyse-test-session-")
        # As /tmp is: programs that dropped to another user write here too.
        os.chmod(path, 0o1777)
    return path


def marked_env(extra: Optional[dict] = None) -> dict:
    """os.environ plus the session marker plus ``extra``: the environment of
    every process a test starts.  Its TMPDIR is the session's own directory,
    so what those programs leave there (sigdumps) goes with the session."""
    env = dict(os.environ)
    env[MARKER_ENV] = session_marker()
    env["TMPDIR"] = session_tmpdir()
    env.update(extra or {})
    return env


# ---- waiting ---------------------------------------------------------------

def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.005,
             what: Optional[str] = None) -> T:
    """Calls predicate until it returns something truthy, and returns that.

    Raises AssertionError (naming ``what``) once ``timeout`` seconds passed;
    the predicate is always tried once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(min(interval, remaining))


def wait_for_line(source: Union[str, Path, int, IO], pattern: str, timeout: float,
                  skip: int = 0) -> re.Match:
    """Waits for a line matching ``pattern`` (re.search) and returns the match.

    ``source`` is a path (the file is read from its start and tailed as it
    grows; it need not exist yet), or a pipe: an fd or a file object such as
    ``proc.stdout``, read without blocking past the deadline (lines read from
    a pipe are consumed).  ``skip``: ignore that many earlier matching lines.
    On timeout the AssertionError shows the last lines seen."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    buffer = b""

    def matches(chunk: bytes) -> Optional[re.Match]:
        nonlocal buffer, skip
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            seen.append(line)
            m = regex.search(line)
            if m:
                if skip == 0:
                    return m
                skip -= 1
        return None

    def fail() -> AssertionError:
        tail = "\n".join(seen[-20:] + ([buffer.decode(errors="replace")] if buffer else []))
        return AssertionError(f"timed out after {timeout} s waiting for a line matching "
                              f"{pattern!r}; last lines:\n{tail}")

    if isinstance(source, (str, Path)):
        f = None
        try:
            while True:
                if f is None:
                    try:
                        f = open(source, "rb")
                    except FileNotFoundError:
                        pass
                if f is not None:
                    m = matches(f.read())
                    if m:
                        return m
                if time.monotonic() >= deadline:
                    raise fail()
                time.sleep(0.005)
        finally:
            if f is not None:
                f.close()

    fd = source if isinstance(source, int) else source.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise fail()
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            m = matches(b"\n") if buffer else None  # the last, unterminated line
            if m:
                return m
            raise AssertionError(f"end of file before a line matching {pattern!r}; "
                                 f"last lines:\n" + "\n".join(seen[-20:]))
        m = matches(chunk)
        if m:
            return m


def wait_pid_exit(pid: int, timeout: float, reap: bool = True) -> Optional[int]:
    """Waits until pid no longer runs (gone, or a zombie).

    Works for any process.  If pid is our child and ``reap`` is true it is
    reaped, and its raw wait status is returned (use os.WIFSIGNALED & co, or
    os.waitstatus_to_exitcode); otherwise returns None.  Do not use it on a
    subprocess.Popen's pid with reap=True: Popen would then lose the status;
    call proc.wait(timeout) instead.  Raises AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)  # readable once the process has exited
    except ProcessLookupError:
        pass
    except OSError:  # an old kernel: fall back to polling /proc
        pidfd = None
    try:
        while True:
            if reap:
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                    if got == pid:
                        return status
                except ChildProcessError:
                    pass  # not our child (or already reaped)
            if not is_running(pid) and not (reap and _is_child(pid)):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout} s waiting for pid {pid} "
                                     f"({cmdline(pid)!r}) to exit")
            if pidfd is not None:
                select.select([pidfd], [], [], min(remaining, 0.1))
            else:
                time.sleep(min(remaining, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ---- reading /proc -----------------------------------------------------------

@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that tests care about."""

    pid: int
    comm: str
    state: str          # R, S, D, Z, T, ...
    ppid: int
    pgid: int
    sid: int
    starttime: int      # clock ticks since boot: (pid, starttime) names a process


def proc_stat(pid: int) -> Optional[ProcStat]:
    """/proc/<pid>/stat parsed, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    head, _, rest = raw.rpartition(")")
    fields = rest.split()
    return ProcStat(pid=pid, comm=head.partition("(")[2], state=fields[0],
                    ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    starttime=int(fields[19]))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def all_stats() -> dict[int, ProcStat]:
    """Every process on the machine (that /proc shows us), by pid."""
    stats = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None:
            stats[pid] = st
    return stats


def children_of(pid: int) -> list[int]:
    """Pids whose parent is pid, zombies included (whichever thread forked
    them): /proc/<pid>/task/<tid>/children of every thread, which is much
    cheaper than a scan of every process."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass  # that thread ended while we looked
    return sorted(found)


def descendants_of(pid: int, stats: Optional[dict[int, ProcStat]] = None) -> list[int]:
    """Children, grandchildren, ... of pid, zombies included."""
    stats = all_stats() if stats is None else stats
    by_parent: dict[int, list[int]] = {}
    for p, st in stats.items():
        by_parent.setdefault(st.ppid, []).append(p)
    found, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def is_zombie(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st.state == "Z"


def is_running(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st.state != "Z"


def _is_child(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st.ppid == os.getpid()


def cmdline(pid: int) -> str:
    """The command line, space-separated ('' if gone; '[comm]' for a zombie)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    if not raw:
        st = proc_stat(pid)
        return f"[{st.comm}]" if st else ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def environ_of(pid: int) -> dict[str, str]:
    """The environment pid was exec'd with ({} if unreadable or gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def open_fds(pid: int) -> dict[int, str]:
    """fd -> what it points to ('pipe:[123]', '/dev/null', ...) for pid."""
    fds = {}
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            fds[int(name)] = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            pass  # closed while we looked
    return fds


# ---- starting and stopping programs ------------------------------------------

def start_python(source: str, directory: Union[str, Path], args: tuple = (), *,
                 env: Optional[dict] = None, stdout=None, stderr=subprocess.STDOUT,
                 stdin=subprocess.DEVNULL, name: Optional[str] = None,
                 **popen_kwargs) -> subprocess.Popen:
    """Runs Python ``source`` (dedented) in a new session, with the marker env.

    The source is written to ``directory/<name or a fresh name>.py`` (use
    pytest's tmp_path).  ``stdout`` may be a path (opened for appending,
    closed here after the start), a file object, subprocess.PIPE or None
    (inherit); stderr goes to stdout unless told otherwise.  ``env`` adds to
    os.environ.  The process leads its own process group (pgid == pid), so
    :func:`killing_group` can kill it and everything it forked."""
    path = Path(directory) / f"{name or 'prog_' + uuid.uuid4().hex[:8]}.py"
    path.write_text(textwrap.dedent(source))
    opened = None
    if isinstance(stdout, (str, Path)):
        stdout = opened = open(stdout, "ab")
    try:
        return subprocess.Popen([sys.executable, str(path), *map(str, args)],
                                env=marked_env(env), stdout=stdout, stderr=stderr,
                                stdin=stdin, start_new_session=True, **popen_kwargs)
    finally:
        if opened is not None:
            opened.close()


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILLs process group pgid and waits until none of its members runs.
    Zombie members that are our children are reaped."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return

    def group_gone() -> bool:
        members = [st for st in all_stats().values() if st.pgid == pgid]
        for st in members:
            if st.state == "Z" and st.ppid == os.getpid():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(st.pid, os.WNOHANG)
        return not any(st.state != "Z" for st in members)

    wait_for(group_gone, timeout, what=f"process group {pgid} to die")


@contextlib.contextmanager
def killing_group(proc: Union[subprocess.Popen, int], timeout: float = 10.0) -> Iterator:
    """On exit (however the block ends) SIGKILLs the process group led by
    ``proc`` (a Popen started with start_new_session, or a pid that called
    setsid), waits for every member, and reaps the leader.  Yields proc."""
    pid = proc.pid if isinstance(proc, subprocess.Popen) else proc
    try:
        yield proc
    finally:
        kill_group(pid, timeout)
        if isinstance(proc, subprocess.Popen):
            proc.wait(timeout)
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def kill_and_reap(pid: int, timeout: float = 10.0) -> Optional[int]:
    """SIGKILLs pid (ignoring one that is already gone) and waits for it;
    returns its wait status if it was our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_pid_exit(pid, timeout)


def close_quietly(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError as e:
            if e.errno != errno.EBADF:
                raise


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Makes this process a child subreaper: processes orphaned below it
    (workers of a SIGKILLed server, a daemon after its double fork) are
    re-parented to it, so they stay visible to the leftover checks and are
    reaped here, not by whatever PID 1 the machine has."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def started_runs(make: Callable[..., T]) -> Iterator[Callable[..., T]]:
    """A fixture body: yields start(*args, **kw) -> make(*args, **kw), and
    at teardown close()s (kills and reaps) every run it started."""
    runs = []

    def start(*args, **kw):
        run = make(*args, **kw)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def write_json_atomically(path: Union[str, Path], data: dict) -> None:
    """Writes data as JSON through a temp file and a rename, so that a
    server re-reading path at a reload never sees half a file."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# ---- the kill escalation ---------------------------------------------------------

def kill_config(**overrides):
    """pyse's default worker escalation timing (from config.KEYS, the one
    place defaults live), with overrides in seconds."""
    import dataclasses

    from pyse import config, process_manager

    defaults = process_manager.kill_config(config.validate({}), "worker_")
    return dataclasses.replace(defaults, **overrides)
