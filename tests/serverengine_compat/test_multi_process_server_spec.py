"""ServerEngine's spec/multi_process_server_spec.rb, ported.

The Ruby spec runs each example against MultiThreadServer and
MultiProcessServer; here ``worker_type`` "thread" and "process" play those
parts.  The server runs in a program (tests/programs/se_context.py, no
server module, as ``impl_class.new(TestWorker)``); ``s.reload``,
``s.restart(true)`` and ``s.stop(true)`` are USR2, USR1 and TERM, and the
configuration block is the program's config file, re-read at each of them.
"""
from __future__ import annotations

import signal

import pytest

IMPLEMENTATIONS = ["thread", "process"]


def start_server(se_run, worker_type, worker="TestWorker", **config):
    base = {"test_server": None, "test_worker": worker, "worker_type": worker_type,
            "log_stdout": False, "log_stderr": False, **config}
    return se_run(base), base


def stop_server(run):
    run.signal(signal.SIGTERM)
    assert run.exit_status() == 0, run.diagnosis()


@pytest.mark.parametrize("worker_type", IMPLEMENTATIONS)
def test_scale_up(se_run, worker_type):
    """scale up"""
    run, config = start_server(se_run, worker_type, workers=2)
    run.wait_state("worker_run", 2)

    run.write_config({**config, "workers": 3})
    run.signal(signal.SIGUSR2)
    run.wait_state("worker_run", 3)
    # every running worker was reloaded, none stopped
    run.wait_state("worker_reload", 2)
    assert run.test_state("worker_stop") == 0

    stop_server(run)
    run.assert_states(worker_run=3, worker_stop=3)


@pytest.mark.parametrize("worker_type", IMPLEMENTATIONS)
def test_scale_down(se_run, worker_type):
    """scale down"""
    run, config = start_server(se_run, worker_type, workers=2)
    run.wait_state("worker_run", 2)

    run.write_config({**config, "workers": 1})
    run.signal(signal.SIGUSR1)   # s.restart(true)
    run.wait_state("worker_run", 3)
    assert run.wait_state("worker_stop", 2) == 2

    stop_server(run)
    run.assert_states(worker_run=3, worker_stop=3)


@pytest.mark.parametrize("worker_type", IMPLEMENTATIONS)
def test_raises_system_exit_when_all_workers_exit_with_specified_code_by_unrecoverable_exit_codes(
        se_run, worker_type):
    """raises SystemExit when all workers exit with specified code by unrecoverable_exit_codes"""
    # ServerEngine leaves this pending for MultiThreadServer (a thread cannot
    # exit! alone); a pyse thread worker reports its code with sys.exit(n).
    run, _ = start_server(se_run, worker_type, worker="TestExitWorker", workers=4,
                          unrecoverable_exit_codes=[3, 4, 5], test_exit_step=0.3)
    run.wait_state("worker_run", 4)
    assert run.exit_status() == 3, run.diagnosis()   # the 4th worker's status
    run.assert_states(worker_run=4, worker_stop=0)


@pytest.mark.parametrize("worker_type", IMPLEMENTATIONS)
def test_raises_system_exit_immediately_when_a_worker_exits_if_stop_immediately_at_unrecoverable_exit_specified(  # noqa: E501
        se_run, worker_type):
    """raises SystemExit immediately when a worker exits if
    stop_immediately_at_unrecoverable_exit specified"""
    run, _ = start_server(se_run, worker_type, worker="TestExitWorker", workers=4,
                          unrecoverable_exit_codes=[3, 4, 5], test_exit_step=0.5,
                          stop_immediately_at_unrecoverable_exit=True)
    run.wait_state("worker_run", 4)
    assert run.exit_status() == 5, run.diagnosis()   # the 1st worker's status
    run.assert_states(worker_stop=3, worker_finished=3)
