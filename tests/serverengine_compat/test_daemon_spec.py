"""ServerEngine's spec/daemon_spec.rb, ported.

ServerEngine's spec calls ``Daemon#main`` in the test process, which with
``daemonize: true`` returns once the daemon is up; here a program
(tests/programs/se_context.py) does that, and the test controls the daemon
through a pyse.Daemon built on the same pid file, as ``dm.stop(true)`` & co.
do.  Waits are for the counts themselves, not the spec's sleeps.
"""
from __future__ import annotations


import helpers
from context_harness import controller, wait_pid_file


def daemon_up(se_run, sender):
    """The daemon of the spec (TestServer, TestWorker, daemonize, a pid
    file), up, with its worker running; returns (run, dm, daemon pid)."""
    # pyse has no "pipe" command sender (ServerEngine's way to reach a server
    # on Windows): the key is kept as a user key and commands travel as signals.
    run = se_run({"daemonize": True, "command_sender": sender,
                  # CONT writes no sigdump file into /tmp (the dump hook still runs)
                  "disable_sigdump": True})
    assert run.exit_status() == 0, run.diagnosis()   # dm.main returns once it is up
    run.wait_state("worker_run")
    return run, controller(run.pid_path), wait_pid_file(run)


def graceful_stop_by(se_run, sender):
    run, dm, pid = daemon_up(se_run, sender)
    assert run.test_state("server_initialize") == 1
    dm.stop(True)
    helpers.wait_pid_exit(pid, 10)
    run.assert_states(server_stop_graceful=1, worker_stop=1, server_after_run=1)


def commands_by(se_run, sender, *, dump):
    run, dm, pid = daemon_up(se_run, sender)
    dm.reload()
    assert run.wait_state("server_reload") == 1

    dm.restart(True)
    assert run.wait_state("server_restart_graceful") == 1
    run.wait_state("worker_run", 2)

    dm.restart(False)
    # Deliberate: HUP restarts an embedded worker gracefully (a thread has no
    # immediate stop), so the hook hears stop_graceful=True (docs/worker-types.md).
    assert run.wait_state("server_restart_graceful", 2) == 2
    assert run.test_state("server_restart_immediate") == 0
    run.wait_state("worker_run", 3)

    if dump:
        dm.dump()
        assert run.wait_state("server_dump") == 1

    dm.stop(False)
    helpers.wait_pid_exit(pid, 10)
    # Deliberate: QUIT stops an embedded worker gracefully, for the same reason.
    run.assert_states(server_stop_graceful=1, server_stop_immediate=0)
    assert "workers have no immediate stop; stopping gracefully" in run.log()


def test_run_and_graceful_stop_by_signal(se_run):
    """run and graceful stop by signal"""
    graceful_stop_by(se_run, "signal")


def test_signals(se_run):
    """signals"""
    commands_by(se_run, "signal", dump=True)


def test_run_and_graceful_stop_by_pipe(se_run):
    """run and graceful stop by pipe"""
    graceful_stop_by(se_run, "pipe")


def test_recieve_commands_from_pipe(se_run):
    """recieve commands from pipe"""
    commands_by(se_run, "pipe", dump=False)


def test_exits_with_status_0_when_it_was_stopped_normally(se_run):
    """exits with status 0 when it was stopped normally"""
    run = se_run({"daemonize": False, "supervisor": False, "log_stdout": False,
                  "log_stderr": False, "unrecoverable_exit_codes": [3, 4, 5],
                  # The spec stops the daemon as soon as its pid is known; a
                  # slow initialize() keeps that moment before the server's
                  # start however the processes are scheduled.
                  "test_initialize_delay": 1.0})
    wait_pid_file(run)
    controller(run.pid_path).stop(True)
    assert run.exit_status() == 0
    assert run.detail("main_returned") == "status=0"


def exits_with_the_workers_status(se_run, supervisor):
    run = se_run({"daemonize": False, "supervisor": supervisor, "worker_type": "process",
                  "test_worker": "TestExitWorker", "test_exit_step": 0.3,
                  "log_stdout": False, "log_stderr": False, "unrecoverable_exit_codes": [3, 4, 5]})
    assert run.exit_status() == 5, run.diagnosis()
    assert run.detail("main_returned") == "status=5"


def test_exits_with_status_of_workers_if_worker_exits_with_status_specified_in_unrecoverable_exit_codes_without_supervisor(se_run):  # noqa: E501
    """exits with status of workers if worker exits with status specified in
    unrecoverable_exit_codes, without supervisor"""
    exits_with_the_workers_status(se_run, supervisor=False)


def test_exits_with_status_of_workers_if_worker_exits_with_status_specified_in_unrecoverable_exit_codes_with_supervisor(se_run):  # noqa: E501
    """exits with status of workers if worker exits with status specified in
    unrecoverable_exit_codes, with supervisor"""
    exits_with_the_workers_status(se_run, supervisor=True)
