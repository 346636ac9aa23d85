"""Runs tests/programs/supervised.py (a daemon, a supervisor, a server) and
reads what it records.

The test process is a child subreaper (see recorder_harness), so a daemon
that double-forked away from its launcher, or a server whose supervisor was
SIGKILLed, is re-parented to it: it can be watched, killed and reaped here.
Every process of one run carries that run's events path in its
environment, which is how :meth:`SupervisedRun.close` finds them all.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Optional

import helpers
from recorder_harness import Record, wait_until  # noqa: F401 (wait_until: for tests)

PROGRAM = Path(__file__).parent / "programs" / "supervised.py"
#: pids of launchers whose Popen has not reaped them yet: not ours to reap
_unreaped_launchers: set[int] = set()


class SupervisedRun:
    """One run of the program (a launcher, or the daemon itself)."""

    def __init__(self, directory: Path, config: dict, *, name: str = "run",
                 env: Optional[dict] = None) -> None:
        self.dir = directory
        self.config_path = directory / f"{name}.json"
        self.events_path = directory / f"{name}.events"
        self.log_path = directory / f"{name}.log"
        self.out_path = directory / f"{name}.out"
        self.write_config(config)
        self.events_path.touch()
        os.chmod(self.events_path, 0o666)
        full_env = helpers.marked_env({"PYSE_TEST_EVENTS": str(self.events_path)})
        full_env.update(env or {})
        self._out = open(self.out_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROGRAM), str(self.config_path)],
                                     env=full_env, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        _unreaped_launchers.add(self.pid)

    def write_config(self, config: dict) -> None:
        helpers.write_json_atomically(self.config_path, {
            "worker_type": "process", "log_level": "debug", "log": str(self.log_path), **config})

    # -- what happened --------------------------------------------------------
    def records(self) -> list[Record]:
        out = []
        for line in self.events_path.read_text().splitlines():
            event, wid, pid, t, *detail = line.split(" ", 4)
            out.append(Record(event, int(wid), int(pid), float(t), " ".join(detail)))
        return out

    def of(self, event: str) -> list[Record]:
        return [r for r in self.records() if r.event == event]

    def wait_record(self, event: str, count: int = 1, timeout: float = 15.0) -> list[Record]:
        try:
            return wait_until(lambda: (lambda rs: rs if len(rs) >= count else None)(
                self.of(event)), timeout, f"{count} {event!r} records")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """What the run looks like now: its processes, events and log tail."""
        lines = ["processes:"]
        for pid in self.members():
            st = helpers.proc_stat(pid)
            try:
                with open(f"/proc/{pid}/wchan") as f:
                    wchan = f.read()
            except OSError:
                wchan = "?"
            lines.append(f"  {pid} ppid {st.ppid if st else '?'} state "
                         f"{st.state if st else '?'} wchan {wchan} {helpers.cmdline(pid)}")
        lines.append("events:\n" + self.events_path.read_text()[-2000:])
        lines.append("log tail:\n" + "\n".join(self.log().splitlines()[-30:]))
        lines.append("output:\n" + self.output()[-2000:])
        return "\n".join(lines)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        wait_until(lambda: self.log().count(text) >= count, timeout,
                   f"{count} log line(s) containing {text!r}")

    # -- the process tree -------------------------------------------------------
    def members(self) -> list[int]:
        """Every live process of this run (found by its environment)."""
        mine = str(self.events_path)
        return [pid for pid in helpers.all_pids()
                if helpers.is_running(pid)
                and helpers.environ_of(pid).get("PYSE_TEST_EVENTS") == mine]

    def children(self, pid: int) -> list[int]:
        return [c for c in helpers.children_of(pid) if helpers.is_running(c)]

    def wait_tree(self, top: int, workers: int, timeout: float = 15.0) -> tuple[int, list[int]]:
        """Waits for top -> one server -> `workers` running workers; returns
        (server pid, worker pids)."""
        def ready():
            servers = self.children(top)
            if len(servers) != 1:
                return None
            running = {r.pid for r in self.of("run")}
            pids = self.children(servers[0])
            if len(pids) == workers and all(p in running for p in pids):
                return servers[0], pids
            return None
        return wait_until(ready, timeout, f"a server with {workers} running workers")

    def wait_exit(self, timeout: float = 20.0) -> int:
        code = self.proc.wait(timeout)
        _unreaped_launchers.discard(self.pid)
        return code

    def close(self) -> None:
        """Kills whatever is left of this run and reaps it."""
        # Only while the launcher is unreaped: once reaped, its pid (and so
        # its process group id) may already belong to another program --
        # pids wrap within minutes here -- and killpg would kill that.  The
        # environment scan below finds this run's processes in any case.
        if self.proc.returncode is None:
            helpers.kill_group(self.pid)
        self.wait_exit(10)
        for _ in range(3):
            left = self.members()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in left:
                reap(pid, 10)
        reap_zombie_children()
        self._out.close()


def reap(pid: int, timeout: float) -> None:
    """Waits for pid to end; reaps it if it is (or became) our child."""
    wait_until(lambda: not helpers.is_running(pid), timeout, f"pid {pid} to exit")
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # not ours: its parent reaps it


def reap_zombie_children() -> None:
    """Reaps exited processes re-parented to us (we are a subreaper); not
    the launchers, which their Popen objects reap."""
    for pid in helpers.children_of(os.getpid()):
        if pid not in _unreaped_launchers and helpers.is_zombie(pid):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass  # someone else reaped it meanwhile


def proc_status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict of field -> value."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def title(pid: int) -> str:
    return helpers.cmdline(pid)
