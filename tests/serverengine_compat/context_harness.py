"""Runs tests/programs/se_context.py (ServerEngine's spec context in Python)
and reads its counts, as the Ruby specs read ``test_state(key)``.

A run is a :class:`supervised_harness.SupervisedRun` on another program: the
same records, waits, diagnosis and clean-up (every process of the run is
found by its environment, so a daemon that double-forked away is killed and
reaped too).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import helpers
import pyse
import supervised_harness
from supervised_harness import SupervisedRun, wait_until

PROGRAM = Path(__file__).parent.parent / "programs" / "se_context.py"

#: Short escalation and heartbeat timings, so that what the specs wait for
#: with sleeps of 0.8-2.2 s happens in tenths of a second here.
FAST = {"worker_heartbeat_interval": 0.1, "server_heartbeat_interval": 0.1,
        "worker_graceful_kill_interval": 2, "worker_immediate_kill_interval": 1,
        "server_graceful_kill_interval": 2, "server_immediate_kill_interval": 1,
        "start_worker_delay_rand": 0}


class ContextRun(SupervisedRun):
    """One run of se_context.py with the given configuration (its test_*
    keys choose the modules; see the program's docstring)."""

    def __init__(self, directory: Path, config: dict, *, name: str = "run",
                 env: Optional[dict] = None) -> None:
        # SupervisedRun's own __init__ starts supervised.py; the rest of it
        # (paths, records, clean-up) is what this run needs.
        self.dir = directory
        self.config_path = directory / f"{name}.json"
        self.events_path = directory / f"{name}.events"
        self.log_path = directory / f"{name}.log"
        self.out_path = directory / f"{name}.out"
        self.pid_path = directory / f"{name}.pid"
        self.write_config(config)
        self.events_path.touch()
        full_env = helpers.marked_env({"PYSE_TEST_EVENTS": str(self.events_path), **(env or {})})
        self._out = open(self.out_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROGRAM), str(self.config_path)],
                                     env=full_env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        supervised_harness._unreaped_launchers.add(self.pid)

    def write_config(self, config: dict) -> None:
        # A pid file, so that a pyse.Daemon built here finds the process to
        # signal (see controller()); ServerEngine's defaults otherwise: no
        # worker_type means embedded.
        helpers.write_json_atomically(self.config_path, {
            "log": str(self.log_path), "log_level": "debug", "pid_path": str(self.pid_path),
            **FAST, **config})

    def signal(self, signo: int) -> None:
        """Sends signo to the program (the foreground daemon), which must
        not have been reaped (its pid could be another process's by now)."""
        assert self.proc.returncode is None, "the program has exited"
        os.kill(self.pid, signo)

    # -- the Ruby specs' words ---------------------------------------------------
    def test_state(self, key: str) -> int:
        """How many times key was counted (``test_state(:key)``)."""
        return len(self.of(key))

    def assert_states(self, **expected: int) -> None:
        """Each key was counted as often as expected (all compared at once,
        so a failure shows every count)."""
        assert {key: self.test_state(key) for key in expected} == expected, self.diagnosis()

    def wait_state(self, key: str, count: int = 1, timeout: float = 10.0) -> int:
        """Waits until key was counted at least count times; returns the count."""
        return len(self.wait_record(key, count, timeout))

    def detail(self, key: str) -> str:
        """The detail of key's last record."""
        return self.wait_record(key, 1)[-1].detail

    def exit_status(self, timeout: float = 15.0) -> int:
        """Waits for the program (the launcher, or the foreground daemon) to
        exit; returns its status."""
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the program did not exit within {timeout} s\n"
                                 f"{self.diagnosis()}") from None


class Idle:
    """A worker module for a Daemon object that only sends signals."""

    def run(self) -> None:
        raise AssertionError("a controlling Daemon never runs its worker")


def controller(pid_path: Path) -> pyse.Daemon:
    """A Daemon built in this process with the running one's pid_path: its
    stop()/restart()/reload()/dump() signal the pid that holds the pid file,
    as ServerEngine's ``dm.stop(true)`` & co. signal the daemon."""
    return pyse.create(None, Idle, {"pid_path": str(pid_path)})


def wait_pid_file(run: ContextRun, timeout: float = 10.0) -> int:
    """The pid in the run's pid file once it is there."""
    def read() -> Optional[int]:
        try:
            return int(run.pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
    return wait_until(read, timeout, f"the pid file {run.pid_path}")
