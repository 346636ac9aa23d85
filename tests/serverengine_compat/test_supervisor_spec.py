"""ServerEngine's spec/supervisor_spec.rb, ported.

The Ruby spec builds a Supervisor (or a Daemon) in the test process and runs
its main() on a thread; here the same modules (tests/programs/se_context.py)
run in a program with ``supervisor: true``, and the test signals it through
a pyse.Daemon built on its pid file, as ``sv.stop(true)`` & co. do.  The
spec's ``wait_for_fork`` (sleep 0.8) becomes a wait for the worker's run().
"""
from __future__ import annotations

import signal

import pytest

from context_harness import controller, wait_pid_file

SENDERS = ["signal", "pipe"]


def start_supervisor(se_run, worker=None, **config):
    """The spec's start_supervisor: TestServer, the worker module (TestWorker
    by default), ServerEngine's default worker type (embedded)."""
    return se_run({"supervisor": True, **config, "test_worker": worker or "TestWorker"})


def sender_config(sender):
    # pyse has no "pipe" command sender (ServerEngine's way to reach a server
    # on Windows): the key is kept as a user key and commands travel as signals.
    return {"command_sender": sender}


def started(se_run, worker=None, **config):
    """A supervisor whose server's worker is running; returns (run, controller)."""
    run = start_supervisor(se_run, worker, **config)
    run.wait_state("worker_run")
    wait_pid_file(run)
    return run, controller(run.pid_path)


def stopped(run, dm, graceful=True):
    dm.stop(graceful)
    assert run.exit_status() == 0, run.diagnosis()


# -- logger options ------------------------------------------------------------------
def start_daemon(se_run, **config):
    """The spec's start_daemon: Daemon.new(nil, TestWorker, config)."""
    run = se_run({"test_server": None, **config})
    run.wait_state("worker_run")
    return run


def test_when_log_io_option_is_given_can_start(se_run):
    """when :log=IO option is given: can start"""
    run = start_daemon(se_run, test_log_stream="stdout")
    run.signal(signal.SIGTERM)   # daemon.server.stop(true)
    assert run.exit_status() == 0
    assert run.test_state("worker_run") == 1
    # pyse's counterpart of ServerEngine::DaemonLogger is a logging.Logger it builds.
    assert run.detail("server_logger") == "built logging.Logger"
    assert "Received graceful stop" in run.output()   # the log went to that stream


def test_when_logger_option_is_given_uses_specified_logger_instance(se_run):
    """when :logger option is given: uses specified logger instance"""
    run = start_daemon(se_run, test_logger_stream="stdout")
    run.signal(signal.SIGTERM)
    assert run.exit_status() == 0
    assert run.test_state("worker_run") == 1
    assert run.detail("server_logger") == "given"


def test_when_both_logger_and_log_options_are_given_start_ignoring_log(se_run, tmp_path):
    """when both :logger and :log options are given: start ignoring :log"""
    run = start_daemon(se_run, test_logger_stream="stdout", log=str(tmp_path / "ignored.log"))
    run.signal(signal.SIGTERM)
    assert run.exit_status() == 0
    assert run.test_state("worker_run") == 1
    assert run.detail("server_logger") == "given"
    assert not (tmp_path / "ignored.log").exists()


# -- signal (and pipe) command senders -----------------------------------------------
@pytest.mark.parametrize("sender", SENDERS)
def test_start_and_graceful_stop(se_run, sender):
    """when using #{sender} as command_sender: start and graceful stop"""
    run, sv = started(se_run, **sender_config(sender))
    assert run.test_state("server_before_run") == 1
    run.wait_state("server_after_start")   # counted in the supervisor (the parent)
    stopped(run, sv)
    run.assert_states(server_stop=1, server_stop_graceful=1, server_restart=0, server_after_run=1,
                      server_after_start=1)


@pytest.mark.parametrize("sender", SENDERS)
def test_immediate_stop(se_run, sender):
    """when using #{sender} as command_sender: immediate stop"""
    run, sv = started(se_run, **sender_config(sender))
    stopped(run, sv, graceful=False)
    # Deliberate: an embedded worker is a thread, which has no immediate stop;
    # the server takes QUIT as a graceful stop and says so (docs/worker-types.md).
    run.assert_states(server_stop=1, server_stop_graceful=1, server_stop_immediate=0,
                      server_after_run=1, server_after_start=1)
    assert "workers have no immediate stop; stopping gracefully" in run.log()


@pytest.mark.parametrize("sender", SENDERS)
def test_graceful_restart(se_run, sender):
    """when using #{sender} as command_sender: graceful restart"""
    run, sv = started(se_run, **sender_config(sender))
    sv.restart(True)
    run.wait_state("server_restart_graceful")
    run.wait_state("worker_run", 2)   # the restarted worker runs before the stop
    stopped(run, sv)
    run.assert_states(server_stop=1, server_restart_graceful=1, server_before_run=1,
                      server_after_run=1, server_after_start=1)


@pytest.mark.parametrize("sender", SENDERS)
def test_immediate_restart(se_run, sender):
    """when using #{sender} as command_sender: immediate restart"""
    run, sv = started(se_run, **sender_config(sender))
    sv.restart(False)
    # Deliberate: HUP restarts an embedded worker gracefully (a thread has no
    # immediate stop), so the hook hears stop_graceful=True (docs/worker-types.md).
    run.wait_state("server_restart_graceful")
    run.wait_state("worker_run", 2)
    stopped(run, sv)
    run.assert_states(server_stop=1, server_restart=1, server_restart_immediate=0,
                      server_before_run=1, server_after_run=1, server_after_start=1)


@pytest.mark.parametrize("sender", SENDERS)
def test_reload(se_run, sender):
    """when using #{sender} as command_sender: reload"""
    run, sv = started(se_run, **sender_config(sender))
    sv.reload()
    sv.stop(True)   # at once, as the spec does: the reload must not be lost
    assert run.exit_status() == 0, run.diagnosis()
    run.assert_states(server_stop=1, server_reload=1)


@pytest.mark.parametrize("sender", SENDERS)
def test_auto_restart_in_limited_ratio(se_run, sender):
    """when using #{sender} as command_sender: auto restart in limited ratio"""
    run, sv = started(se_run, "RunErrorWorker", server_restart_wait=1, **sender_config(sender))
    runs = run.wait_record("worker_run", 4, timeout=20)[:4]
    stopped(run, sv)
    # Deliberate: a raising embedded run() is a worker crash that the server
    # handles itself; its process is not restarted, so server_restart_wait
    # does not pace it (the crash-loop backoff does).
    assert run.test_state("server_before_run") == 1
    gaps = [b.time - a.time for a, b in zip(runs, runs[1:])]
    # Limited: after the immediate first restart each wait doubles.
    assert gaps[1] >= 0.05 and gaps[2] >= 1.5 * gaps[1], gaps


def test_initialize_error(se_run):
    """initialize error"""
    run = se_run({"supervisor": True, "test_server": "InitializeErrorServer"})
    # ServerEngine raises out of main(); pyse's Daemon.main() returns a start
    # failure's status (docs/supervisor.md, "Startup order").
    assert run.exit_status(timeout=3) != 0
    assert "error test" in run.output() + run.log()
