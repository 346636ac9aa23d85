"""worker_type "spawn" end to end: one external command per worker (issue 4)."""
from __future__ import annotations

import os
import pwd
import signal
import sys
import time

import pytest

from helpers import cmdline, environ_of
from pyse.spawn_server import CommandLauncher
from recorder_harness import open_fds, reap_orphan, wait_until

pytestmark = pytest.mark.timeout(60)

SPAWN = {"worker_type": "spawn"}


def commands(run):
    """The live spawned commands: children of the server running --child."""
    return [p for p in run.worker_pids() if "--child" in cmdline(p)]


def test_term_stops_every_command_and_hooks_run_in_order(run_hooks):
    run = run_hooks(dict(SPAWN, workers=2))
    run.wait_record("run", 2)
    pids = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(commands(run)), 10,
                      "two spawned commands")
    assert {r.pid for r in run.of("run")} == set(pids)
    for pid in pids:
        env = environ_of(pid)
        fd = int(env["PYSE_HEARTBEAT_FD"])
        assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"), \
            "the heartbeat fd is open in the command"
        assert float(env["PYSE_HEARTBEAT_INTERVAL"]) == 1.0
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    events = run.events()
    assert events[:2] == ["server_initialize", "before_run"] and events[-1] == "after_run"
    assert events.index("server_stop_graceful") < events.index("stop")
    assert sorted(r.pid for r in run.of("return")) == sorted(pids)
    assert run.log().count("finished with status 0") == 2


def test_a_killed_command_is_restarted(run_hooks):
    run = run_hooks(dict(SPAWN, workers=1))
    (first,) = [r.pid for r in run.wait_record("run")]
    os.kill(first, signal.SIGKILL)
    run.wait_record("run", 2)
    run.wait_log("Worker 0 finished unexpectedly with signal SIGKILL")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_reload_sends_worker_reload_signal(run_hooks):
    run = run_hooks(dict(SPAWN, workers=2, worker_reload_signal="USR1"))
    run.wait_record("run", 2)
    run.signal(signal.SIGUSR2)
    reloads = run.wait_record("reload", 2)
    assert sorted(r.worker_id for r in reloads) == [0, 1]
    assert "config_workers_2" in run.events()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_heartbeat_timeout_applies_once_a_command_has_beaten(run_hooks):
    """Worker 1's command beats once and goes silent: it is stopped at the
    timeout.  Worker 0's never beats: by then it has been silent as long,
    and it runs on."""
    run = run_hooks(dict(SPAWN, workers=2, test_spawn_beat=[1], worker_heartbeat_timeout=0.5,
                         worker_immediate_kill_interval=0.2, worker_immediate_kill_timeout=0.5))
    run.wait_record("run", 2)
    run.wait_log("writes heartbeats: its heartbeat timeout now applies")
    run.wait_log("no heartbeat for 0.5 s, stopping it immediately")
    run.wait_log("Worker 1 finished unexpectedly with signal")
    assert len([r for r in run.of("run") if r.worker_id == 0]) == 1
    assert all("Worker 0" not in line for line in run.log().splitlines()
               if "no heartbeat" in line)
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_a_missing_command_at_the_first_start_fails_the_start(run_hooks):
    run = run_hooks(dict(SPAWN, workers=1, test_spawn_missing=True))
    run.wait_log("cannot run '/nonexistent/pyse-test-command': No such file or directory")
    assert run.wait_exit(10) == 3
    run.wait_log("The first start of the workers failed (worker 0 failed to start: it ended "
                 "with status 127 before it was up): stopping")


def test_a_command_missing_later_is_logged_and_retried_with_backoff(run_hooks):
    run = run_hooks(dict(SPAWN, workers=1, test_spawn_missing="later", restart_backoff_base=0.2))
    run.wait_log("cannot run '/nonexistent/pyse-test-command': No such file or directory")
    run.wait_log("finished unexpectedly with status 127")
    run.wait_log("restarting it in")
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_commands_get_term_when_the_server_is_killed(run_hooks):
    run = run_hooks(dict(SPAWN, workers=2))
    run.wait_record("run", 2)
    pids = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(commands(run)), 10,
                      "two spawned commands")
    t0 = time.monotonic()
    run.signal(signal.SIGKILL)
    run.wait_exit(5)
    stops = run.wait_record("stop", 2, timeout=10)
    for pid in pids:
        reap_orphan(pid, 10)
    print("server SIGKILL -> command TERM:",
          ", ".join(f"{(r.time - t0) * 1000:.1f} ms" for r in stops))
    assert {r.pid for r in stops} == set(pids)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_commands_run_as_worker_chuser(run_hooks):
    nobody = pwd.getpwnam("nobody")
    run = run_hooks(dict(SPAWN, workers=1, worker_chuser="nobody", worker_chumask="027",
                         test_spawn_cmd=["/bin/sleep", "60"]))
    pid = wait_until(lambda: (lambda c: c[0] if c else None)(
        [p for p in run.worker_pids() if cmdline(p).startswith("/bin/sleep")]), 10,
        "the spawned command")
    status = open(f"/proc/{pid}/status").read().splitlines()
    uids = next(line for line in status if line.startswith("Uid:")).split()[1:]
    umask = next(line for line in status if line.startswith("Umask:")).split()[1]
    assert uids == [str(nobody.pw_uid)] * 4
    assert umask == "0027"
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    assert "Worker 0 finished with signal SIGTERM" in run.log()


