"""worker_type "embedded" end to end: the main thread runs worker 0 (issue 4)."""
from __future__ import annotations

import signal
import time

import pytest

from recorder_harness import children_of, wait_until

pytestmark = pytest.mark.timeout(60)

EMBEDDED = {"worker_type": "embedded"}


def test_term_stops_the_worker_and_hooks_run_in_order(run_hooks):
    run = run_hooks(EMBEDDED)
    run.wait_record("run")
    assert children_of(run.pid) == [], "an embedded server forks nothing"
    assert "run_thread_MainThread" in run.events(0), "run() is on the main thread"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert run.events() == ["server_initialize", "before_run", "run_thread_MainThread", "run",
                            "server_stop_graceful", "stop_thread_pyse-worker-0-stop", "stop",
                            "return", "after_run"]
    assert "Worker 0 finished with status 0" in run.log()


def test_quit_is_a_graceful_stop(run_hooks):
    run = run_hooks(EMBEDDED)
    run.wait_record("run")
    run.signal(signal.SIGQUIT)
    assert run.wait_exit(10) == 0
    assert run.of("stop") and run.of("return"), "stop() was called and run() returned"
    assert "no immediate stop; stopping gracefully" in run.log()


@pytest.mark.parametrize("signo", [signal.SIGUSR1, signal.SIGHUP])
def test_restart_runs_a_new_worker_with_the_reloaded_config(run_hooks, signo):
    run = run_hooks(dict(EMBEDDED, workers=1))
    first = run.wait_record("run")[0]
    run.write_config(dict(EMBEDDED, workers=3))
    run.signal(signo)
    run.wait_record("run", 2)
    events = run.events()
    assert events.index("server_restart") < events.index("config_workers_3") < \
        events.index("return") < len(events) - 1 - events[::-1].index("run")
    assert children_of(run.pid) == []
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert first.pid == run.pid


def test_reload_reaches_the_worker_while_run_holds_the_main_thread(run_hooks):
    run = run_hooks(EMBEDDED)
    run.wait_record("run")
    run.write_config(dict(EMBEDDED, workers=2))
    run.signal(signal.SIGUSR2)
    run.wait_record("reload")
    assert "config_workers_2" in run.events()
    assert len(run.of("run")) == 1, "a reload does not restart the worker"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_signals_work_while_run_blocks_the_main_thread(run_hooks, signo):
    """run() sits in one wait without a timeout on the main thread, where
    Python would run its signal handlers: the control thread still gets the
    signal and stop() ends the wait."""
    run = run_hooks(dict(EMBEDDED, test_block=True))
    run.wait_record("run")
    t0 = time.monotonic()
    run.signal(signo)
    returned = run.wait_record("return", timeout=10)[0]
    assert run.wait_exit(10) == 0
    print(f"signal -> run() returned: {(returned.time - t0) * 1000:.2f} ms")
    assert returned.time - t0 < 2.0


def test_run_raising_is_logged_and_run_again(run_hooks):
    run = run_hooks(dict(EMBEDDED, test_raise_once=True))
    run.wait_record("run", 2)
    run.wait_log("Worker 0 finished unexpectedly with an exception (RuntimeError: first run fails)")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_unrecoverable_exit_code_ends_the_server(run_hooks):
    run = run_hooks(dict(EMBEDDED, test_exit_code=7, unrecoverable_exit_codes=[7]))
    assert run.wait_exit(10) == 7
    assert len(run.of("run")) == 1
    assert run.events()[-1] == "after_run"


def test_broken_config_at_reload_leaves_the_server_unchanged(run_hooks):
    run = run_hooks(dict(EMBEDDED, workers=1))
    run.wait_record("run")
    run.config_path.write_text("{not json")
    run.signal(signal.SIGUSR2)
    run.wait_log("keeping the running configuration")
    run.wait_record("reload")  # the worker's reload() still runs
    assert "config_workers_1" in run.events()
    run.write_config(dict(EMBEDDED, workers=1, worker_type="thread"))
    run.signal(signal.SIGUSR2)
    wait_until(lambda: "needs a restart" in run.log(), 10, "the restart-only warning")
    assert len(run.of("run")) == 1 and run.proc.poll() is None
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_embedded_is_the_default_worker_type():
    import pyse
    from pyse.embedded_server import EmbeddedServer

    class Plain:
        def run(self):
            pass
    daemon = pyse.create(None, Plain)
    assert daemon.config["worker_type"] == "embedded"
    assert issubclass(daemon.server_class, EmbeddedServer)


def test_near_miss_keys_are_logged_at_start(run_hooks):
    run = run_hooks(dict(EMBEDDED, worker=2, log_levle="info"))
    run.wait_record("run")
    run.wait_log("Unknown config key 'worker': did you mean 'workers'?")
    run.wait_log("Unknown config key 'log_levle': did you mean 'log_level'?")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
