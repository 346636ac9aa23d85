"""The three engines under test: how to launch each one and whether it is
installed.  pyse and ServerEngine read the same configuration keys, so they
get the same JSON file; gunicorn gets the closest settings it has (see
gunicorn_conf.py and README.md)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


def shared_config(workers: int, run_dir: Path, mode: str) -> dict:
    """The configuration pyse and ServerEngine both run with: their defaults
    (heartbeat every 1 s, 180 s timeout, no start delay) but for these keys."""
    config = {
        "worker_type": "process",
        "workers": workers,
        "daemonize": False,
        "log": str(run_dir / "server.log"),
        "log_level": "info",
        "bench_mode": mode,
    }
    if mode == "stubborn":
        config.update(ESCALATION)
    return config


@dataclass(frozen=True)
class Engine:
    key: str           # short name, also the run directories' prefix
    title: str         # column heading
    escalation: bool   # does it have a configurable TERM -> QUIT -> KILL escalation?

    def skip_reason(self) -> Optional[str]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def command(self, run_dir: Path, workers: int, mode: str) -> tuple[list[str], dict]:
        """The command line and extra environment of one launch."""
        raise NotImplementedError


class Pyse(Engine):
    def skip_reason(self) -> Optional[str]:
        if importlib.util.find_spec("pyse") is None:
            return "skipped: pyse not installed (pip install -e .)"
        return None

    def version(self) -> str:
        git = ["git", "-C", str(HERE.parent)]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        # The checkout is shared: say when the code that ran is not the commit.
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "src", "csrc"],
                               capture_output=True, text=True).stdout.strip()
        note = ", with uncommitted changes in src/ or csrc/" if dirty else ""
        return f"{importlib.metadata.version('pyse')} (git {commit or 'unknown'}{note})"

    def command(self, run_dir: Path, workers: int, mode: str) -> tuple[list[str], dict]:
        path = run_dir / "config.json"
        path.write_text(json.dumps(shared_config(workers, run_dir, mode)))
        return [sys.executable, str(HERE / "pyse_target.py"), str(path)], {}


class ServerEngine(Engine):
    def skip_reason(self) -> Optional[str]:
        if shutil.which("ruby") is None:
            return "skipped: ruby not installed"
        probe = subprocess.run(["ruby", "-rserverengine", "-e", ""], capture_output=True)
        if probe.returncode != 0:
            return "skipped: serverengine not installed (apt-get install ruby-serverengine)"
        return None

    def version(self) -> str:
        return subprocess.run(["ruby", "-rserverengine", "-e", "print ServerEngine::VERSION"],
                              capture_output=True, text=True).stdout.strip()

    def command(self, run_dir: Path, workers: int, mode: str) -> tuple[list[str], dict]:
        path = run_dir / "config.json"
        path.write_text(json.dumps(shared_config(workers, run_dir, mode)))
        return ["ruby", str(HERE / "serverengine_target.rb"), str(path)], {}


class Gunicorn(Engine):
    def skip_reason(self) -> Optional[str]:
        if importlib.util.find_spec("gunicorn") is None:
            return "skipped: gunicorn not installed"
        return None

    def version(self) -> str:
        return importlib.metadata.version("gunicorn")

    def command(self, run_dir: Path, workers: int, mode: str) -> tuple[list[str], dict]:
        if mode != "normal":
            raise ValueError(f"gunicorn has no {mode!r} mode in this benchmark")
        env = {"BENCH_WORKERS": str(workers), "BENCH_SOCKET": str(run_dir / "g.sock"),
               "BENCH_LOG": str(run_dir / "server.log")}
        return [sys.executable, "-m", "gunicorn", "-c", str(HERE / "gunicorn_conf.py"),
                "gunicorn_app:app"], env


ENGINES = [Pyse("pyse", "pyse", True), ServerEngine("serverengine", "ServerEngine", True),
           Gunicorn("gunicorn", "gunicorn", False)]
