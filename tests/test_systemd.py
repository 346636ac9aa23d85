"""systemd's notification protocol through real ``pyse run`` processes: the
messages arrive on a datagram socket the test owns (a path, or a name in
the abstract namespace), each with its sender's pid, so the tests can check
what systemd would accept (NotifyAccess=main: the main process only)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import helpers
from ops_harness import APP, NotifyListener, is_key, pids_of_workers, start_pyse
from pyse import systemd
from test_cli import pyse_command, write

pytestmark = pytest.mark.timeout(120)



@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write(tmp_path, "app.py", APP)
    return tmp_path


def status_is(text: str):
    return lambda message: message.get("STATUS") == text


def usec_now() -> int:
    return time.monotonic_ns() // 1000


# -- the environment -----------------------------------------------------------------------

def test_the_variables_are_read_once_and_removed():
    env = {"NOTIFY_SOCKET": "@sd", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42",
           "OTHER": "x"}
    notifier = systemd.Notifier.from_environment(env, pid=42)
    assert env == {"OTHER": "x"}
    assert notifier.address == "\0sd" and notifier.watchdog_interval == 2.0
    assert notifier.setup_problems == []


def test_a_path_socket_and_a_watchdog_meant_for_another_process():
    env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}
    notifier = systemd.Notifier.from_environment(env, pid=42)
    assert notifier.address == "/run/notify" and notifier.watchdog_interval is None
    assert systemd.Notifier.from_environment({"WATCHDOG_USEC": "5"}) is None


@pytest.mark.parametrize("env, problem", [
    ({"NOTIFY_SOCKET": "relative/path"}, "expected an absolute path or @name"),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"}, "WATCHDOG_USEC='soon'"),
    ({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "10", "WATCHDOG_PID": "me"}, "WATCHDOG_PID='me'"),
])
def test_bad_values_are_problems_to_log_not_errors(env, problem):
    notifier = systemd.Notifier.from_environment(env, pid=1)
    assert notifier is not None and notifier.watchdog_interval is None
    assert any(problem in text for text in notifier.setup_problems), notifier.setup_problems


def test_a_send_to_a_missing_socket_fails_quietly(tmp_path):
    notifier = systemd.Notifier(address=str(tmp_path / "nobody"))
    assert notifier.ready("x") is False


# -- foreground ---------------------------------------------------------------------------

def test_a_foreground_server_tells_ready_reloading_restarts_status_and_stopping(app_dir):
    with NotifyListener(app_dir / "notify.sock") as sd:
        proc = start_pyse(app_dir, "run", "app:W", "-k", "process", "-w", "2", env=sd.env())
        with helpers.killing_group(proc):
            ready = sd.wait_for(is_key("READY"), 20, "READY=1")
            assert ready.pid == proc.pid and ready.get("MAINPID") == str(proc.pid)
            # READY=1 comes once the first workers run: its STATUS says so.
            assert ready.get("STATUS") == "2 workers running, 0 starting", ready
            workers = helpers.wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
                pids_of_workers(proc.pid)), 10, what="two workers")
            for worker_id in (0, 1):
                helpers.wait_for_line(app_dir / "out.log",
                                      f"worker {worker_id} sees no systemd variable", 10)

            before = usec_now()
            os.kill(proc.pid, signal.SIGUSR2)
            reloading = sd.wait_for(is_key("RELOADING"), 10, "RELOADING=1")
            assert before <= int(reloading.get("MONOTONIC_USEC")) <= usec_now()
            sd.wait_for(is_key("READY"), 10, "READY=1 after the reload")

            os.kill(proc.pid, signal.SIGUSR1)   # restart: new workers
            sd.wait_for(is_key("RELOADING"), 10, "RELOADING=1 at a restart")
            again = sd.wait_for(is_key("READY"), 20, "READY=1 once the workers run again")
            assert again.get("STATUS") == "2 workers running, 0 starting"
            assert not set(pids_of_workers(proc.pid)) & set(workers), "the workers were new"

            os.kill(proc.pid, signal.SIGTERM)
            sd.wait_for(is_key("STOPPING"), 10, "STOPPING=1")
            assert proc.wait(20) == 0
        assert {m.pid for m in sd.messages} == {proc.pid}, sd.messages


def test_under_a_supervisor_only_the_supervisor_speaks(app_dir):
    with NotifyListener() as sd:     # the abstract namespace
        proc = start_pyse(app_dir, "run", "app:W", "-k", "thread", "-w", "2",
                          "--set", "supervisor=true", env=sd.env())
        with helpers.killing_group(proc):
            ready = sd.wait_for(is_key("READY"), 20, "READY=1")
            assert ready.pid == proc.pid and ready.get("MAINPID") == str(proc.pid)
            assert ready.get("STATUS") == "2 workers running, 0 starting", ready
            server = helpers.wait_for(lambda: pids_of_workers(proc.pid), 10, what="the server")[0]
            helpers.wait_for_line(app_dir / "out.log", "worker 1 sees no systemd variable", 10)

            os.kill(proc.pid, signal.SIGUSR2)
            sd.wait_for(is_key("RELOADING"), 10, "RELOADING=1")
            sd.wait_for(is_key("READY"), 10, "READY=1 once the server reloaded")

            os.kill(server, signal.SIGKILL)
            gone = sd.wait_for(lambda m: "exited with signal SIGKILL" in (m.get("STATUS") or ""),
                               10, "the server's death in STATUS")
            assert gone.get("READY") is None
            sd.wait_for(status_is("2 workers running, 0 starting"), 20, "a new server's workers")

            os.kill(proc.pid, signal.SIGTERM)
            sd.wait_for(is_key("STOPPING"), 10, "STOPPING=1")
            assert proc.wait(20) == 0
        assert {m.pid for m in sd.messages} == {proc.pid}, sd.messages


# -- daemonized ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [(), ("--set", "supervisor=true")], ids=["server", "supervisor"])
def test_a_daemonized_start_hands_the_main_pid_to_the_daemon(app_dir, extra):
    with NotifyListener(app_dir / "notify.sock") as sd:
        launcher = start_pyse(app_dir, "run", "app:W", "-k", "process", "-w", "2", "-D",
                              "-p", "app.pid", "--log-file", "app.log", *extra, env=sd.env())
        assert launcher.wait(30) == 0, (app_dir / "out.log").read_text()
        daemon = int((app_dir / "app.pid").read_text())
        pgid = helpers.proc_stat(daemon).pgid
        try:
            first = sd.wait_for(is_key("READY"), 10, "READY=1")
            assert first.pid == launcher.pid and first.get("MAINPID") == str(daemon)
            if first.get("STATUS") != "2 workers running, 0 starting":
                sd.wait_for(status_is("2 workers running, 0 starting"), 20, "both workers up")
            assert pyse_command("stop", "-p", "app.pid", cwd=app_dir).returncode == 0
            sd.wait_for(is_key("STOPPING"), 10, "STOPPING=1")
            helpers.wait_pid_exit(daemon, 20)
        finally:
            helpers.kill_group(pgid)
            helpers.wait_pid_exit(daemon, 10)
        # systemd's default NotifyAccess=main takes a message only from the
        # main process: the launcher until it named the daemon.
        main = launcher.pid
        for message in sd.messages:
            assert message.pid == main, f"{message} would be refused: the main pid is {main}"
            main = int(message.get("MAINPID") or main)
        assert main == daemon


# -- the watchdog -------------------------------------------------------------------------

@pytest.mark.parametrize("worker_type", ["process", "thread", "embedded"])
def test_the_watchdog_is_petted_only_while_the_loop_runs(app_dir, worker_type):
    fifo = app_dir / "reload.fifo"
    os.mkfifo(fifo)
    with NotifyListener(app_dir / "notify.sock") as sd:
        proc = start_pyse(app_dir, "run", "app:W", "--server", "app:WedgedReload",
                          "-k", worker_type, env=sd.env(WATCHDOG_USEC="200000",
                                                        RELOAD_FIFO=str(fifo)))
        with helpers.killing_group(proc):
            sd.wait_for(is_key("READY"), 20, "READY=1")
            pets = [sd.wait_for(is_key("WATCHDOG"), 5, "a pet").at for _ in range(4)]
            gaps = [b - a for a, b in zip(pets, pets[1:])]
            assert all(0.05 < gap < 1.0 for gap in gaps), gaps     # about every 0.1 s

            os.kill(proc.pid, signal.SIGUSR2)
            sd.wait_for(is_key("RELOADING"), 10, "RELOADING=1")
            helpers.wait_for_line(app_dir / "out.log", r"reload\(\) waits for the FIFO", 10)
            late = sd.quiet_for(is_key("WATCHDOG"), 1.0)   # 5 periods
            assert len(late) <= 1, f"a wedged loop kept petting: {late}"

            with open(fifo, "wb") as unblock:
                unblock.write(b"x")
            sd.wait_for(is_key("READY"), 10, "READY=1 after the reload")
            sd.wait_for(is_key("WATCHDOG"), 5, "pets again")
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(20) == 0


def test_a_watchdog_meant_for_another_pid_is_not_petted(app_dir):
    with NotifyListener(app_dir / "notify.sock") as sd:
        proc = start_pyse(app_dir, "run", "app:W", env=sd.env(WATCHDOG_USEC="100000",
                                                              WATCHDOG_PID="1"))
        with helpers.killing_group(proc):
            sd.wait_for(is_key("READY"), 20, "READY=1")
            assert sd.quiet_for(is_key("WATCHDOG"), 0.6) == []
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(20) == 0
