"""ServerEngine's spec/multi_spawn_server_spec.rb, ported: ``worker_type:
"spawn"``, where TestWorker's spawn(process_manager) starts this program
again as the worker's command (tests/programs/se_context.py --child)."""
from __future__ import annotations

import signal


def test_with_command_sender_pipe_starts_worker_processes(se_run):
    """with command_sender=pipe: starts worker processes"""
    # pyse has no "pipe" command sender (ServerEngine sends its spawned Ruby
    # workers commands on their stdin); the key is kept as a user key, and
    # the commands get TERM instead.
    run = se_run({"test_server": None, "worker_type": "spawn", "workers": 2,
                  "command_sender": "pipe", "log_stdout": False, "log_stderr": False})
    runs = run.wait_record("worker_run", 2, timeout=5)
    assert {r.worker_id for r in runs} == {0, 1}
    assert run.test_state("worker_run") == 2
    run.signal(signal.SIGTERM)   # s.stop(true)
    assert run.exit_status() == 0, run.diagnosis()
    assert run.test_state("worker_stop") == 2
