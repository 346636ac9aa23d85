"""What the bench needs and the test suite does not, installed from here
when it is missing, through the ordinary clients: ServerEngine (Debian's
``ruby-serverengine``), ``wrk`` and ``ab`` (``apache2-utils``) with
apt-get; gunicorn with pip into a venv of the bench's own; the C floor
compiled with gcc; and pyse built from a given source tree into a
temporary venv.  Every step returns a reason instead of raising, so that
the bench reports a skipped engine or row rather than failing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Union

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyse-bench"

#: the Debian packages the bench installs, and the command each brings
APT_COMMANDS = {"ruby-serverengine": "ruby", "wrk": "wrk", "apache2-utils": "ab"}


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_step(cmd: list[str], what: str, timeout: float = 900,
             env: Optional[dict] = None) -> Optional[str]:
    """Runs ``cmd``; None on success, else why it failed (its last line)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(os.environ, **env))
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{what} failed: {e}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        return f"{what} failed (exit {done.returncode}): {lines[-1]}"
    return None


class Provisioner:
    def __init__(self, install: bool) -> None:
        self.install = install
        self.apt_updated = False
        self.failed: dict[str, str] = {}   # package -> why it could not be installed

    def apt(self, package: str) -> Optional[str]:
        """Installs a Debian package unless its command is there already."""
        if shutil.which(APT_COMMANDS.get(package, package)) and package != "ruby-serverengine":
            return None
        if package in self.failed:
            return self.failed[package]
        reason = self._apt_install(package)
        if reason:
            self.failed[package] = reason
        return reason

    def _apt_install(self, package: str) -> Optional[str]:
        if not self.install:
            return f"{package} not installed (--no-install)"
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            return f"{package} not installed (needs root and apt-get: apt-get install {package})"
        progress(f"installing {package} (apt-get)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        reason = run_step(cmd, f"apt-get install {package}", env=env)
        if reason and not self.apt_updated:
            # A fresh machine has no package lists yet.
            self.apt_updated = True
            run_step(["apt-get", "update", "-q"], "apt-get update", env=env)
            reason = run_step(cmd, f"apt-get install {package}", env=env)
        return reason

    def serverengine(self) -> Optional[str]:
        probe = ["ruby", "-rserverengine", "-e", ""]
        if shutil.which("ruby") and subprocess.run(probe, capture_output=True).returncode == 0:
            return None
        return self.apt("ruby-serverengine") or (
            None if subprocess.run(probe, capture_output=True).returncode == 0
            else "ruby-serverengine installed but `ruby -rserverengine` fails")

    def gunicorn_python(self) -> Union[Path, str]:
        """The python of the bench's own venv, with gunicorn in it (kept in
        the user's cache between runs); or why it could not be made."""
        venv = CACHE / "venv"
        python = venv / "bin" / "python"
        if python.exists() and run_step([str(python), "-c", "import gunicorn"], "") is None:
            return python
        if not self.install:
            return "gunicorn not installed (--no-install)"
        progress(f"installing gunicorn into {venv} (pip)")
        reason = (run_step([sys.executable, "-m", "venv", str(venv)], "python -m venv")
                  or run_step([str(python), "-m", "pip", "install", "-q", "gunicorn"],
                              "pip install gunicorn"))
        return reason or python

    def c_floor(self, tmp: Path) -> Union[Path, str]:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc is None:
            reason = self.apt("gcc")
            gcc = shutil.which("gcc")
            if gcc is None:
                return reason or "no C compiler"
        binary = tmp / "floor"
        reason = run_step([gcc, "-O2", "-Wall", "-o", str(binary), str(HERE / "floor.c")],
                          "gcc floor.c")
        return reason or binary

    def pyse_python(self, src: Path, tmp: Path, name: str) -> Union[Path, str]:
        """Builds the pyse of source tree ``src`` (its C core included) into
        a new venv under ``tmp``; returns that venv's python.  The tree is
        copied first, so a build never writes into it."""
        if not (src / "build.py").exists() or not (src / "src" / "pyse").is_dir():
            return f"{src} is not a pyse source tree (no build.py or src/pyse)"
        copy = tmp / f"{name}-src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", ".venv*",
            ".hypothesis", ".pytest_cache"))
        venv = tmp / f"{name}-venv"
        python = venv / "bin" / "python"
        progress(f"building pyse from {src} into {venv}")
        reason = (run_step([sys.executable, "-m", "venv", str(venv)], "python -m venv")
                  or run_step([str(python), "-m", "pip", "install", "-q", str(copy)],
                              f"pip install {src}"))
        return reason or python
