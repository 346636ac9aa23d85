"""worker_type "thread" end to end: one thread per worker (issue 4)."""
from __future__ import annotations

import os
import signal

import pytest

from recorder_harness import children_of, wait_until

pytestmark = pytest.mark.timeout(60)

THREAD = {"worker_type": "thread"}


def test_term_stops_every_worker_and_hooks_run_in_order(run_hooks):
    run = run_hooks(dict(THREAD, workers=3))
    run.wait_record("run", 3)
    assert children_of(run.pid) == [], "a thread server forks nothing"
    assert sorted(r.worker_id for r in run.of("run")) == [0, 1, 2]
    assert {r.pid for r in run.records()} == {run.pid}
    for wid in range(3):
        assert f"run_thread_pyse-worker-{wid}" in run.events(wid)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    events = run.events()
    assert events[:2] == ["server_initialize", "before_run"] and events[-1] == "after_run"
    stop_at = events.index("server_stop_graceful")
    assert events.count("run") == 3 and events.index("run") < stop_at
    for wid in range(3):
        mine = run.events(wid)
        # stop() ran on a fresh thread, never on the worker's own thread
        assert f"stop_thread_pyse-worker-{wid}-stop" in mine
        assert mine.index("stop") < mine.index("return")
    assert run.log().count("finished with status 0") == 3


def test_quit_is_a_graceful_stop(run_hooks):
    run = run_hooks(dict(THREAD, workers=2, test_block=True))
    run.wait_record("run", 2)
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert len(run.of("return")) == 2
    assert "no immediate stop; stopping gracefully" in run.log()


def test_reload_scales_2_to_4_to_1(run_hooks):
    run = run_hooks(dict(THREAD, workers=2))
    run.wait_record("run", 2)
    run.write_config(dict(THREAD, workers=4))
    run.signal(signal.SIGUSR2)
    wait_until(lambda: run.live_workers() == {0, 1, 2, 3}, 10, "four running workers")
    assert {r.worker_id for r in run.of("reload")} >= {0, 1}, "reload() reached the workers"
    run.write_config(dict(THREAD, workers=1))
    run.signal(signal.SIGUSR2)
    wait_until(lambda: run.live_workers() == {0}, 10, "only worker 0 left")
    for wid in (1, 2, 3):
        run.wait_log(f"Stopping worker {wid}: workers is now 1")
    wait_until(lambda: run.log().count("finished with status 0") == 3, 10,
               "the three surplus workers' ends logged")
    assert len([r for r in run.of("run") if r.worker_id == 0]) == 1, "worker 0 kept running"
    assert children_of(run.pid) == []
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert run.log().count("finished with status 0") == 4


def test_a_worker_whose_run_raises_is_restarted(run_hooks):
    run = run_hooks(dict(THREAD, workers=2, test_raise_once=True))
    wait_until(lambda: len([r for r in run.of("run") if r.worker_id == 0]) == 2, 10,
               "worker 0 run a second time")
    run.wait_log("Worker 0 finished unexpectedly with an exception (RuntimeError: first run fails)")
    assert len([r for r in run.of("run") if r.worker_id == 1]) == 1, "worker 1 untouched"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_restart_restarts_every_worker(run_hooks):
    run = run_hooks(dict(THREAD, workers=2))
    run.wait_record("run", 2)
    run.signal(signal.SIGUSR1)
    run.wait_record("run", 4)
    assert run.events().count("server_restart") == 1
    wait_until(lambda: run.live_workers() == {0, 1}, 10, "both workers running again")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_start_delay_spaces_the_starts(run_hooks):
    run = run_hooks(dict(THREAD, workers=3, start_worker_delay=0.3, start_worker_delay_rand=0))
    runs = run.wait_record("run", 3)
    gaps = [b.time - a.time for a, b in zip(runs, runs[1:])]
    assert all(0.25 < g < 2.0 for g in gaps), gaps
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_broken_config_at_reload_leaves_the_server_unchanged(run_hooks):
    run = run_hooks(dict(THREAD, workers=2))
    run.wait_record("run", 2)
    run.write_config(dict(THREAD, workers="many"))
    run.signal(signal.SIGUSR2)
    run.wait_log("keeping the running configuration")
    run.wait_log("config key 'workers': got 'many'")
    assert run.events().count("config_workers_2") == 1
    assert run.live_workers() == {0, 1} and len(run.of("run")) == 2
    run.write_config(dict(THREAD, workers=3))
    run.signal(signal.SIGUSR2)
    wait_until(lambda: run.live_workers() == {0, 1, 2}, 10, "a good reload still works")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_restarting_workers_leak_no_thread(run_hooks):
    run = run_hooks(dict(THREAD, workers=2, test_raise_always=True, log_level="info",
                         restart_backoff_base=0))
    text = "finished unexpectedly with an exception"
    wait_until(lambda: run.log().count(text) >= 20, 20, "20 failed runs")
    early = len(os.listdir(f"/proc/{run.pid}/task"))
    wait_until(lambda: run.log().count(text) >= 200, 30, "200 failed runs")
    late = len(os.listdir(f"/proc/{run.pid}/task"))
    print(f"server threads after 20 restarts: {early}, after 200: {late}")
    # Worker and hook threads come and go: readings vary by a few.  A leak
    # of one thread per restart would add 180.
    assert late <= early + 6
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_before_fork_and_after_start_surround_each_start(run_hooks):
    run = run_hooks(dict(THREAD, workers=2))
    run.wait_record("run", 2)
    run.wait_record("after_start", 2)
    for wid in (0, 1):
        mine = [e for e in run.events(wid) if e in ("before_fork", "run", "after_start")]
        assert mine[0] == "before_fork" and sorted(mine[1:]) == ["after_start", "run"], mine
        assert {r.pid for r in run.records() if r.worker_id == wid} == {run.pid}
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
