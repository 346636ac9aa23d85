"""A reload reaches running process workers: the README's example as
written, a bad configuration that changes nobody's, objects that stay."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from pyse.worker_process import encode_reload, received_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)


def readme_reload_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Reloading the configuration", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def example_dir(tmp_path):
    (tmp_path / "example.py").write_text(readme_reload_example())
    (tmp_path / "config.json").write_text(json.dumps({"workers": 2, "sleep": 0.05,
                                                       "message": "hello"}))
    yield tmp_path
    pid_file = tmp_path / "myserver.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        helpers.wait_pid_exit(pid, 15)   # re-parented to us (the subreaper): reaped here


def greeting_pids(log: Path, message: str) -> set[int]:
    return {int(m) for m in re.findall(rf"#(\d+)\]  INFO -- : {message}$",
                                       log.read_text() if log.exists() else "", re.M)}


def test_the_readme_reload_example_reaches_its_process_workers(example_dir):
    log = example_dir / "myserver.log"
    launched = subprocess.run([sys.executable, "example.py"], cwd=example_dir,
                              env=helpers.marked_env(), timeout=30, capture_output=True,
                              text=True)
    assert launched.returncode == 0, launched.stderr
    daemon = int((example_dir / "myserver.pid").read_text())
    workers = helpers.wait_for(lambda: len(greeting_pids(log, "hello")) == 2
                               and greeting_pids(log, "hello"), 15,
                               what="both workers greeting")
    (example_dir / "config.json").write_text(json.dumps({"workers": 2, "sleep": 0.05,
                                                         "message": "bonjour"}))
    os.kill(daemon, signal.SIGUSR2)
    helpers.wait_for(lambda: greeting_pids(log, "bonjour") == workers, 15,
                     what="the same two worker processes greeting with the new message")

    # A configuration that does not validate: every worker keeps its own,
    # and the error is logged once, by the server.
    (example_dir / "config.json").write_text(json.dumps({"workers": 2, "sleep": 0.05,
                                                         "message": "hallo",
                                                         "log_level": "loud"}))
    os.kill(daemon, signal.SIGUSR2)
    helpers.wait_for(lambda: "Reload failed" in log.read_text(), 10, what="the reload error")
    marker = len(log.read_text())
    helpers.wait_for(lambda: all(pid in greeting_pids(log, "bonjour") for pid in workers)
                     and log.read_text()[marker:].count("INFO -- : bonjour") >= 4, 10,
                     what="the workers going on with the old message")
    assert "hallo" not in log.read_text()
    assert log.read_text().count("'log_level'") == 1, "one error line, not one per worker"


def test_objects_in_the_configuration_stay_as_the_worker_has_them():
    logger = logging.getLogger("pyse-test-reload")
    current = {"workers": 2, "logger": logger, "message": "old", "nested": {"a": [1, 2]}}
    new = {"workers": 3, "logger": logging.getLogger("other"), "message": "new",
           "nested": {"a": [3]}, "stream": sys.stderr}
    import pickle
    got = received_config(pickle.loads(encode_reload(new)), current)
    assert got["workers"] == 3 and got["message"] == "new" and got["nested"] == {"a": [3]}
    assert got["logger"] is logger, "an object is not sent: the worker keeps its own"
    assert got["stream"] is None, "an object the worker never had stays unset"
