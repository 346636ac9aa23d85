"""Workers that cannot start, crash loops and the restart intensity, through
real servers: a failed start is retried as a deadline of the loop, a
daemonized launch fails when its first workers cannot start, a crash loop
backs off, and too many restarts stop the server with exit status 75."""
from __future__ import annotations

import os
import signal

import pytest

import helpers
from recorder_harness import wait_until
from supervised_harness import SupervisedRun

pytestmark = pytest.mark.timeout(60)


def test_a_worker_that_fails_to_start_is_retried_by_its_own_deadline(run_server):
    """One worker, nothing else to wake the server: its replacement's
    initialize() fails twice, and each retry still comes, on time for the
    backoff (immediate, then 0.2 s), until the third try runs."""
    run = run_server({"workers": 1, "test_initialize_failures": 2, "restart_backoff_base": 0.2,
                      "worker_heartbeat_interval": 30, "log_level": "info"})
    (first,) = run.wait_workers(1)
    os.kill(first, signal.SIGKILL)
    runs = run.wait_record("run", 2, timeout=10)
    failures = run.of("initialize_failed")
    assert len(failures) == 2
    assert runs[1].time - failures[-1].time >= 0.2 * 2 - 0.01, \
        "the third try waited out the backoff (its slot had died 3 times in a row)"
    log = run.log()
    assert log.count("ERROR -- : Worker 0 failed to start") == 2
    assert "RuntimeError: initialize failure 1 of 2" in log, "the traceback is logged"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_a_crash_loop_backs_off_doubling(run_server):
    """run() raises at once: restarted at once, then after base, 2*base..."""
    run = run_server({"workers": 1, "test_run_raises": True, "restart_backoff_base": 0.1,
                      "log_level": "info"})
    runs = run.wait_record("run", 5, timeout=20)
    gaps = [b.time - a.time for a, b in zip(runs, runs[1:])]
    assert gaps[0] < 0.1, f"the first restart is immediate: {gaps}"
    for n, gap in enumerate(gaps[1:4]):
        assert gap >= 0.1 * 2 ** n - 0.01, f"restart {n + 2} waited {gap:.3f} s: {gaps}"
    assert "WARN -- : Worker 0 finished unexpectedly with status 1" in run.log()
    assert "WARN -- : Worker 0 failed 3 times in a row: restarting it in 0.2 s" in run.log()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_too_many_restarts_stop_the_server_with_exit_status_75(run_hooks, worker_type):
    run = run_hooks({"worker_type": worker_type, "workers": 2, "test_raise_always": True,
                     "restart_backoff_base": 0, "restart_max_count": 5,
                     "restart_max_window": 30})
    assert run.wait_exit(20) == 75
    log = run.log()
    assert log.count("restart_max_count is 5") == 1, "one clear line says why"
    assert "would be the 6th restart within 30 s (restart_max_count is 5): stopping the " \
           "server with exit status 75" in log
    runs = [r for r in run.records() if r.event.startswith("run_thread_")]
    assert len(runs) == 2 + 5, "the first two runs, then five restarts"


@pytest.fixture
def start_supervised(tmp_path):
    yield from helpers.started_runs(lambda config: SupervisedRun(tmp_path, config))


@pytest.mark.parametrize("supervisor", [False, True])
def test_a_daemonized_launch_fails_when_its_first_workers_cannot_start(start_supervised,
                                                                       supervisor):
    run = start_supervised({"daemonize": True, "supervisor": supervisor, "workers": 2,
                            "worker_type": "process", "test_worker_initialize": "raise",
                            "daemonize_error_exit_code": 9, "server_restart_wait": 0.1})
    assert run.wait_exit(30) == 9, run.output()
    assert "pyse: cannot start: worker 0 failed to start: RuntimeError: no database for the " \
           "workers" in run.output()
    # Nothing is left running: the daemon stopped when its launch failed.
    wait_until(lambda: not run.members(), 15, "the daemon's tree to be gone")
    assert "Traceback" in run.log(), "the log has the traceback"


def test_a_daemonized_launch_succeeds_once_the_workers_are_up(start_supervised):
    run = start_supervised({"daemonize": True, "workers": 2, "worker_type": "process"})
    assert run.wait_exit(30) == 0, run.output()
    assert len(run.of("run")) == 2, "the launcher returned only after both workers ran"
    daemon = int(run.output().split("daemon ")[1].split()[0])
    os.kill(daemon, signal.SIGTERM)
    wait_until(lambda: not run.members(), 15, "the daemon's tree to be gone")
