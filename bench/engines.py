"""The engines under test: how to launch each one, what it can be asked to
do, and what it needs installed.  pyse and ServerEngine read the same
configuration keys, so they get the same JSON file; gunicorn gets the
closest settings it has (see gunicorn_conf.py and README.md); the two
floors take a worker count and nothing else."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

from provision import Provisioner

HERE = Path(__file__).resolve().parent

#: The kill escalation the stubborn workers meet (pyse and ServerEngine).
ESCALATION = {
    "worker_graceful_kill_interval": 0.2,
    "worker_graceful_kill_interval_increment": 0.1,
    "worker_graceful_kill_timeout": 1.0,
    "worker_immediate_kill_interval": 0.2,
    "worker_immediate_kill_interval_increment": 0.1,
    "worker_immediate_kill_timeout": 0.4,
}


def shared_config(workers: int, run_dir: Path, mode: str, port: Optional[int]) -> dict:
    """The configuration pyse and ServerEngine both run with: their defaults
    (heartbeat every 1 s, 180 s timeout, no start delay) but for these keys."""
    config = {
        "worker_type": "process",
        "workers": workers,
        "worker_heartbeat_interval": 1.0,
        "daemonize": False,
        "log": str(run_dir / "server.log"),
        "log_level": "info",
        "bench_mode": mode,
    }
    if mode == "stubborn":
        config.update(ESCALATION)
    if port is not None:
        config["bench_port"] = port
    return config


def write_config(run_dir: Path, workers: int, mode: str, port: Optional[int]) -> str:
    path = run_dir / "config.json"
    path.write_text(json.dumps(shared_config(workers, run_dir, mode, port)))
    return str(path)


class Engine:
    """One column of the table."""
    key = ""             # short name, also the run directories' prefix
    title = ""           # column heading
    escalation = False   # has a configurable TERM -> QUIT -> KILL escalation
    http = False         # serves the HTTP load row
    #: the largest server the idle rows start, and why not more
    max_workers, max_reason = 1 << 30, ""

    def prepare(self, provisioner: Provisioner, tmp: Path) -> Optional[str]:
        """Installs or builds what the engine needs; why it cannot run, or None."""
        return None

    def version(self) -> str:
        return ""

    def command(self, run_dir: Path, workers: int, mode: str,
                port: Optional[int]) -> tuple[list[str], dict]:
        """The command line and extra environment of one launch."""
        raise NotImplementedError


class CFloor(Engine):
    key, title = "cfloor", "C floor"

    def prepare(self, provisioner: Provisioner, tmp: Path) -> Optional[str]:
        built = provisioner.c_floor(tmp)
        if isinstance(built, str):
            return built
        self.binary = built
        return None

    def version(self) -> str:
        cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout
        return "floor.c, " + (cc.splitlines() or ["gcc"])[0] + " -O2"

    def command(self, run_dir, workers, mode, port):
        return [str(self.binary), str(workers)], {}


class PythonFloor(Engine):
    key, title = "pyfloor", "Python floor"

    def version(self) -> str:
        return f"floor.py on Python {sys.version.split()[0]}"

    def command(self, run_dir, workers, mode, port):
        return [sys.executable, str(HERE / "floor.py"), str(workers)], {}


class Pyse(Engine):
    escalation = http = True

    def __init__(self, key: str, title: str, src: Optional[Path]) -> None:
        self.key, self.title, self.src = key, title, src
        self.python = Path(sys.executable)

    def prepare(self, provisioner: Provisioner, tmp: Path) -> Optional[str]:
        if self.src is None:
            # The pyse the bench itself runs with (e.g. an editable install).
            if subprocess.run([sys.executable, "-c", "import pyse"],
                              capture_output=True).returncode != 0:
                return "pyse not importable here (pip install -e ., or give --pyse-src)"
            return None
        built = provisioner.pyse_python(self.src, tmp, self.key)
        if isinstance(built, str):
            return built
        self.python = built
        return None

    def version(self) -> str:
        probe = ("import importlib.metadata as m, os, pyse; "
                 "print(m.version('pyse'), os.path.dirname(pyse.__file__))")
        out = subprocess.run([str(self.python), "-c", probe], capture_output=True,
                             text=True).stdout.split()
        version, where = (out + ["?", "?"])[:2]
        tree = self.src or Path(where)
        git = ["git", "-C", str(tree)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        # Say when the code that ran is not the commit.
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src", "csrc"],
                               capture_output=True, text=True).stdout.strip()
        note = ", with uncommitted changes in src/ or csrc/" if dirty else ""
        built = f"built from {self.src}" if self.src else f"as installed ({where})"
        return f"{version} (git {commit or 'unknown'}{note}), {built}"

    def command(self, run_dir, workers, mode, port):
        config = write_config(run_dir, workers, mode, port)
        return [str(self.python), str(HERE / "pyse_target.py"), config], {}


class ServerEngine(Engine):
    key, title = "serverengine", "ServerEngine"
    escalation = True

    def prepare(self, provisioner: Provisioner, tmp: Path) -> Optional[str]:
        return provisioner.serverengine()

    def version(self) -> str:
        return subprocess.run(["ruby", "-rserverengine", "-e", "print ServerEngine::VERSION"],
                              capture_output=True, text=True).stdout.strip()

    def command(self, run_dir, workers, mode, port):
        config = write_config(run_dir, workers, mode, port)
        return ["ruby", str(HERE / "serverengine_target.rb"), config], {}


class Gunicorn(Engine):
    key, title = "gunicorn", "gunicorn"
    http = True
    # Its master sleeps 0-100 ms after every fork: 1024 workers would take
    # ~50 s to boot, and nobody runs 1024 sync workers on 2 cores.
    max_workers, max_reason = 256, "sync workers are sized to cores; boot would take ~50 s"

    def prepare(self, provisioner: Provisioner, tmp: Path) -> Optional[str]:
        python = provisioner.gunicorn_python()
        if isinstance(python, str):
            return python
        self.python = python
        return None

    def version(self) -> str:
        probe = "import importlib.metadata as m; print(m.version('gunicorn'))"
        return subprocess.run([str(self.python), "-c", probe], capture_output=True,
                              text=True).stdout.strip()

    def command(self, run_dir, workers, mode, port):
        if mode not in ("normal", "http"):
            raise ValueError(f"gunicorn has no {mode!r} mode in this benchmark")
        env = {"BENCH_WORKERS": str(workers), "BENCH_LOG": str(run_dir / "server.log"),
               "BENCH_BIND": (f"127.0.0.1:{port}" if port is not None
                              else "unix:" + str(run_dir / "g.sock"))}
        return [str(self.python), "-m", "gunicorn", "-c", str(HERE / "gunicorn_conf.py"),
                "gunicorn_app:app"], env


def all_engines(pyse_src: Optional[Path], baseline_src: Optional[Path]) -> list[Engine]:
    """Every column, in table order: floors first, pyse last."""
    engines: list[Engine] = [CFloor(), PythonFloor(), ServerEngine(), Gunicorn()]
    if baseline_src is not None:
        engines.append(Pyse("pyse-before", "pyse (before)", baseline_src))
    engines.append(Pyse("pyse", "pyse", pyse_src))
    return engines
