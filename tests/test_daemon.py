"""daemonize, the pid file end to end, and controlling a running daemon
(issue 6).  Real launchers, daemons, supervisors and workers."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

import helpers
from pyse import pidfile
from supervised_harness import SupervisedRun, reap, wait_until

pytestmark = pytest.mark.timeout(90)
ERROR_CODE = 7


@pytest.fixture
def start(tmp_path):
    def make(config, name="run"):
        base = {"workers": 2, "daemonize_error_exit_code": ERROR_CODE,
                "pid_path": str(tmp_path / "daemon.pid")}
        base.update(config)
        return SupervisedRun(tmp_path, base, name=name)

    yield from helpers.started_runs(make)


def launched(run: SupervisedRun) -> int:
    """Waits for a launcher to exit 0; returns the daemon's pid."""
    code = run.wait_exit(30)
    out = run.output()
    assert code == 0, out
    m = re.search(r"launcher exit 0 daemon (\d+) children \[\]", out)
    assert m, f"the launcher still had children (an unreaped intermediate?): {out!r}"
    return int(m.group(1))


def stop_daemon(pid: int, run: SupervisedRun) -> None:
    os.kill(pid, signal.SIGTERM)
    reap(pid, 20)
    assert not run.members()


@pytest.mark.parametrize("supervisor", [False, True])
def test_daemonized_launch_returns_once_the_server_is_up(start, tmp_path, supervisor):
    run = start({"daemonize": True, "supervisor": supervisor, "test_before_run": 0.5})
    daemon = launched(run)
    # "Up": before_run() returned before the launcher exited.
    (before_run,) = run.of("before_run")
    assert run.proc.returncode == 0
    pid_path = tmp_path / "daemon.pid"
    assert pid_path.read_text() == f"{daemon}\n"
    assert pidfile.running_pid(str(pid_path)) == daemon
    st = helpers.proc_stat(daemon)
    assert st.sid != run.pid and st.sid != daemon, "a new session, not its leader"
    assert os.readlink(f"/proc/{daemon}/fd/0") == "/dev/null"
    if supervisor:
        assert before_run.pid != daemon and helpers.proc_stat(before_run.pid).ppid == daemon
    else:
        assert before_run.pid == daemon
    workers = {r.pid for r in run.wait_record("run", 2)}

    pid_inode = (pid_path.stat().st_dev, pid_path.stat().st_ino)

    def holds_pid_file(pid):
        # By inode: the daemon's fd was opened under the temporary name.
        found = False
        for fd in helpers.open_fds(pid):
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue  # closed while we looked
            found = found or (st.st_dev, st.st_ino) == pid_inode
        return found
    # The lock means "the daemon lives": only the daemon keeps the file open.
    assert holds_pid_file(daemon)
    assert not any(holds_pid_file(p) for p in workers | {before_run.pid} - {daemon})
    stop_daemon(daemon, run)
    assert not pid_path.exists(), "removed at a clean exit"


@pytest.mark.parametrize("supervisor", [False, True])
@pytest.mark.parametrize("failure", ["log_path", "before_run"])
def test_daemonized_start_failures_exit_with_the_error_code(start, tmp_path, failure,
                                                           supervisor):
    config = {"daemonize": True, "supervisor": supervisor}
    if failure == "log_path":
        config["log"] = str(tmp_path / "no" / "such" / "dir.log")
        expected = "cannot open the log"
    else:
        config["test_before_run"] = "raise"
        expected = "before_run failed on purpose"
    run = start(config)
    assert run.wait_exit(30) == ERROR_CODE
    out = run.output()
    assert "pyse: cannot start:" in out and expected in out, out
    wait_until(lambda: not run.members(), 10, "the failed daemon to be gone")
    assert not (tmp_path / "daemon.pid").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("daemonize", [False, True])
def test_a_live_pid_file_refuses_a_second_start(start, tmp_path, daemonize):
    first = start({"daemonize": True}, name="first")
    daemon = launched(first)
    first.wait_record("run", 2)
    second = start({"daemonize": daemonize}, name="second")
    assert second.wait_exit(30) == ERROR_CODE
    out = second.output()
    assert f"pid file {str(tmp_path / 'daemon.pid')!r} is in use: pid {daemon}" in out, out
    assert not second.of("initialize"), "refused before anything started"
    assert (tmp_path / "daemon.pid").read_text() == f"{daemon}\n"
    assert helpers.is_running(daemon) and len(first.of("stop")) == 0
    stop_daemon(daemon, first)


def test_foreground_pid_file_is_the_process_itself(start, tmp_path):
    run = start({"supervisor": True})
    run.wait_record("run", 2)
    pid_path = tmp_path / "daemon.pid"
    assert pid_path.read_text() == f"{run.pid}\n"
    assert pidfile.is_locked(str(pid_path))
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait_exit(20) == 0
    assert not pid_path.exists()


@pytest.mark.parametrize("stale", ["1", "dead"])
def test_a_stale_pid_file_is_replaced_with_a_note(start, tmp_path, stale):
    pid_path = tmp_path / "daemon.pid"
    if stale == "dead":
        # A daemon SIGKILLed with its whole tree leaves its file behind.
        old = start({"daemonize": True, "supervisor": True}, name="old")
        old_pid = launched(old)
        old.wait_record("run", 2)
        os.kill(old_pid, signal.SIGKILL)
        reap(old_pid, 10)
        wait_until(lambda: not old.members(), 15, "the old tree to be gone")
        assert pid_path.exists()
    else:
        old_pid = 1   # alive, but not a pyse daemon: it holds no lock
        pid_path.write_text("1\n")
    run = start({"daemonize": True}, name="new")
    daemon = launched(run)
    assert pid_path.read_text() == f"{daemon}\n"
    run.wait_log(f"Replaced a stale pid file {pid_path} (it named pid {old_pid}")
    stop_daemon(daemon, run)


