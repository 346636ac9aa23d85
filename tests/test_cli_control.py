"""Controlling a daemon started with ``pyse run -D``: ``status`` with its LSB
codes and stale pid files, ``stop --wait``, and what a running daemon logs
about its configuration (another tool's key names, a reload whose file is
bad)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

import helpers
from pyse.cli_control import read_process, wait_until_gone
from test_cli import APP, assert_one_line_error, pyse_command, pyse_executable, write

pytestmark = pytest.mark.timeout(90)

#: a worker whose run() starts a helper process that outlives the server:
#: it reads a FIFO until the test closes its end
LINGERING_APP = """
import os
import subprocess
import sys
import pyse

class W:
    def initialize(self):
        self.flag = pyse.BlockingFlag()

    def run(self):
        helper = subprocess.Popen([sys.executable, "-c",
                                   "import sys; open(sys.argv[1]).read()", os.environ["FIFO"]])
        self.logger.info("helper pid=%d", helper.pid)
        self.flag.wait_for_set(60.0)

    def stop(self):
        self.flag.set()
"""


class Daemon:
    def __init__(self, directory: Path, pid: int) -> None:
        self.directory = directory
        self.pid = pid
        self.pid_file = directory / "app.pid"
        self.log = directory / "app.log"

    def command(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return pyse_command(*args, "-p", self.pid_file, cwd=self.directory, **kw)

    def wait_log(self, pattern: str, timeout: float = 15) -> re.Match:
        return helpers.wait_for_line(self.log, pattern, timeout)


@contextlib.contextmanager
def daemon_of(directory: Path, *args: str, env: dict | None = None) -> Iterator[Daemon]:
    """``pyse run app:W -D`` in directory; at the end, whatever is left of
    its process group is killed and reaped (pytest is a subreaper: the
    daemon is its child, and so are the workers once the daemon died)."""
    result = pyse_command("run", "app:W", "-D", "-p", "app.pid", "--log-file", "app.log",
                          *args, cwd=directory, env=env)
    assert result.returncode == 0, result.stderr
    pid = int((directory / "app.pid").read_text())
    pgid = helpers.proc_stat(pid).pgid
    try:
        yield Daemon(directory, pid)
    finally:
        members = [pid, *helpers.descendants_of(pid)] if helpers.is_running(pid) else [pid]
        helpers.kill_group(pgid)
        # The daemon first: a worker's zombie becomes ours to reap only once
        # its parent has died, which kill_group may not have seen.
        for member in members:
            helpers.wait_pid_exit(member, 10)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write(tmp_path, "app.py", APP)
    return tmp_path


# -- status ------------------------------------------------------------------------

def test_status_of_a_running_daemon_shows_its_table_and_exits_0(app_dir):
    with daemon_of(app_dir, "-k", "process", "-w", "2") as daemon:
        workers = helpers.wait_for(lambda: len(helpers.children_of(daemon.pid)) == 2 and
                                   helpers.children_of(daemon.pid), 15, what="two workers")
        result = helpers.wait_for(lambda: (lambda r: r if "2 workers running" in r.stdout
                                           else None)(daemon.command("status")), 15,
                                  what="both workers up in pyse status")
        assert result.returncode == 0, result.stderr
        header, server, *rows, summary = result.stdout.splitlines()
        assert header.split()[:4] == ["ROLE", "ID", "PID", "STATE"]
        assert server.split()[:4] == ["server", "-", str(daemon.pid), "running"]
        assert sorted(int(row.split()[2]) for row in rows) == workers
        assert summary == "2 workers running, 0 starting"


def test_status_without_a_pid_file_is_3(tmp_path):
    result = pyse_command("status", "-p", "nothing.pid", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stdout.startswith("not running: pid file 'nothing.pid' does not exist")


def test_status_of_a_pid_file_naming_pid_1_is_dead_not_pid_1s_tree(tmp_path):
    (tmp_path / "app.pid").write_text("1\n")
    result = pyse_command("status", "-p", "app.pid", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.strip() == ("dead: pid file 'app.pid' is stale: pid 1 is not a running "
                                     "pyse daemon (nothing holds the file's lock)")


def test_status_of_a_sigkilled_daemon_is_dead_even_while_it_is_a_zombie(app_dir):
    with daemon_of(app_dir) as daemon:
        os.kill(daemon.pid, signal.SIGKILL)
        # pytest is the daemon's subreaper and has not reaped it yet.
        helpers.wait_for(lambda: helpers.is_zombie(daemon.pid), 10, what="a zombie daemon")
        result = daemon.command("status")
        assert result.returncode == 1, result.stdout
        assert result.stdout.startswith(f"dead: pid file '{daemon.pid_file}' is stale: "
                                        f"pid {daemon.pid}")
        assert_one_line_error(daemon.command("stop"), "is stale")


def test_status_of_an_unreadable_pid_file_is_4(tmp_path):
    (tmp_path / "dir.pid").mkdir()
    result = pyse_command("status", "-p", "dir.pid", cwd=tmp_path)
    assert_one_line_error(result, "pid file 'dir.pid': cannot read it", code=4)


# -- stop --wait ---------------------------------------------------------------------

def lingering_daemon(directory: Path) -> tuple[contextlib.AbstractContextManager, Path]:
    write(directory, "app.py", LINGERING_APP)
    fifo = directory / "release"
    os.mkfifo(fifo)
    return daemon_of(directory, "--set", "workers=1", env={"FIFO": str(fifo)}), fifo


def release(fifo: Path) -> None:
    """Lets the helper process end: it reads the FIFO until EOF."""
    os.close(os.open(fifo, os.O_WRONLY))


def test_stop_wait_returns_once_every_descendant_is_gone(tmp_path):
    started, fifo = lingering_daemon(tmp_path)
    with started as daemon:
        helper = int(daemon.wait_log(r"helper pid=(\d+)").group(1))
        stopper = subprocess.Popen([*pyse_executable(), "stop", "--wait", "--timeout", "30",
                                    "-p", str(daemon.pid_file)], env=helpers.marked_env(),
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        try:
            helpers.wait_pid_exit(daemon.pid, 20)   # the daemon is gone...
            assert helpers.is_running(helper)
            assert stopper.poll() is None           # ...but not its whole tree
            release(fifo)
            out, err = stopper.communicate(timeout=20)
        finally:
            if stopper.poll() is None:
                stopper.kill()
                stopper.wait()
        helpers.wait_pid_exit(helper, 10)  # re-parented to pytest: reap it
        assert stopper.returncode == 0, err
        assert out.splitlines()[0] == f"sent SIGTERM to {daemon.pid}"
        assert out.splitlines()[1].startswith(f"stopped: pid {daemon.pid} and its descendants")


def test_stop_wait_exits_1_naming_what_still_runs_at_the_timeout(tmp_path):
    started, fifo = lingering_daemon(tmp_path)
    with started as daemon:
        helper = int(daemon.wait_log(r"helper pid=(\d+)").group(1))
        began = time.monotonic()
        result = daemon.command("stop", "--timeout", "0.5")
        took = time.monotonic() - began
        release(fifo)
        helpers.wait_pid_exit(helper, 10)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stdout.strip() == f"sent SIGTERM to {daemon.pid}"
        assert "still run after 0.5 s" in result.stderr and f"{helper} (" in result.stderr
        assert took < 10


def test_stop_wait_without_a_live_daemon_is_an_error(tmp_path):
    (tmp_path / "app.pid").write_text("1\n")
    assert_one_line_error(pyse_command("stop", "--wait", "-p", "app.pid", cwd=tmp_path),
                          "is stale: pid 1")


def test_a_reused_pid_is_not_waited_for():
    # Our own pid with another start time stands for a pid the kernel
    # gave to a new process after the member of the tree died.
    me = read_process(os.getpid())
    assert wait_until_gone({me.pid: me.starttime + 1}, time.monotonic() + 5) == []
    still = wait_until_gone({me.pid: me.starttime}, time.monotonic())
    assert [entry.pid for entry in still] == [me.pid]


# -- what the running daemon logs ------------------------------------------------------

def test_another_tools_key_is_warned_about_once_at_start(app_dir):
    with daemon_of(app_dir, "--set", "graceful_timeout=30", "--set", "message=kept") as daemon:
        daemon.wait_log(r"run message=kept")
        text = daemon.log.read_text()
        assert text.count("Unknown config key 'graceful_timeout': it is gunicorn's name for "
                          "pyse's 'worker_graceful_kill_timeout'") == 1
        assert "'message'" not in text.replace("run message=kept", "")
        result = daemon.command("stop", "--wait")
        assert result.returncode == 0, result.stderr


def test_reload_rereads_the_file_and_its_errors_name_the_file(app_dir):
    path = write(app_dir, "s.py", 'message = "one"\n')
    with daemon_of(app_dir, "-c", "s.py") as daemon:
        daemon.wait_log(r"run message=one")
        path.write_text('message = "two"\n')
        assert daemon.command("reload").returncode == 0
        daemon.wait_log(r"reload message=two")
        path.write_text('message = "three"\nworkers = 0\n')
        daemon.command("reload")
        daemon.wait_log(rf"Reload failed, keeping the running configuration: config file "
                        rf"'{path}': config key 'workers': got 0")
        path.write_text('message = (\n')
        daemon.command("reload")
        daemon.wait_log(rf"Reload failed, keeping the running configuration: config file "
                        rf"'{path}': not valid Python")
        assert "configuration callable" not in daemon.log.read_text()
        assert daemon.command("stop", "--wait").returncode == 0
