"""pyse as PID 1, as in a container: run under ``unshare --pid --fork
--mount-proc``, pyse is the first process of a new PID namespace.  It must
reap the orphans it adopts (for every server type), stop on TERM and INT
although PID 1 has no default signal actions, and exit with a status that
tells the orchestrator what happened (docs/containers.md)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

import helpers
from test_cli import pyse_executable, write

pytestmark = pytest.mark.timeout(120)

APP = r'''
import os
import subprocess
import sys
import pyse

# A grandchild whose parent exits at once: PID 1 adopts it.  It ends when
# the test writes a byte to ORPHAN_FIFO.
ORPHAN = '( (exec head -c1 "$0" >/dev/null) & ) ; echo orphan started'


class Orphaner:
    def initialize(self):
        self.flag = pyse.BlockingFlag()

    def run(self):
        subprocess.run(["sh", "-c", ORPHAN, os.environ["ORPHAN_FIFO"]], check=True)
        while not self.flag.wait_for_set(1.0):
            pass

    def stop(self):
        self.flag.set()


class SpawnOrphaner:
    def spawn(self, process_manager):
        process_manager.spawn({}, "sh", "-c", ORPHAN + "; exec sleep 60",
                              os.environ["ORPHAN_FIFO"])


class Unrecoverable:
    def run(self):
        self.logger.info("exiting with 3")
        sys.exit(3)


class SlowStart:
    def before_run(self):
        self.logger.info("before_run() waits")
        with open(os.environ["START_FIFO"], "rb") as fifo:
            fifo.read(1)
'''


def unshare_prefix() -> tuple[Optional[list[str]], str]:
    """The unshare command line that works here, or None and why not."""
    if shutil.which("unshare") is None:
        return None, "unshare is not installed"
    reasons = []
    for prefix in (["unshare", "--pid", "--fork", "--mount-proc"],
                   ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]):
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return prefix, ""
        reasons.append(f"{' '.join(prefix)}: {probe.stderr.strip()}")
    return None, "cannot make a PID namespace here (" + "; ".join(reasons) + ")"


UNSHARE, WHY_NOT = unshare_prefix()
pytestmark = [pytestmark, pytest.mark.skipif(UNSHARE is None, reason=WHY_NOT)]


class Container:
    """``unshare ... pyse run ...``: ``outer`` is the unshare process, ``pid``
    pyse, PID 1 inside, as the test's namespace sees it."""

    def __init__(self, directory: Path, proc: subprocess.Popen) -> None:
        self.directory = directory
        self.outer = proc
        self.pid = helpers.wait_for(lambda: helpers.children_of(proc.pid), 10,
                                    what="pyse inside the namespace")[0]

    @property
    def log(self) -> Path:
        return self.directory / "out.log"

    def wait_log(self, pattern: str, timeout: float = 15, skip: int = 0) -> None:
        helpers.wait_for_line(self.log, pattern, timeout, skip=skip)

    def exit_status(self, timeout: float = 30) -> int:
        return self.outer.wait(timeout)


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    write(tmp_path, "app.py", APP)
    started = []

    def start(worker: str, *args: str, env: Optional[dict] = None) -> Container:
        assert UNSHARE is not None
        with open(tmp_path / "out.log", "ab") as out:
            proc = subprocess.Popen([*UNSHARE, *pyse_executable(), "run", worker, "--log-file", "-",
                                     *args], cwd=tmp_path, env=helpers.marked_env(env),
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return Container(tmp_path, proc)

    yield start
    for proc in started:
        helpers.kill_group(proc.pid)
        proc.wait(10)


def adopted_orphan(top: int) -> Optional[int]:
    """The orphan (head) once PID 1 has adopted it."""
    for pid in helpers.descendants_of(top):
        st = helpers.proc_stat(pid)
        if st is not None and st.comm == "head" and st.ppid == top:
            return pid
    return None


@pytest.mark.parametrize("worker_type, extra", [
    ("embedded", ()), ("thread", ()), ("process", ()), ("spawn", ()),
    ("process", ("--set", "supervisor=true")), ("thread", ("--set", "supervisor=true")),
], ids=["embedded", "thread", "process", "spawn", "supervised-process", "supervised-thread"])
def test_pid_1_reaps_the_orphans_it_adopts(container, tmp_path, worker_type, extra):
    fifo = tmp_path / "orphan.fifo"
    os.mkfifo(fifo)
    worker = "app:SpawnOrphaner" if worker_type == "spawn" else "app:Orphaner"
    box = container(worker, "-k", worker_type, *extra, env={"ORPHAN_FIFO": str(fifo)})
    box.wait_log("orphan started")
    orphan = helpers.wait_for(lambda: adopted_orphan(box.pid), 10, what="PID 1 adopting head")
    with open(fifo, "wb") as release:
        release.write(b"x")
    helpers.wait_for(lambda: helpers.proc_stat(orphan) is None, 10,
                     what=f"the orphan {orphan} reaped (state now "
                          f"{getattr(helpers.proc_stat(orphan), 'state', 'gone')})")
    os.kill(box.pid, signal.SIGTERM)
    assert box.exit_status() == 0, box.log.read_text()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
@pytest.mark.parametrize("worker_type", ["process", "thread"])
def test_pid_1_stops_on_term_int_and_quit(container, tmp_path, worker_type, signo):
    fifo = tmp_path / "orphan.fifo"
    os.mkfifo(fifo)
    box = container("app:Orphaner", "-k", worker_type, "-w", "2",
                    env={"ORPHAN_FIFO": str(fifo)})
    box.wait_log(r"Worker 1 started")
    os.kill(box.pid, signo)
    assert box.exit_status() == 0, box.log.read_text()


def test_pid_1_restarts_its_workers_on_hup(container, tmp_path):
    fifo = tmp_path / "orphan.fifo"
    os.mkfifo(fifo)
    box = container("app:Orphaner", "-k", "process", env={"ORPHAN_FIFO": str(fifo)})
    box.wait_log(r"Worker 0 started")
    os.kill(box.pid, signal.SIGHUP)
    box.wait_log(r"Worker 0 started", skip=1)
    os.kill(box.pid, signal.SIGTERM)
    assert box.exit_status() == 0


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT])
def test_a_stop_signal_during_the_start_stops_pid_1_once_it_runs(container, tmp_path, signo):
    """PID 1 has no default signal actions, and pyse's loop takes the
    signals over only once the server runs: a stop asked during the start
    is held until then, and then stops the server, as anywhere else."""
    fifo = tmp_path / "start.fifo"
    os.mkfifo(fifo)
    box = container("app:Orphaner", "--server", "app:SlowStart", env={"START_FIFO": str(fifo),
                                                                     "ORPHAN_FIFO": "unused"})
    box.wait_log(r"before_run\(\) waits")
    os.kill(box.pid, signo)
    with open(fifo, "wb") as start:   # the start may go on
        start.write(b"x")
    box.wait_log("Received (graceful|immediate) stop")
    assert box.exit_status() == 0, box.log.read_text()


def test_an_unrecoverable_exit_code_is_the_containers_exit_status(container):
    box = container("app:Unrecoverable", "-k", "process", "--set",
                    "unrecoverable_exit_codes=[3]")
    box.wait_log("exiting with 3")
    assert box.exit_status() == 3, box.log.read_text()
