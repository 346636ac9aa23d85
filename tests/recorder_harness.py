"""Runs tests/programs/recorder.py and reads what its workers record.

The test process makes itself a child subreaper, so that workers orphaned
by a SIGKILLed server become its children and are reaped here rather than
by whatever PID 1 the machine has.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import helpers
from helpers import children_of, open_fds  # noqa: F401 (re-exported for tests)
from helpers import is_running as pid_alive

T = TypeVar("T")

PROGRAM = Path(__file__).parent / "programs" / "recorder.py"


@dataclass(frozen=True)
class Record:
    """One line a test program wrote: ``event worker_id pid time [detail]``."""
    event: str
    worker_id: int
    pid: int
    time: float
    detail: str = ""


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.002) -> T:
    """helpers.wait_for, with what is awaited as a required argument."""
    return helpers.wait_for(predicate, timeout, interval=interval, what=what)


def zombie_children(pid: int) -> list[int]:
    return [c for c in children_of(pid) if helpers.is_zombie(c)]


def reap_orphan(pid: int, timeout: float) -> None:
    """Waits for a process that was re-parented to us, and reaps it."""
    wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # not ours after all: its real parent reaps it


class RecorderRun:
    """One running recorder server."""

    def __init__(self, tmp_path: Path, config: dict, env: Optional[dict] = None, *,
                 program: Path = PROGRAM, pass_fds: tuple = ()) -> None:
        self.config_path = tmp_path / "config.json"
        self.events_path = tmp_path / "events.log"
        self.log_path = tmp_path / "server.log"
        self.write_config(config)
        self.events_path.touch()
        full_env = helpers.marked_env({"PYSE_TEST_EVENTS": str(self.events_path)})
        full_env.update(env or {})
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(program), str(self.config_path)],
                                     env=full_env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     pass_fds=pass_fds)
        self.pid = self.proc.pid
        self.known_pids: set[int] = set()

    def write_config(self, config: dict) -> None:
        helpers.write_json_atomically(self.config_path,
                                      {"worker_type": "process", "log_level": "debug", **config})

    def records(self) -> list[Record]:
        out = []
        for line in self.events_path.read_text().splitlines():
            event, wid, pid, t = line.split()
            out.append(Record(event, int(wid), int(pid), float(t)))
        self.known_pids.update(r.pid for r in out if r.worker_id >= 0)
        return out

    def of(self, event: str) -> list[Record]:
        return [r for r in self.records() if r.event == event]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        return [p for p in children_of(self.pid) if pid_alive(p)]

    def wait_workers(self, n: int, timeout: float = 10.0) -> list[int]:
        """Waits until exactly n live workers have each recorded run."""
        def ready():
            running = {r.pid for r in self.of("run")}
            pids = self.worker_pids()
            return pids if len(pids) == n and all(p in running for p in pids) else None
        return wait_until(ready, timeout, f"{n} running workers")

    def wait_record(self, event: str, count: int = 1, timeout: float = 10.0) -> list[Record]:
        return wait_until(lambda: (lambda rs: rs if len(rs) >= count else None)(self.of(event)),
                          timeout, f"{count} {event!r} records")

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout, f"log line containing {text!r}")

    def signal(self, signo: int) -> None:
        os.kill(self.pid, signo)

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server (pid {self.pid}) did not exit within {timeout} s\n"
                                 f"{self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """The tree as it is now (each thread's kernel wait channel) and the
        log's tail: what a timed-out wait needs to be understood."""
        lines = ["processes:"]
        for pid in [self.pid, *helpers.descendants_of(self.pid)]:
            st = helpers.proc_stat(pid)
            threads = []
            try:
                for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
                    with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                        threads.append(f"{tid}:{f.read() or '-'}")
            except OSError:
                pass
            lines.append(f"  {pid} state {st.state if st else 'gone'} threads "
                         f"{' '.join(threads)} {helpers.cmdline(pid)}")
            # The main thread's system call and its arguments (fds, timeouts),
            # what its fds are, and its signal masks: enough to tell a lost
            # wake-up from a blocked signal.
            for what in ("syscall", "status"):
                try:
                    with open(f"/proc/{pid}/{what}") as f:
                        text = f.read()
                except OSError:
                    continue
                if what == "status":
                    text = " ".join(line for line in text.splitlines()
                                    if line.startswith(("SigBlk", "SigIgn", "SigCgt", "SigPnd",
                                                        "ShdPnd")))
                lines.append(f"    {what}: {text.strip()}")
            lines.append(f"    fds: {helpers.open_fds(pid)}")
        lines.append("log tail:\n" + "\n".join(self.log().splitlines()[-40:]))
        return "\n".join(lines)

    def close(self) -> None:
        """Kills whatever is left of the tree, and reaps it."""
        # Workers stay in the server's process group even once orphaned;
        # kill_group also reaps the ones re-parented to us (the subreaper).
        # Only while the server is unreaped: after that its pid, and so the
        # group id, may be handed to another test's program (pids wrap
        # within minutes here).  Recorded workers are killed by pid below.
        if self.proc.returncode is None:
            helpers.kill_group(self.pid)
        self.proc.wait(10)
        self.records()
        for pid in self.known_pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap_orphan(pid, 10)
        self.log_file.close()
