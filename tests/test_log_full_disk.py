"""A log that cannot be written (a full disk, a file size limit, /dev/full):
said once, then a count of dropped lines at most every few seconds, then
"works again" with the number lost; the workers keep running."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import subprocess
import sys
import textwrap
from typing import Callable, Iterator

import pytest

import helpers
from log_harness import Entry, entries
from pyse.log_drops import DropReport
from pyse.log_file import SharedLogFile
from pyse.log_handlers import ReportingHandler, SharedFileHandler, StreamLogHandler
from pyse.log_format import RubyFormatter

FULL = OSError(errno.ENOSPC, "No space left on device")


# ---- the rules, with a fake clock --------------------------------------------

def test_said_once_then_counted_every_interval_then_all_clear():
    report = DropReport("/var/log/x.log", interval=5.0)
    first = report.failed(100.0, FULL, 1)
    assert first is not None and "cannot write to the log /var/log/x.log" in first
    assert "No space left on device" in first
    # Thousands of failures within the interval: silence.
    assert all(report.failed(100.0 + i / 1000, FULL, 1) is None for i in range(1, 4999))
    count = report.failed(105.0, FULL, 2)
    assert count is not None and "still cannot write" in count
    assert "5000 lines dropped in the last 5.0 s, 5001 since 5.0 s ago" in count, count
    assert report.failed(109.9, FULL, 1) is None
    note = report.lost_note(111.0)
    assert note is not None and note.startswith("5002 log lines of this process were lost over "
                                                 "11.0 s")
    clear = report.recovered(111.0)
    assert clear is not None and "works again; 5002 lines were lost over 11.0 s" in clear
    assert report.recovered(112.0) is None and report.lost_note(112.0) is None
    # A new outage is said again, once.
    assert report.failed(200.0, FULL, 1) is not None
    assert report.failed(200.1, FULL, 1) is None
    assert report.total_dropped == 5004


def test_a_forked_child_starts_its_own_count():
    report = DropReport("x.log")
    report.failed(1.0, FULL, 7)
    report.forget_in_child()
    assert not report.failing and report.recovered(2.0) is None
    assert report.failed(3.0, FULL, 1) is not None, "the child says it once too"


# ---- /dev/full: a destination that is not a regular file -----------------------

@contextlib.contextmanager
def logging_through(handler: ReportingHandler) -> Iterator[tuple[logging.Logger,
                                                                 Callable[[], list[str]]]]:
    """A logger writing through handler, and a function giving the lines
    the handler reported on its error fd so far."""
    handler.setFormatter(RubyFormatter())
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    handler.error_fd = write_end
    logger = logging.Logger("app")
    logger.addHandler(handler)
    try:
        yield logger, lambda: os.read(read_end, 65536).decode().splitlines()
    finally:
        helpers.close_quietly(read_end, write_end)


def test_dev_full_gives_one_line_of_stderr_for_a_thousand_lost_records():
    handler = SharedFileHandler(SharedLogFile("/dev/full"))
    try:
        with logging_through(handler) as (logger, reported):
            for i in range(1000):
                logger.error("line %d", i)
            said = reported()
    finally:
        handler.close_destination()
    assert len(said) == 1, said
    assert "cannot write to the log /dev/full: No space left on device" in said[0]
    assert handler.drops.total_dropped == 1000


def test_a_stream_log_says_it_once_and_notes_the_gap_when_it_works_again():
    class FullThenFree:
        """stdout redirected to a file on a disk that fills, then frees."""
        def __init__(self) -> None:
            self.full = True
            self.text = ""

        def write(self, text: str) -> None:
            if self.full:
                raise FULL
            self.text += text

    stream = FullThenFree()
    with logging_through(StreamLogHandler(stream)) as (logger, reported):
        for i in range(100):
            logger.error("lost %d", i)
        stream.full = False
        logger.error("first after")
        said = reported()
    assert len(said) == 2 and "No space left on device; dropping" in said[0], said
    assert "works again; 100 lines were lost over" in said[1]
    lines = stream.text.splitlines()
    assert len(lines) == 2 and "-- : 100 log lines of this process were lost over" in lines[0]
    assert lines[1].endswith("-- app: first after")


# ---- a line cut by a failing write is ended before the next one ----------------

def test_a_cut_line_does_not_swallow_the_next_one(tmp_path):
    """Run in a child: RLIMIT_FSIZE would cut pytest's own files too."""
    path = tmp_path / "x.log"
    code = textwrap.dedent(f"""
        import resource
        from pyse.log_file import LogWriteError, SharedLogFile
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))
        log = SharedLogFile({str(path)!r})
        try:
            log.write_lines([b"a" * 39 + b"\\n", b"b" * 39 + b"\\n", b"c" * 39 + b"\\n"])
        except LogWriteError as e:
            print("written", e.lines_written, e.errno)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        log.write_lines([b"next\\n"])
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=helpers.marked_env())
    assert done.stdout == f"written 2 {errno.EFBIG}\n", done.stderr
    assert path.read_bytes() == b"a" * 39 + b"\n" + b"b" * 39 + b"\n" + b"c" * 20 + b"\nnext\n"


# ---- a whole tree on a log that fills up -----------------------------------------

def reports(text: str, kind: str) -> list[tuple[int, str]]:
    """(pid, rest of the line) of each stderr report of one kind."""
    return [(int(pid), rest) for pid, rest in re.findall(rf"^pyse\[(\d+)\]: {kind}(.*)$", text,
                                                          re.M)]


@pytest.mark.timeout(90)
def test_a_full_log_is_said_once_counted_then_recovered_and_workers_keep_running(start_log_run):
    """RLIMIT_FSIZE makes writes past 64 KiB fail with EFBIG (Python ignores
    SIGXFSZ), as a full disk fails them with ENOSPC; truncating the log
    frees the space."""
    run = start_log_run({"workers": 2, "log_level": "info", "test_log_forever": True,
                         "log_rotate_size": 0}, env={"PYSE_TEST_FSIZE": str(64 * 1024)})
    workers = dict(run.wait_events("done", 2, 30))

    def said() -> str:
        return run.outer_path.read_text()

    helpers.wait_for(lambda: len(reports(said(), "cannot write to the log")) >= 2, 30,
                     what="both workers saying the log cannot be written")
    # At most every 5 s each worker counts what it dropped meanwhile.
    counts = helpers.wait_for(lambda: reports(said(), "still cannot write"), 15,
                              what="a count of dropped lines")
    assert re.search(r"File too large\): \d+ lines dropped in the last [\d.]+ s", counts[0][1])
    os.truncate(run.log_path, 0)
    helpers.wait_for(lambda: {pid for pid, _ in reports(said(), "writing to the log")}
                     >= set(workers.values()), 15, what="both workers writing again")
    run.wait_log("log lines of this process were lost", 10)
    # Never restarted: the same two workers ran all along.
    assert sorted(pid for _, pid in run.events("run")) == sorted(workers.values())
    assert run.stop() == 0
    out = said()
    firsts = reports(out, "cannot write to the log")
    assert sorted(pid for pid, _ in firsts) == sorted(workers.values()), "once per worker"
    records = entries(run.log_path.read_text())[0]
    # The log itself tells of the gap, in pyse's own record of each worker.
    lost = {r.pid: int(r.message.split()[0]) for r in records
            if r.logger == "" and "log lines of this process were lost" in r.message}
    for pid, rest in reports(out, "writing to the log"):
        total = int(re.search(r"works again; (\d+) lines were lost", rest)[1])
        assert total > 100 and lost[pid] == total, (pid, rest, lost)
    noise = [line for line in out.splitlines() if line.startswith("pyse[")]
    # First failure + a count per 5 s + all clear, per worker: a dozen lines,
    # not one per lost line.
    assert len(noise) <= 12, noise
    assert Entry("info", run.pid, "", "Worker 0 finished with status 0") in records

