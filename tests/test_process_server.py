"""Process workers end to end: real servers in subprocesses (issue 3)."""
from __future__ import annotations

import os
import signal
import statistics
import time

import pytest

from recorder_harness import (open_fds, pid_alive, reap_orphan, wait_until, zombie_children)

pytestmark = pytest.mark.timeout(60)


def test_blog_post_scenario(run_server):
    """Two named workers; SIGKILL one: replaced and logged; SIGKILL the
    server: both workers notice, run their stop(), and are gone."""
    run = run_server({"workers": 2, "worker_process_name": "se-worker-%d"})
    first = run.wait_workers(2)
    names = sorted(open(f"/proc/{p}/cmdline").read().strip("\0") for p in first)
    assert names == ["se-worker-0", "se-worker-1"]

    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    second = wait_until(lambda: (lambda p: p if victim not in p and len(p) == 2 else None)(
        run.wait_workers(2)), 10, "the killed worker's replacement")
    run.wait_log("finished unexpectedly with signal SIGKILL")

    killed_at = time.monotonic()
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    for pid in second:
        reap_orphan(pid, 5)
    gone_after = time.monotonic() - killed_at
    stops = {r.pid for r in run.of("stop")}
    returns = {r.pid for r in run.of("return")}
    assert set(second) <= stops, "each orphaned worker calls its own stop()"
    assert set(second) <= returns, "and exits when run() returns"
    print(f"workers gone {gone_after * 1000:.1f} ms after the server's SIGKILL")


def test_orphan_notices_within_10ms(run_server):
    run = run_server({"workers": 2})
    pids = run.wait_workers(2)
    t0 = time.monotonic()
    run.signal(signal.SIGKILL)
    stops = run.wait_record("stop", 2, timeout=5)
    delays = [r.time - t0 for r in stops if r.pid in pids]
    run.wait_exit(5)
    for pid in pids:
        reap_orphan(pid, 5)
    print("server SIGKILL -> worker stop():", ", ".join(f"{d * 1000:.2f} ms" for d in delays))
    # The deadline is SPEC's 10 ms plus scheduling slack on a loaded 2-core box.
    assert max(delays) < 0.25


def test_orphan_timeout_ends_a_stubborn_worker(run_server):
    run = run_server({"workers": 1, "test_mode": "stubborn", "worker_orphan_timeout": 0.5})
    (pid,) = run.wait_workers(1)
    t0 = time.monotonic()
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    reap_orphan(pid, 5)
    took = time.monotonic() - t0
    assert run.of("stop"), "stop() was called"
    assert not run.of("return"), "run() never returned: the orphan timeout ended it"
    assert 0.4 < took < 3.0


def test_graceful_stop_and_hooks_order(run_server):
    run = run_server({"workers": 3})
    pids = run.wait_workers(3)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    # The exit above means every worker was reaped and logged.
    events = [r.event for r in run.records()]
    assert events[0] == "before_run" and events[-1] == "after_run"
    assert {r.pid for r in run.of("return")} == set(pids)
    assert run.log().count("finished with status 0") == 3


def test_escalation_seen_from_inside(run_server):
    """A worker that ignores stop() and survives QUIT: TERM at the graceful
    schedule, QUIT after the graceful timeout, KILL after the immediate one."""
    cfg = {"workers": 1, "test_mode": "stubborn",
           "worker_graceful_kill_interval": 0.2, "worker_graceful_kill_interval_increment": 0.1,
           "worker_graceful_kill_timeout": 0.65,
           "worker_immediate_kill_interval": 0.15, "worker_immediate_kill_interval_increment": 0.05,
           "worker_immediate_kill_timeout": 0.5}
    run = run_server(cfg)
    (pid,) = run.wait_workers(1)
    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    reap_orphan(pid, 1)
    stops = [r.time - t0 for r in run.of("stop")]
    quits = [r.time - t0 for r in run.of("quit")]
    # Expected from SPEC section 5, with the stop requested at ~0:
    # TERM at 0, 0.2, 0.5 (0.2 + 0.3); graceful timeout passes at 0.65:
    # immediate from 0.65: QUIT at 0.65, 0.80, 1.00 (0.8 + 0.2); at 1.15 the
    # immediate timeout (0.65 + 0.5) has passed: KILL at 1.15... the step
    # due at 1.25 (1.0 + 0.25) is the first at or after 1.15: KILL at 1.25.
    expect_term = [0.0, 0.2, 0.5]
    expect_quit = [0.65, 0.80, 1.00]
    assert len(stops) == len(expect_term), stops
    assert len(quits) == len(expect_quit), quits
    deviations = [abs(a - e) for a, e in zip(stops + quits, expect_term + expect_quit)]
    print(f"worst deviation from the schedule: {max(deviations) * 1000:.1f} ms")
    # Each step is due within 10 ms (SPEC); the recorded times also carry the
    # worker's own signal delivery and scheduling, hence the slack.
    assert max(deviations) < 0.1
    assert "signal SIGKILL" in run.log()


