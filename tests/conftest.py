"""No leftovers: the run fails if a test leaves a process or a zombie behind.

Three ways to find what a test started:

- descendants of the pytest process (ppid chains in /proc/*/stat), zombies
  included;
- the session marker: ``PYSE_TEST_SESSION=<uuid>`` is put into os.environ
  here, so every program a test execs carries it in /proc/<pid>/environ,
  even after it was re-parented to init (or to a subreaper);
- forks of the pytest process itself (os.fork, multiprocessing): an at-fork
  hook appends ``pid starttime`` to a session file, since a fork without
  exec shows the parent's original environment, not the marker.

After each test, processes that appeared during it (descendants, and forks
recorded during it) get a short grace to go away; what remains fails that
test at teardown, is killed, and our zombies are reaped, so the next test
starts clean.  At the end of the session the whole check runs again
(marker scan included) and fails the run, listing pid and command line.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid

import pytest

import helpers

GRACE_AFTER_TEST = 2.0      # seconds a just-finished test's processes get to exit
GRACE_AT_SESSION_END = 5.0

_fork_log_path: str | None = None


def _record_fork() -> None:
    """Runs in every child forked by the pytest process (os.register_at_fork).
    Async-signal-safety is not needed here: CPython runs it in the child
    after its own after-fork work; it must only be quick."""
    if _fork_log_path is None:
        return
    try:
        with open("/proc/self/stat", "rb") as f:
            starttime = f.read().rpartition(b")")[2].split()[19]
        fd = os.open(_fork_log_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b"%d %s\n" % (os.getpid(), starttime))
        finally:
            os.close(fd)
    except OSError:
        pass  # never break the child over bookkeeping; the ppid scan remains


def pytest_configure(config: pytest.Config) -> None:
    global _fork_log_path
    os.environ[helpers.MARKER_ENV] = uuid.uuid4().hex
    helpers.session_tmpdir()
    fd, _fork_log_path = tempfile.mkstemp(prefix="pyse-test-forks-")
    os.close(fd)
    os.register_at_fork(after_in_child=_record_fork)
    # Orphans of the trees tests build (workers of a SIGKILLed server, a
    # daemon after its double fork) are re-parented to pytest, so the
    # leftover checks see them and they are reaped here.
    helpers.become_subreaper()


def _recorded_forks(offset: int = 0) -> tuple[set[tuple[int, int]], int]:
    """(pid, starttime) of forks recorded from byte offset on, and the new offset."""
    if _fork_log_path is None:
        return set(), 0
    with open(_fork_log_path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    forks = set()
    for line in complete.splitlines():
        pid, starttime = line.split()
        forks.add((int(pid), int(starttime)))
    return forks, offset + len(complete)


def _alive_forks(forks: set[tuple[int, int]],
                 stats: dict[int, helpers.ProcStat]) -> set[int]:
    return {pid for pid, start in forks
            if pid in stats and stats[pid].starttime == start}


def _marked(stats: dict[int, helpers.ProcStat]) -> set[int]:
    marker = os.environ.get(helpers.MARKER_ENV)
    me = os.getpid()
    return {pid for pid in stats
            if pid != me and helpers.environ_of(pid).get(helpers.MARKER_ENV) == marker}


def _suspects(stats, *, forks=frozenset(), marker_scan=False,
              ignore=frozenset()) -> set[int]:
    me = os.getpid()
    found = set(helpers.descendants_of(me, stats))
    found |= _alive_forks(set(forks), stats)
    if marker_scan:
        found |= _marked(stats)
    found.discard(me)
    return {pid for pid in found if (pid, stats[pid].starttime) not in ignore}


def _settled(find, grace: float) -> tuple[set[int], dict[int, helpers.ProcStat]]:
    """Polls find(stats) until it is empty or only our own zombies remain
    (nobody else will reap those), or the grace ends."""
    deadline = time.monotonic() + grace
    me = os.getpid()
    while True:
        stats = helpers.all_stats()
        left = find(stats)
        waiting = [p for p in left if not (stats[p].state == "Z" and stats[p].ppid == me)]
        if not waiting or time.monotonic() >= deadline:
            return left, stats
        time.sleep(0.02)


def _describe(pids, stats) -> str:
    lines = []
    for pid in sorted(pids):
        st = stats[pid]
        what = "zombie" if st.state == "Z" else f"state {st.state}"
        lines.append(f"  pid {pid} ({what}, ppid {st.ppid}): {helpers.cmdline(pid) or st.comm}")
    return "\n".join(lines)


def _clean_up(pids, stats) -> None:
    """Kills leftovers and reaps the ones that are our children, so later
    tests (and the machine) are not blamed for them."""
    me = os.getpid()
    for pid in pids:
        if stats[pid].state != "Z":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    for pid in pids:
        if stats[pid].ppid == me:
            with contextlib.suppress(ChildProcessError, AssertionError):
                helpers.wait_pid_exit(pid, 2.0)


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """Fails a test (at teardown) that leaves behind a process it started."""
    me = os.getpid()
    before_stats = helpers.all_stats()
    before = {(p, before_stats[p].starttime) for p in helpers.descendants_of(me, before_stats)}
    _, offset = _recorded_forks()
    yield
    forks, _ = _recorded_forks(offset)
    left, stats = _settled(lambda s: _suspects(s, forks=forks, ignore=before), GRACE_AFTER_TEST)
    if left:
        message = _describe(left, stats)
        _clean_up(left, stats)
        pytest.fail(f"the test left {len(left)} process(es) behind:\n{message}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    forks, _ = _recorded_forks()
    left, stats = _settled(lambda s: _suspects(s, forks=forks, marker_scan=True),
                           GRACE_AT_SESSION_END)
    if _fork_log_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(_fork_log_path)
    shutil.rmtree(os.environ.get(helpers.TMPDIR_ENV, ""), ignore_errors=True)
    if not left:
        return
    message = (f"pyse no-leftovers check: {len(left)} process(es) or zombie(s) "
               f"outlived the test session:\n{_describe(left, stats)}")
    _clean_up(left, stats)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("=", "leftover processes", red=True)
        reporter.write_line(message)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def start_log_run(tmp_path):
    """Starts tests/programs/log_writer.py servers (see log_harness)."""
    from log_harness import LogWriterRun

    yield from helpers.started_runs(lambda config, **kw: LogWriterRun(tmp_path, config, **kw))


@pytest.fixture
def run_server(tmp_path):
    """Starts tests/programs/recorder.py servers (see recorder_harness)."""
    from recorder_harness import RecorderRun

    yield from helpers.started_runs(lambda config, **kw: RecorderRun(tmp_path, config, **kw))


@pytest.fixture
def run_hooks(tmp_path):
    """Starts tests/programs/hook_recorder.py servers, any worker type."""
    from hook_harness import HookRun

    yield from helpers.started_runs(lambda config, **kw: HookRun(tmp_path, config, **kw))
