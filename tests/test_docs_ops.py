"""The operator's documents hold what they claim: the sample systemd units
(their shape, their TimeoutStopSec against the kill budget, and
``systemd-analyze verify`` where that tool exists), and the kill budgets of
docs/containers.md."""
from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from pyse import config
from pyse.config_file import read_config_file
from pyse.kill_budget import stop_budget
from test_cli import pyse_executable

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_MD = ROOT / "docs" / "systemd.md"
CONTAINERS_MD = ROOT / "docs" / "containers.md"
#: what TimeoutStopSec adds to the kill budget for the server's own exit
MARGIN = 10


def fenced(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def units() -> dict[str, str]:
    """The units of docs/systemd.md by file name (their first comment)."""
    found = {}
    for block in fenced(SYSTEMD_MD, "ini"):
        name = re.match(r"# /etc/systemd/system/(\S+)\n", block)
        assert name, f"a unit without its file name in a first comment:\n{block}"
        found[name.group(1)] = block
    return found


def parse(unit: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(unit)
    return parser


def documented_config(tmp_path: Path) -> dict:
    """The server.toml the units run with, validated."""
    (toml,) = fenced(SYSTEMD_MD, "toml")
    path = tmp_path / "server.toml"
    path.write_text(toml)
    return config.validate(read_config_file(str(path)))


def test_there_are_a_foreground_and_a_daemonized_unit():
    assert set(units()) == {"myapp.service", "myapp-daemon.service"}


@pytest.mark.parametrize("name", ["myapp.service", "myapp-daemon.service"])
def test_each_unit_has_the_shape_the_document_describes(name, tmp_path):
    service = parse(units()[name])["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"
    assert service["ExecReload"] == "/bin/kill -USR2 $MAINPID"
    assert int(service["WatchdogSec"]) > 0
    argv = shlex.split(service["ExecStart"])
    assert argv[1] == "run" and "-c" in argv and "-p" in argv
    pid_file = argv[argv.index("-p") + 1]
    assert pid_file.startswith(f"/run/{service['RuntimeDirectory']}/")
    budget = stop_budget(documented_config(tmp_path))
    assert budget == 70
    assert int(service["TimeoutStopSec"]) == budget + MARGIN
    daemonized = "-D" in argv
    assert daemonized == (name == "myapp-daemon.service")
    if daemonized:
        assert service["PIDFile"] == pid_file
        assert "--log-file" in argv    # a daemon has no stderr for the journal


def test_the_readme_shows_the_foreground_unit():
    (snippet,) = fenced(ROOT / "README.md", "ini")
    foreground = units()["myapp.service"].splitlines()
    for line in snippet.splitlines():
        assert line in foreground, f"README's unit line {line!r} is not in docs/systemd.md"


@pytest.mark.parametrize("keys, budget, grace", [
    ({}, 1260, "1270"),
    ({"worker_graceful_kill_timeout": 60, "worker_immediate_kill_timeout": 10}, 70, "80"),
    ({"worker_graceful_kill_timeout": 20, "worker_immediate_kill_timeout": 5,
      "worker_immediate_kill_interval": 5}, 25, "30 (the default)"),
])
def test_the_budgets_the_documents_quote(keys, budget, grace):
    assert stop_budget(config.validate({"worker_type": "process", **keys})) == budget
    assert f"| {budget} | {grace} |" in CONTAINERS_MD.read_text()


def test_the_default_budget_in_systemd_md():
    assert stop_budget(config.validate({"worker_type": "process"})) == 1260
    assert "B = 600 + 660 = **1260 s**" in SYSTEMD_MD.read_text()


def test_systemd_analyze_verifies_the_units(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here; the units' shape is checked above")
    pyse = pyse_executable()[0]
    paths = []
    for name, unit in units().items():
        # The binary must exist for verify to accept ExecStart: the venv's.
        path = tmp_path / name
        path.write_text(unit.replace("/srv/myapp/venv/bin/pyse", pyse))
        paths.append(str(path))
    result = subprocess.run([tool, "verify", *paths], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in result.stderr.splitlines()
                  if any(Path(p).name in line for p in paths)]
    assert result.returncode == 0 and not complaints, result.stderr