@pytest.mark.parametrize("immediately", [True, False])
def test_unrecoverable_exit_code(run_server, immediately):
    run = run_server({"workers": 2, "unrecoverable_exit_codes": [3], "test_exit_code": 3,
                      "stop_immediately_at_unrecoverable_exit": immediately})
    run.wait_log("Worker 0 finished unexpectedly with status 3")
    if not immediately:
        run.wait_workers(1)  # worker 1 goes on; worker 0 is not restarted
        assert len([r for r in run.of("run") if r.worker_id == 0]) == 1
        run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 3


def test_reload_scales_workers_and_reaches_workers(run_server):
    run = run_server({"workers": 2})
    run.wait_workers(2)
    run.write_config({"workers": 4})
    run.signal(signal.SIGUSR2)
    run.wait_workers(4)
    assert len(run.of("reload")) >= 2
    run.write_config({"workers": 1})
    run.signal(signal.SIGUSR2)
    run.wait_workers(1)
    wait_until(lambda: run.log().count("finished with status 0") == 3, 10,
               "three surplus workers stopped")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_bad_config_at_reload_keeps_the_running_one(run_server):
    run = run_server({"workers": 2})
    before = sorted(run.wait_workers(2))
    run.write_config({"workers": "many"})
    run.signal(signal.SIGUSR2)
    run.wait_log("keeping the running configuration")
    run.signal(signal.SIGUSR2)  # and it is still serving signals
    assert sorted(run.wait_workers(2)) == before
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_graceful_restart_replaces_every_worker(run_server):
    run = run_server({"workers": 2})
    before = set(run.wait_workers(2))
    run.signal(signal.SIGUSR1)
    after = wait_until(lambda: (lambda p: p if not (set(p) & before) else None)(
        run.wait_workers(2)), 10, "two new workers")
    assert len(after) == 2
    run.signal(signal.SIGHUP)  # immediate restart: QUIT kills them
    wait_until(lambda: (lambda p: p if not (set(p) & set(after)) else None)(
        run.wait_workers(2)), 10, "two newer workers")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0


def test_heartbeat_timeout_kills_a_worker_holding_the_gil(run_server):
    """The heartbeat thread needs the GIL: a worker stuck in one C call that
    holds it stops beating, and QUIT (whose default action needs no GIL)
    kills it."""
    run = run_server({"workers": 1, "test_mode": "gil_hog", "worker_heartbeat_interval": 0.05,
                      "worker_heartbeat_timeout": 0.5})
    (pid,) = run.wait_workers(1)
    run.wait_log("no heartbeat for 0.5 s")
    run.wait_log("finished unexpectedly with signal SIGQUIT")
    assert not pid_alive(pid)
    run.signal(signal.SIGKILL)


def test_stopped_worker_is_killed_after_the_immediate_timeout(run_server):
    """A SIGSTOPped worker cannot act on QUIT; KILL follows the immediate timeout."""
    run = run_server({"workers": 1, "worker_heartbeat_interval": 0.05,
                      "worker_heartbeat_timeout": 0.3, "worker_immediate_kill_timeout": 0.4,
                      "worker_immediate_kill_interval": 0.1,
                      "worker_immediate_kill_interval_increment": 0})
    (pid,) = run.wait_workers(1)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    run.wait_log("finished unexpectedly with signal SIGKILL")
    took = time.monotonic() - t0
    # heartbeat timeout (<= 0.3 after the last beat) + immediate timeout 0.4
    assert 0.35 < took < 2.0, took
    wait_until(lambda: (lambda p: p if p and pid not in p else None)(run.worker_pids()), 10,
               "the replacement")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_respawn_latency_and_no_leaks(run_server):
    """SIGKILL workers again and again: the count stays exact, no zombies,
    no leaked fds; prints the respawn latency."""
    kills = int(os.environ.get("PYSE_TEST_KILLS", "200"))
    # Backoff off: these kills measure the respawn itself.
    run = run_server({"workers": 4, "log_level": "info", "restart_backoff_base": 0})
    run.wait_workers(4)
    fds_before = open_fds(run.pid)
    latencies = []
    for i in range(kills):
        victim = run.worker_pids()[i % 4]
        n_runs = len(run.of("run"))
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        new = wait_until(lambda: (lambda rs: rs[n_runs:] if len(rs) > n_runs else None)(
            run.of("run")), 10, "a replacement")
        latencies.append(new[0].time - t0)
    pids = run.wait_workers(4)
    assert zombie_children(run.pid) == []
    # The same number of fds (each worker's pipes are new ones, their numbers
    # may differ): nothing piled up.
    assert len(open_fds(run.pid)) == len(fds_before), (fds_before, open_fds(run.pid))
    latencies.sort()
    print(f"respawn latency over {kills} kills: median {statistics.median(latencies)*1000:.2f} ms,"
          f" p99 {latencies[int(len(latencies) * 0.99) - 1]*1000:.2f} ms")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert all(not pid_alive(p) for p in pids)