# -- process_manager.spawn's arguments, without a server --------------------------
class FakeServer:
    def __init__(self):
        self.calls = []

    def spawn_command(self, worker_id, argv, env):
        self.calls.append((worker_id, argv, env))
        return 4242, True


@pytest.mark.parametrize("args, argv", [
    (({"A": "1"}, "prog", "x y"), ["prog", "x y"]),
    ((None, "prog"), ["prog"]),
    (("prog", "arg"), ["prog", "arg"]),
    ((None, "echo hello | wc"), ["/bin/sh", "-c", "echo hello | wc"]),
])
def test_process_manager_spawn_arguments(args, argv):
    server = FakeServer()
    manager = CommandLauncher(server, 3)
    assert manager.spawn(*args) == 4242
    (wid, got_argv, env), = server.calls
    assert (wid, got_argv) == (3, argv)
    assert env["PATH"] == os.environ["PATH"], "the server's environment is passed on"
    if isinstance(args[0], dict):
        assert env["A"] == "1"


def test_process_manager_spawn_none_removes_a_variable(monkeypatch):
    monkeypatch.setenv("PYSE_TEST_DROP_ME", "x")
    server = FakeServer()
    CommandLauncher(server, 0).spawn({"PYSE_TEST_DROP_ME": None, "B": 2}, "prog")
    env = server.calls[0][2]
    assert "PYSE_TEST_DROP_ME" not in env and env["B"] == "2"


def test_process_manager_spawns_once_and_needs_a_command():
    manager = CommandLauncher(FakeServer(), 0)
    with pytest.raises(ValueError, match="needs a command"):
        manager.spawn({})
    manager.spawn({}, "prog")
    with pytest.raises(RuntimeError, match="already started pid 4242"):
        manager.spawn({}, "prog")


def test_restarting_commands_leak_no_fd(run_hooks):
    """A command that exits at once is restarted again and again: the
    server's fds (heartbeat pipes, exec-error pipes) do not pile up."""
    run = run_hooks(dict(SPAWN, workers=2, test_spawn_cmd=["/bin/true"], log_level="info",
                         restart_backoff_base=0))
    wait_until(lambda: run.log().count("finished unexpectedly with status 0") >= 20, 20,
               "20 exits")
    early = len(open_fds(run.pid))
    wait_until(lambda: run.log().count("finished unexpectedly with status 0") >= 200, 30,
               "200 exits")
    late = len(open_fds(run.pid))
    print(f"server fds after 20 exits: {early}, after 200: {late}")
    # A start in progress holds up to two pipes (heartbeat, exec error) and
    # each live command one heartbeat fd: readings vary by a few.  A leak of
    # one fd per start would add 180.
    assert late <= early + 6
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0


def test_a_command_ignoring_term_is_escalated_to_quit(run_hooks):
    ignore_term = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)")
    run = run_hooks(dict(SPAWN, workers=1, worker_graceful_kill_interval=0.1,
                         worker_graceful_kill_timeout=0.3,
                         test_spawn_cmd=[sys.executable, "-c", ignore_term]))
    run.wait_log("ready")
    t0 = time.monotonic()
    run.signal(signal.SIGTERM)
    assert run.wait_exit(10) == 0
    took = time.monotonic() - t0
    log = run.log()
    assert "still alive 0.3 s after a graceful stop" in log
    assert "Worker 0 finished with signal SIGQUIT" in log
    assert 0.25 < took < 5.0, took


def test_read_until_exec_reports_success_failure_and_a_child_that_hangs():
    from pyse.spawn_server import read_until_exec

    r, w = os.pipe()
    os.write(w, b"No such file")
    os.close(w)
    assert read_until_exec(r, 5) == b"No such file"
    os.close(r)
    r, w = os.pipe()
    os.close(w)
    assert read_until_exec(r, 5) == b""
    os.close(r)
    r, w = os.pipe()  # the write end stays open: a child stuck before exec
    try:
        assert read_until_exec(r, 0.05) is None
    finally:
        os.close(r)
        os.close(w)