@pytest.mark.parametrize("action,effect", [
    ("reload", "reload"), ("dump", "Wrote sigdump"), ("restart", "run"), ("detach", "run"),
])
def test_daemon_control_from_another_process(start, tmp_path, action, effect):
    run = start({"daemonize": True, "supervisor": True, "server_detach_wait": 1.0})
    daemon = launched(run)
    run.wait_record("run", 2)
    control = start({"test_control": action}, name="control")
    assert control.wait_exit(30) == 0, control.output()
    assert f"sent {action} to {daemon}" in control.output()
    if effect in ("reload", "run"):
        run.wait_record(effect, 2 if effect == "reload" else 4)
    else:
        run.wait_log(effect)
    stop = start({"test_control": "stop"}, name="stop")
    assert stop.wait_exit(30) == 0, stop.output()
    reap(daemon, 20)
    wait_until(lambda: not run.members(), 15, "the daemon's tree to be gone")
    assert not (tmp_path / "daemon.pid").exists()


def test_daemon_control_refuses_a_stale_pid_file(start, tmp_path):
    (tmp_path / "daemon.pid").write_text("1\n")
    control = start({"test_control": "stop"}, name="control")
    assert control.wait_exit(30) != 0
    assert "is stale: pid 1 is no longer the daemon" in control.output()


def test_sigkill_of_a_daemonized_server_leaves_no_worker(start):
    run = start({"daemonize": True})
    daemon = launched(run)
    workers = {r.pid for r in run.wait_record("run", 2)}
    killed = time.monotonic()
    os.kill(daemon, signal.SIGKILL)
    reap(daemon, 10)
    for pid in workers:
        reap(pid, 15)
    print(f"workers gone {(time.monotonic() - killed) * 1000:.1f} ms after the server's SIGKILL")
    assert not run.members()


@pytest.mark.timeout(120)
def test_blog_post_example(tmp_path):
    """examples/blog_post.py as the post runs it: names in ps, a SIGKILLed
    worker replaced and logged, a SIGKILLed server leaving no worker."""
    import subprocess
    import sys
    from pathlib import Path

    from supervised_harness import reap_zombie_children

    example = Path(__file__).parent.parent / "examples" / "blog_post.py"
    tag = {"PYSE_TEST_EVENTS": str(tmp_path / "blog")}
    launcher = subprocess.run([sys.executable, str(example)], cwd=tmp_path, timeout=60,
                              env=helpers.marked_env(tag), capture_output=True)
    assert launcher.returncode == 0, launcher.stderr
    log = tmp_path / "server.log"
    server = int((tmp_path / "server.pid").read_text())
    try:
        def workers():
            pids = [p for p in helpers.children_of(server) if helpers.is_running(p)]
            return pids if len(pids) == 2 else None
        first = wait_until(workers, 15, "two se-worker processes")
        assert helpers.cmdline(server) == "se-server"
        assert [helpers.cmdline(p) for p in first] == ["se-worker", "se-worker"]
        helpers.wait_for_line(log, r"\[worker_id: 1\] Awesome work!", 15)

        os.kill(first[0], signal.SIGKILL)
        helpers.wait_for_line(log, r"WARN -- : Worker \d finished unexpectedly with signal "
                                   r"SIGKILL", 15)
        second = wait_until(lambda: (lambda p: p if p and first[0] not in p else None)(
            workers()), 15, "the killed worker's replacement")

        killed = time.monotonic()
        os.kill(server, signal.SIGKILL)
        reap(server, 10)
        for pid in second:
            reap(pid, 15)   # each notices, stops, and its run() returns after its sleep
        print(f"no worker left {time.monotonic() - killed:.2f} s after the server's SIGKILL")
    finally:
        # Whatever is left of this run carries its tag in its environment.
        for pid in helpers.all_pids():
            if helpers.environ_of(pid).get("PYSE_TEST_EVENTS") == tag["PYSE_TEST_EVENTS"]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                reap(pid, 10)
        reap_zombie_children()


def test_the_pyse_command_controls_through_the_pid_file(start, tmp_path):
    import subprocess
    import sys

    pid_path = tmp_path / "daemon.pid"

    def pyse_command(*args):
        return subprocess.run([sys.executable, "-m", "pyse", *args, "-p", str(pid_path)],
                              capture_output=True, text=True, timeout=30,
                              env=helpers.marked_env())

    pid_path.write_text("1\n")
    stale = pyse_command("stop")
    assert stale.returncode == 2
    assert "is stale: pid 1 is not a running pyse daemon" in stale.stderr
    run = start({"daemonize": True})
    daemon = launched(run)
    run.wait_record("run", 2)
    assert pyse_command("reload").stdout.strip() == f"sent SIGUSR2 to {daemon}"
    run.wait_record("reload", 2)
    assert pyse_command("stop").returncode == 0
    reap(daemon, 20)
    assert not pid_path.exists()
