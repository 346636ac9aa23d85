"""fd 1 and fd 2 into the log (log_stdout / log_stderr): print(),
os.write() and child programs of workers land line by line as records; the
forking server stays single-threaded; a flood of output never blocks."""
from __future__ import annotations

import json
import os
import re
import signal
import textwrap
import time

import pytest

import helpers
from pyse.log_capture import MAX_LINE, PipeCapture


def record_line(pid: int, severity: str, name: str, text: str) -> str:
    return rf"^{severity[0]}, \[\S+ #{pid}\] +{severity} -- {name}: {re.escape(text)}$"


@pytest.mark.timeout(60)
def test_print_fd_writes_and_child_programs_of_workers_reach_the_log(start_log_run):
    run = start_log_run({"workers": 2, "test_output": True})
    done = dict(run.wait_events("done", 2, 30))
    # The server stays single-threaded: no capture thread in a forking process.
    assert len(os.listdir(f"/proc/{run.pid}/task")) == 1
    assert run.stop() == 0
    log = run.log_path.read_text()
    for wid, pid in done.items():
        for severity, name, text in [
                ("INFO", "stdout", f"print from worker {wid}"),
                ("INFO", "stdout", f"fd1 from worker {wid}"),
                ("WARN", "stderr", f"fd2 from worker {wid}"),
                ("INFO", "stdout", f"child stdout of worker {wid}"),
                ("WARN", "stderr", f"child stderr of worker {wid}"),
                # printed in stop() without newline or flush: logged at exit
                ("INFO", "stdout", f"last words of worker {wid}")]:
            assert re.search(record_line(pid, severity, name, text), log, re.M), text
    # The server may not run a reader thread: its print() becomes a record
    # at once, its raw fd 1 writes go into the file raw (see docs/logging.md).
    assert re.search(record_line(run.pid, "INFO", "stdout", "server print in before_run"),
                     log, re.M), log
    assert re.search(r"^server raw in before_run$", log, re.M)
    assert run.outer_path.read_text() == "", "nothing went to the original stdout"


@pytest.mark.timeout(60)
def test_no_capture_when_the_log_is_stderr(start_log_run):
    """log on stderr: capturing fd 2 into it would loop, so fd 1/2 stay."""
    run = start_log_run({"workers": 1, "test_output": True, "log": None})
    run.wait_events("done", 1, 30)
    assert run.stop() == 0
    out = run.outer_path.read_text()
    assert re.search(r"^print from worker 0$", out, re.M)
    assert re.search(r"^fd2 from worker 0$", out, re.M)
    assert re.search(r"^I, \[\S+ #\d+\] +INFO -- : Worker 0 started", out, re.M)
    assert not run.log_path.exists()


@pytest.mark.timeout(60)
def test_log_stdout_false_leaves_fd1_alone(start_log_run):
    run = start_log_run({"workers": 1, "test_output": True, "log_stdout": False})
    run.wait_events("done", 1, 30)
    assert run.stop() == 0
    log, out = run.log_path.read_text(), run.outer_path.read_text()
    assert "print from worker 0" in out and "print from worker 0" not in log
    assert "fd2 from worker 0" in log and "fd2 from worker 0" not in out


@pytest.mark.timeout(180)
def test_a_worker_printing_10mb_does_not_block(start_log_run):
    size = 10_000_000
    started = time.monotonic()
    run = start_log_run({"workers": 1, "test_flood_bytes": size,
                     "log_rotate_size": 4 << 20, "log_rotate_age": 10})
    # Generous: a blocked worker never gets there at all.
    run.wait_events("done", 1, 120)
    elapsed = time.monotonic() - started
    assert run.stop() == 0
    flood_line = "-- stdout: " + "f" * 99 + "\n"
    count = sum(p.read_text().count(flood_line) for p in run.log_files())
    assert count == size // 100
    print(f"10 MB printed and logged in {elapsed:.2f} s over {len(run.log_files())} files")


@pytest.mark.timeout(60)
def test_embedded_server_captures_through_a_thread(tmp_path):
    """A server that does not fork may run the reader thread itself: its
    print() lines become records too."""
    log = tmp_path / "embedded.log"
    proc = helpers.start_python(textwrap.dedent(f"""
        import os, pyse
        class W:
            def initialize(self):
                self.flag = pyse.BlockingFlag()
            def run(self):
                print("print from the embedded worker")
                os.write(2, b"fd2 from the embedded worker\\n")
                os.kill(os.getpid(), 15)
                self.flag.wait_for_set(20)
            def stop(self):
                self.flag.set()
        pyse.create(None, W, {{"log": {str(log)!r}}}).main()
        print("after main: fd 1 is back")
    """), tmp_path, stdout=tmp_path / "out.txt")
    with helpers.killing_group(proc):
        proc.wait(30)
    text = log.read_text()
    pid = proc.pid
    assert re.search(record_line(pid, "INFO", "stdout", "print from the embedded worker"),
                     text, re.M), text
    assert re.search(record_line(pid, "WARN", "stderr", "fd2 from the embedded worker"),
                     text, re.M), text
    assert "after main: fd 1 is back" in (tmp_path / "out.txt").read_text()


