"""The ``pyse`` command: version, help, and errors that are one line and a
non-zero exit, never a traceback.  Run through the installed entry point.

The other CLI tests import :func:`pyse_command` and :data:`APP` from here."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import helpers

pytestmark = pytest.mark.timeout(60)

#: a worker module for the tests: W stops on request, NoRun has no run()
APP = """
import pyse

class W:
    def initialize(self):
        self.flag = pyse.BlockingFlag()

    def run(self):
        self.logger.info("run message=%s", self.config.get("message"))
        while not self.flag.wait_for_set(5.0):
            pass

    def stop(self):
        self.flag.set()

    def reload(self):
        self.logger.info("reload message=%s", self.config.get("message"))

class NoRun:
    pass

not_a_class = 42
"""


def pyse_executable() -> list[str]:
    """The venv's ``pyse`` entry point beside the interpreter running the
    tests (``python -m pyse`` if there is none)."""
    script = Path(sys.executable).parent / "pyse"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pyse"]


def pyse_command(*args: str, cwd: Path, env: dict | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs ``pyse args...`` in cwd and waits for it (no PYSE_CMD_ARGS from
    the test's environment unless env sets it)."""
    full_env = helpers.marked_env(env)
    if env is None or "PYSE_CMD_ARGS" not in env:
        full_env.pop("PYSE_CMD_ARGS", None)
    return subprocess.run([*pyse_executable(), *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str,
                          code: int = 2) -> str:
    """The command failed with code, and said so in one 'pyse: ' line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyse: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write(tmp_path, "app.py", APP)
    return tmp_path


def test_version_on_the_command_and_on_run(tmp_path):
    expected = f"pyse {metadata.version('pyse')}"
    for args in (["--version"], ["run", "--version"]):
        result = pyse_command(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_run_help_describes_every_option_and_points_to_the_reference(tmp_path):
    result = pyse_command("run", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = result.stdout
    for option in ("-w N, --workers N", "-k TYPE, --worker-type TYPE", "-D, --daemon",
                   "-p FILE, --pid-file FILE", "--log-file FILE", "--log-level LEVEL",
                   "-c FILE, --config FILE", "--set KEY=VALUE", "--check-config",
                   "--print-config", "--server CLASS", "--version"):
        assert option in text, option
    assert "docs/configuration.md" in text and "pyse config-reference" in text
    assert "PYSE_CMD_ARGS" in text


def test_every_option_of_every_command_has_help():
    from pyse.cli import build_parser

    parser = build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = subparsers[0].choices
    assert {"run", "stop", "restart", "reload", "detach", "dump", "status",
            "config-reference"} <= set(commands)
    for name, command in [("pyse", parser), *commands.items()]:
        for action in command._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("args, fragments", [
    (["run", "app"], ["worker 'app': expected package.module:ClassName"]),
    (["run", "nosuchmodule:W"], ["no module named 'nosuchmodule'"]),
    (["run", "app:Missing"], ["'app' has no attribute 'Missing'"]),
    (["run", "app:NoRun"], ["has no run() method"]),
    (["run", "app:not_a_class"], ["expected a class, got int"]),
    (["run", "app:W", "--server", "app:Missing"], ["server 'app:Missing'"]),
    (["run", "app:W", "-c", "missing.json"], ["missing.json'", "cannot read it"]),
    (["run", "app:W", "-w", "0"], ["command line --workers", "'workers': got 0",
                                   "an integer >= 1"]),
    (["run", "app:W", "-k", "gevent"], ["'worker_type': got 'gevent'", "'process'"]),
    (["run", "app:W", "--log-level", "loud"], ["'log_level': got 'loud'"]),
    (["run", "app:W", "--set", "workers"], ["--set 'workers': expected KEY=VALUE"]),
    (["run"], ["the worker class", "see 'pyse run --help'"]),
    (["run", "app:W", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    ([], ["required: COMMAND"]),
])
def test_errors_are_one_line_without_a_traceback(app_dir, args, fragments):
    assert_one_line_error(pyse_command(*args, cwd=app_dir), *fragments)


def test_a_module_that_raises_at_import_is_named_with_the_line(app_dir):
    write(app_dir, "broken.py", "x = 1\ny = 1 / 0\n")
    write(app_dir, "unparsable.py", "def f(:\n")
    write(app_dir, "needs.py", "import nosuchdependency_for_pyse\n")
    assert_one_line_error(pyse_command("run", "broken:W", cwd=app_dir),
                          "importing 'broken' failed: ZeroDivisionError", "line 2")
    assert_one_line_error(pyse_command("run", "unparsable:W", cwd=app_dir),
                          "importing 'unparsable' failed: SyntaxError", "line 1")
    assert_one_line_error(pyse_command("run", "needs:W", cwd=app_dir),
                          "importing 'needs' failed: ModuleNotFoundError",
                          "'nosuchdependency_for_pyse'", "needs.py, line 1")


def test_several_bad_values_are_reported_together_when_running(app_dir):
    line = assert_one_line_error(pyse_command("run", "app:W", "-w", "0", "-k", "gevent",
                                              cwd=app_dir))
    assert "2 problems" in line and "'workers'" in line and "'worker_type'" in line


def test_a_server_hook_that_raises_in_the_foreground_is_one_line_and_exit_1(app_dir):
    write(app_dir, "hooks.py", """
        class S:
            def before_run(self):
                raise RuntimeError("no database")
        class W:
            def run(self):
                pass
    """)
    result = pyse_command("run", "hooks:W", "--server", "hooks:S", cwd=app_dir)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "pyse: the server failed: RuntimeError: no database" in result.stderr
    assert "hooks.py, line 4" in result.stderr


@pytest.mark.parametrize("worker_type", ["embedded", "thread", "process"])
def test_workers_that_cannot_start_fail_the_start_with_exit_3(app_dir, worker_type):
    """A worker whose initialize() raises at the first start: the server
    stops (gunicorn's "worker failed to boot"), the log has the traceback
    and the command says why in one line."""
    write(app_dir, "hooks.py", """
        class W:
            def initialize(self):
                raise RuntimeError("no database")
            def run(self):
                pass
    """)
    result = pyse_command("run", "hooks:W", "-k", worker_type, cwd=app_dir)
    assert result.returncode == 3, result.stderr
    assert "RuntimeError: no database" in result.stderr, "the log (stderr) has the reason"
    assert result.stderr.rstrip().splitlines()[-1] == \
        "pyse: cannot start: worker 0 failed to start: RuntimeError: no database"


def test_python_dash_m_pyse_is_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyse", "--version"], capture_output=True,
                            text=True, timeout=30, env=helpers.marked_env())
    assert result.returncode == 0 and result.stdout.startswith("pyse ")