def test_orphan_holding_the_gil_is_killed_by_the_c_timer(run_server):
    """An orphan whose Python cannot run (one thread holds the GIL forever)
    cannot act on the lifeline; the C loop armed a SIGKILL before it needed
    the GIL."""
    run = run_server({"workers": 1, "test_mode": "gil_hog", "worker_orphan_timeout": 0.3})
    (pid,) = run.wait_workers(1)
    t0 = time.monotonic()
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    reap_orphan(pid, 5)
    took = time.monotonic() - t0
    # orphan timeout 0.3 + ORPHAN_KILL_GRACE 1.0
    assert 1.2 < took < 3.0, took


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_process_server_has_one_thread_while_forking(run_server, tmp_path):
    """The process server forks: a second thread in it could hold a lock
    (a logging handler's, the allocator's) at the instant of fork(), and the
    child would deadlock on it.  So it runs no thread at all, not even with
    a log file and fd 1/2 capture on, while workers start and restart."""
    run = run_server({"workers": 3, "log": str(tmp_path / "tree.log"),
                      "log_stdout": True, "log_stderr": True, "restart_backoff_base": 0})
    run.wait_workers(3)
    assert thread_count(run.pid) == 1
    for i in range(20):
        victim = run.worker_pids()[i % 3]
        n_runs = len(run.of("run"))
        os.kill(victim, signal.SIGKILL)
        samples = []

        def replaced():
            # Sample while the replacement is being forked and started.
            samples.append(thread_count(run.pid))
            return len(run.of("run")) > n_runs
        wait_until(replaced, 10, "a replacement")
        assert set(samples) == {1}, samples
    run.signal(signal.SIGUSR2)
    run.wait_record("reload", 3)
    assert thread_count(run.pid) == 1
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def blocked_signals(pid: int, tid: int | None = None) -> int:
    """SigBlk of a process (or one of its threads) from /proc."""
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk in {path}")


def test_threads_and_programs_of_a_worker_inherit_no_blocked_signal(run_server):
    """The server blocks its signals across fork; the worker's set-up must
    unblock them before any thread starts.  A program that reload() starts
    (from the worker's hook thread) has nothing blocked, and TERM ends it."""
    run = run_server({"workers": 1, "test_reload_spawns": True})
    (pid,) = run.wait_workers(1)
    run.signal(signal.SIGUSR2)
    spawned = wait_until(lambda: [r for r in run.records() if r.event.startswith("spawned:")],
                         10, "reload() to start its program")
    child = int(spawned[0].event.partition(":")[2])
    try:
        assert blocked_signals(child) == 0, f"the program started by reload() has " \
            f"SigBlk {blocked_signals(child):016x}"
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            assert blocked_signals(pid, tid) == 0, f"worker thread {tid} blocks " \
                f"{blocked_signals(pid, tid):016x}"
        os.kill(child, signal.SIGTERM)
        wait_until(lambda: not pid_alive(child) or zombie_children(pid) == [child], 10,
                   "TERM to end the program")
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    reap_orphan(child, 5)   # the worker exited without reaping it: it is ours now


def test_an_orphaned_worker_calls_stop_once(run_server):
    """The server's death reaches a worker twice (the lifeline's hangup and
    PR_SET_PDEATHSIG's TERM): stop() runs once, and the log says it once.
    The worker ignores its stop, so both had time to call it twice."""
    run = run_server({"workers": 1, "test_mode": "stubborn", "worker_orphan_timeout": 0.5})
    (pid,) = run.wait_workers(1)
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    reap_orphan(pid, 5)
    assert len([r for r in run.of("stop") if r.pid == pid]) == 1, run.of("stop")
    assert run.log().count("is gone; stopping") == 1