@pytest.mark.timeout(60)
def test_reload_from_a_file_to_stderr_gives_fd1_and_fd2_back(start_log_run):
    """After USR2 moves the log to stderr there is nothing to capture into:
    the server and the workers put their real fd 1/2 back (the terminal or
    whatever the daemon was started with), not the old log file."""
    run = start_log_run({"workers": 1})
    run.wait_events("run", 1, 30)
    config = json.loads(run.config_path.read_text())
    config["log"] = None
    run.config_path.write_text(json.dumps(config))
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("reload", 1, 10)
    run.wait_events("server_reload", 1, 10)
    helpers.wait_for(lambda: "print at reload of worker 0" in run.outer_path.read_text(), 10,
                     what="the worker's print on the real stdout")
    out = run.outer_path.read_text()
    assert re.search(r"^server raw at reload$", out, re.M)
    assert re.search(r"^I, \[\S+ #\d+\] +INFO -- : worker 0 reloaded$", out, re.M)
    assert re.search(r"^print at reload of worker 0$", out, re.M), "raw: no capture any more"
    assert "worker 0 reloaded" not in run.log_path.read_text()
    assert run.stop() == 0


# ---- PipeCapture in this process, on a spare fd -------------------------------

def test_pipe_capture_splits_lines_and_flushes_the_rest_at_stop():
    """The capture works on any fd; a spare one keeps pytest's fd 1/2 out
    of it."""
    got: list[tuple[str, int, str]] = []
    spare = os.open("/dev/null", os.O_WRONLY)
    capture = PipeCapture(lambda name, level, lines: got.extend(
        (name, level, line) for line in lines), [spare])
    try:
        capture.start()
        payload = b"one\n\nlong:" + b"x" * (MAX_LINE + 10) + b"\nno newline at the end"
        os.write(spare, payload)
        capture.stop()
        assert os.readlink(f"/proc/self/fd/{spare}") == "/dev/null", "the fd was put back"
    finally:
        os.close(spare)
    texts = [text for _, _, text in got]
    assert texts == ["one", "", "long:" + "x" * (MAX_LINE - 5), "x" * 15,
                     "no newline at the end"]
    assert {name for name, _, _ in got} == {"stdout"}


@pytest.mark.timeout(60)
def test_log_through_a_symlink_to_fd2_is_not_captured_nor_rotated(start_log_run, tmp_path):
    """A log named like /dev/stderr (a symlink to /proc/self/fd/2): reopened
    in a process whose fd 2 is a capture pipe it would be that pipe, and
    rotating would rename the symlink away.  So: no capture, no rotation,
    no lock file.  (Our own symlink, so that a regression cannot rename the
    machine's /dev/stderr, as one once did when run as root.)"""
    link = tmp_path / "stderr-link"
    os.symlink("/proc/self/fd/2", link)
    run = start_log_run({"workers": 1, "test_output": True, "log": str(link),
                     "log_rotate_size": 100})
    run.wait_events("done", 1, 30)
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("reload", 1, 10)
    helpers.wait_for(lambda: "print at reload of worker 0" in run.outer_path.read_text(), 10,
                     what="the worker's print after the reopen")
    assert run.stop() == 0
    out = run.outer_path.read_text()
    assert out.count("print at reload of worker 0") == 1
    assert re.search(r"^print from worker 0$", out, re.M), "raw: not captured"
    assert re.search(r"^I, \[\S+ #\d+\] +INFO -- : worker 0 reloaded$", out, re.M)
    assert link.is_symlink(), "the symlink was not rotated away"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stderr-link")) \
        == ["stderr-link"], "no rotated generations, no lock file"


def test_pipe_capture_outlives_a_failing_emit():
    """If the reader thread died, the pipe would fill and every print()
    would block: a failure is reported and the reading goes on."""
    got: list[str] = []
    failures = []

    def emit(name, level, lines):
        if not failures:
            failures.append(lines)
            raise RuntimeError("the log is having a bad day")
        got.extend(lines)

    spare = os.open("/dev/null", os.O_WRONLY)
    capture = PipeCapture(emit, [spare])
    try:
        capture.start()
        os.write(spare, b"lost\n")
        helpers.wait_for(lambda: failures, 10, what="the first emit")
        os.write(spare, b"x" * 200_000 + b"\nafter\n")   # more than a pipe holds
        capture.stop()
    finally:
        os.close(spare)
    assert failures == [["lost"]]
    assert got[-1] == "after" and "".join(got[:-1]) == "x" * 200_000
