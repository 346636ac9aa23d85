"""Python logging in every process of the tree lands in pyse's log with its
level and logger name: a user's ``logging.getLogger("myapp.worker")``, a
library's ``getLogger("urllib3")``, in the server, in workers of every
type, in the supervisor; and a program's own root configuration is left
alone."""
from __future__ import annotations

import os
import signal

import pytest

from log_harness import Entry, LogWriterRun, entries


def expected_from(who: str, wid: int, pid: int) -> set[Entry]:
    """What log_writer's log_through_python() leaves at log_level info."""
    return {Entry("info", pid, f"myapp.{who}", f"app info from {who} {wid}"),
            Entry("warning", pid, f"myapp.{who}", f"app warning from {who} {wid}"),
            Entry("error", pid, "urllib3", f"library error from {who} {wid}"),
            Entry("error", pid, f"myapp.{who}", f"app exception from {who} {wid}")}


def check_python_logging(run: LogWriterRun, done: dict[int, int], log_format: str) -> list[Entry]:
    text = run.log_path.read_text()
    records, others = entries(text, log_format)
    got = set(records)
    server_pid = run.events("before_run")[0][1]
    missing = expected_from("server", -1, server_pid) - got
    for wid, pid in done.items():
        missing |= expected_from("worker", wid, pid) - got
    assert not missing, f"not in the log: {sorted(missing)}\n{text}"
    assert "app debug from" not in text, "log_level info applies to every logger"
    # Each line once, and as a record of its logger, not as captured stderr.
    assert all(text.count(f"app info from worker {wid}") == 1 for wid in done)
    assert not [r for r in records if r.logger in ("stdout", "stderr") and "app " in r.message]
    # The traceback goes with its record.
    if log_format == "json":
        assert '"exception": "Traceback (most recent call last):' in text
        assert "ValueError: boom in worker 0" in text
    else:
        assert "ValueError: boom in worker 0" in others
    return records


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_format", ["serverengine", "json"])
@pytest.mark.parametrize("worker_type", ["embedded", "thread", "process"])
def test_python_logging_of_every_worker_type_lands_with_level_and_name(
        start_log_run, worker_type, log_format):
    workers = 1 if worker_type == "embedded" else 2
    run = start_log_run({"worker_type": worker_type, "workers": workers, "log_level": "info",
                         "log_format": log_format, "test_python_logging": True})
    done = dict(run.wait_events("done", workers, 30))
    if worker_type == "process":
        assert len(os.listdir(f"/proc/{run.pid}/task")) == 1, "the forking server has no thread"
    assert run.stop() == 0
    check_python_logging(run, done, log_format)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_under_a_supervisor_every_process_logs_through_python(start_log_run, worker_type):
    """The config callable runs in the supervisor and the server at a
    reload (the server sends the result to its process workers): its
    "config loaded" line comes from both, through Python logging, and from
    no worker."""
    run = start_log_run({"supervisor": True, "worker_type": worker_type, "workers": 2,
                         "log_level": "info", "test_python_logging": True})
    done = dict(run.wait_events("done", 2, 30))
    server_pid = run.events("before_run")[0][1]
    assert server_pid != run.pid
    forking = [run.pid] + ([server_pid] if worker_type == "process" else [])
    for pid in forking:
        assert len(os.listdir(f"/proc/{pid}/task")) == 1, "forking processes have no thread"
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("reload", 2, 10)
    loaded = {Entry("info", pid, "myapp.config", f"config loaded in {pid}")
              for pid in (run.pid, server_pid)}
    run.wait_log(f"config loaded in {run.pid}", 10)
    assert run.stop() == 0
    records = check_python_logging(run, done, "serverengine")
    assert loaded <= set(records), sorted(loaded - set(records))
    assert not [r for r in records if r.logger == "myapp.config"
                and r.pid in set(done.values()) - {server_pid}], "no worker read the config"


@pytest.mark.timeout(60)
def test_spawned_commands_output_lands_and_the_server_logs_through_python(start_log_run):
    """A spawned command is an external program: its own logging is its
    business; what it writes to fd 1/2 reaches the log, raw, since the
    spawn server may not run a reader thread."""
    run = start_log_run({"worker_type": "spawn", "workers": 2, "log_level": "info",
                         "test_python_logging": True})
    done = dict(run.wait_events("done", 2, 30))
    server_pid = run.events("before_run")[0][1]
    assert len(os.listdir(f"/proc/{server_pid}/task")) == 1
    assert run.stop() == 0
    records, others = entries(run.log_path.read_text())
    assert expected_from("server", -1, server_pid) <= set(records)
    for wid in done:
        for line in (f"spawned stdout of worker {wid}", f"spawned stderr of worker {wid}",
                     f"CHILD WARNING child.app: spawned logging of worker {wid}"):
            assert line in others, line


@pytest.mark.timeout(60)
def test_a_programs_own_root_configuration_is_left_alone(start_log_run):
    """logging.basicConfig() before pyse starts: the root logger is the
    program's; pyse adds nothing to it (each record is written once, by the
    program's handler to stderr, which is captured) and says so."""
    run = start_log_run({"worker_type": "process", "workers": 1, "log_level": "info",
                         "test_python_logging": True, "test_basic_config": True})
    (_, pid), = run.wait_events("done", 1, 30)
    assert run.stop() == 0
    text = run.log_path.read_text()
    records, _ = entries(text)
    assert Entry("warning", pid, "stderr", "USER myapp.worker: app info from worker 0") in records
    assert text.count("app info from worker 0") == 1
    assert text.count("The root logger already has handlers (StreamHandler)") == 1


@pytest.mark.timeout(60)
def test_a_workers_own_dictconfig_does_not_take_pyses_log_away(start_log_run):
    """dictConfig closes every handler of the process; pyse's log must go
    on (its file stays open) and the user's new handler gets its records."""
    run = start_log_run({"worker_type": "process", "workers": 1, "test_user_dictconfig": True})
    (_, pid), = run.wait_events("done", 1, 30)
    run.wait_log("app after dictConfig in worker 0", 10)
    assert run.stop() == 0
    text = run.log_path.read_text()
    records, _ = entries(text)
    assert Entry("info", pid, "", "pyse logger after dictConfig in worker 0") in records
    assert text.count("app after dictConfig in worker 0") == 1
    assert Entry("warning", pid, "stderr", "app after dictConfig in worker 0") in records
    assert "Worker 0 finished with status 0" in text
    assert "cannot write" not in run.outer_path.read_text()
