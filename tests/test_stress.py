"""Stress: thousands of worker kills, signal storms, signals during reloads.

Deselected by default; `.ci/run` runs a bounded pass
(PYSE_STRESS_KILLS=2000), and `python -m pytest -m stress` the long one.
Afterwards the tree must have the right number of workers, no zombies, no
leaked fds and no orphans.
"""
from __future__ import annotations

import os
import random
import signal
import statistics
import time

import pytest

from recorder_harness import (RecorderRun, open_fds, pid_alive, wait_until,
                              zombie_children)

pytestmark = [pytest.mark.stress, pytest.mark.timeout(900)]

KILLS = int(os.environ.get("PYSE_STRESS_KILLS", "10000"))
STORM = int(os.environ.get("PYSE_STRESS_SIGNALS", str(max(KILLS // 10, 100))))


@pytest.fixture
def server(tmp_path):
    runs = []

    def start(config):
        run = RecorderRun(tmp_path, config)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def assert_clean_tree(run, workers, fds_before):
    pids = run.wait_workers(workers, timeout=30)
    assert zombie_children(run.pid) == []
    # As many fds as before (the workers' pipes are new, their numbers may
    # differ): nothing piled up.
    assert len(open_fds(run.pid)) == len(fds_before), ("the server leaked fds", fds_before,
                                                       open_fds(run.pid))
    return pids


def finish(run, pids):
    every = set(run.known_pids) | set(pids)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(30) == 0
    wait_until(lambda: not any(pid_alive(p) for p in every), 10, "no worker left")


def test_kill_thousands_of_workers(server):
    # Backoff off: the kills test that the count stays exact, not the backoff.
    run = server({"workers": 8, "log_level": "info", "restart_backoff_base": 0})
    run.wait_workers(8)
    fds_before = open_fds(run.pid)
    rng = random.Random(1)
    killed = 0
    latencies = []
    while killed < KILLS:
        pids = run.worker_pids()
        if not pids:
            continue
        n_runs = len(run.of("run"))
        t0 = time.monotonic()
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed += 1
        if killed % 10 == 0:  # measure one in ten; the others go back to back
            new = wait_until(lambda: (lambda rs: rs[n_runs:] if len(rs) > n_runs else None)(
                run.of("run")), 10, "a replacement")
            latencies.append(new[0].time - t0)
    pids = assert_clean_tree(run, 8, fds_before)
    print(f"{killed} kills; respawn median {statistics.median(latencies) * 1000:.2f} ms")
    finish(run, pids)


def test_signal_storm_and_kills(server):
    run = server({"workers": 4, "log_level": "info", "disable_sigdump": True,
                  "restart_backoff_base": 0,
                  "worker_graceful_kill_timeout": 2, "worker_immediate_kill_timeout": 2})
    run.wait_workers(4)
    fds_before = open_fds(run.pid)
    rng = random.Random(2)
    choices = [signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2, signal.SIGCONT, "kill"]
    for _ in range(STORM):
        what = rng.choice(choices)
        if what == "kill":
            pids = run.worker_pids()
            if pids:
                try:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            run.signal(what)
        time.sleep(rng.random() * 0.01)
    wait_until(lambda: not (set(run.wait_workers(4, 30)) & {r.pid for r in run.of("stop")}),
               30, "the storm to settle")
    pids = assert_clean_tree(run, 4, fds_before)
    finish(run, pids)


def test_signals_during_reloads_that_rescale(server):
    run = server({"workers": 3, "log_level": "info", "restart_backoff_base": 0})
    run.wait_workers(3)
    rng = random.Random(3)
    for i in range(max(STORM // 10, 20)):
        run.write_config({"workers": rng.randint(1, 6), "log_level": "info",
                          "restart_backoff_base": 0})
        run.signal(signal.SIGUSR2)
        for _ in range(rng.randint(0, 3)):
            run.signal(rng.choice([signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP]))
    run.write_config({"workers": 5, "log_level": "info", "restart_backoff_base": 0})
    run.signal(signal.SIGUSR2)
    wait_until(lambda: not (set(run.wait_workers(5, 30)) & {r.pid for r in run.of("stop")}),
               30, "the reloads to settle")
    assert zombie_children(run.pid) == []
    finish(run, run.worker_pids())
