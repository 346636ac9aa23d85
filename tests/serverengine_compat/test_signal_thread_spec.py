"""ServerEngine's spec/signal_thread_spec.rb, ported to what it means in pyse.

ServerEngine::SignalThread is Ruby plumbing: a thread that runs the Ruby
blocks trapped for each signal.  pyse has no such public object; its
counterpart is how a server reacts to signals: the C core's handler writes
to a self-pipe, a control thread reads it and the server runs its reaction
(and the user's hooks) on a server thread (docs/worker-types.md, "How
signals reach a server whose main thread is busy").  So each example runs a
server (tests/programs/se_context.py, embedded unless said) whose hooks are
the "handlers": ``dump()`` for CONT, ``reload()`` for USR2.
"""
from __future__ import annotations

import os
import signal
import threading

# CONT writes no sigdump file into /tmp in these tests; the dump() hook,
# which is the handler here, still runs.
NO_SIGDUMP = {"disable_sigdump": True}


def stop_and_wait(run):
    run.signal(signal.SIGTERM)
    assert run.exit_status() == 0, run.diagnosis()


def test_start_and_stop(se_run):
    """start and stop"""
    # The signal handling starts with the server and stops with it: once
    # main() has returned, the process catches what it caught before, and
    # the control thread has ended (t.stop; t.join).
    run = se_run({})
    run.wait_state("worker_run")
    stop_and_wait(run)
    assert run.detail("signal_handling_after_main") == "restored"
    assert run.detail("threads_after_main") == "MainThread"


def test_call_handler(se_run):
    """call handler"""
    run = se_run(NO_SIGDUMP)
    run.wait_state("worker_run")
    run.signal(signal.SIGCONT)
    run.wait_state("server_dump")
    stop_and_wait(run)
    assert run.test_state("server_dump") == 1


def test_sig_ign(se_run):
    """SIG_IGN"""
    # A process worker's run() owns its main thread and may ignore QUIT with
    # SIG_IGN; pyse leaves that alone, so the worker survives the QUIT.
    run = se_run({"worker_type": "process", "test_worker": "QuitIgnoringWorker"})
    worker_pid = run.wait_record("worker_run")[0].pid
    os.kill(worker_pid, signal.SIGQUIT)
    # A later signal handled by the same process shows that QUIT did not end
    # it (a pending QUIT, the lower number, is delivered first).
    os.kill(worker_pid, signal.SIGUSR2)
    assert run.wait_record("worker_reload")[0].pid == worker_pid
    assert run.test_state("worker_run") == 1
    stop_and_wait(run)


def test_signal_in_handler(se_run):
    """signal in handler"""
    # ResignallingServer's dump() sends CONT again while it ran fewer than
    # four times: three signals sent from inside the handler, none lost.
    run = se_run({**NO_SIGDUMP, "test_server": "ResignallingServer"})
    run.wait_state("worker_run")
    run.signal(signal.SIGCONT)
    run.wait_state("server_dump", 4)
    stop_and_wait(run)
    assert run.test_state("server_dump") == 4


def test_stop_in_handler(se_run):
    """stop in handler"""
    # StopInReloadServer's reload() stops the server: the server ends cleanly.
    run = se_run({"test_server": "StopInReloadServer"})
    run.wait_state("worker_run")
    run.signal(signal.SIGUSR2)
    assert run.exit_status() == 0, run.diagnosis()
    run.assert_states(server_reload=1, server_stop_graceful=1, worker_stop=1)


def test_should_not_deadlock(se_run):
    """should not deadlock"""
    run = se_run(NO_SIGDUMP)
    run.wait_state("worker_run")

    def send_ten():
        for _ in range(10):
            os.kill(run.pid, signal.SIGCONT)

    senders = [threading.Thread(target=send_ten) for _ in range(10)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(10)
    run.wait_state("server_dump")
    stop_and_wait(run)   # still answers: no deadlock
    # not 100: the kernel merges a signal sent while one is pending
    assert 1 <= run.test_state("server_dump") <= 100
