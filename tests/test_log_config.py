"""``log_config``: the user's dictConfig (a dict or a file), applied at start
and inherited by every process; how it meets ``log_level`` and pyse's
handler on the root logger."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import pyse
from log_harness import Entry, entries
from pyse import config as config_mod

#: myapp at DEBUG (below log_level info), urllib3 silenced
LEVELS_ONLY = {"loggers": {"myapp": {"level": "DEBUG"}, "urllib3": {"level": "CRITICAL"}}}

LEVELS_ONLY_INI = """\
[loggers]
keys=root,myapp,urllib3

[handlers]
keys=

[formatters]
keys=

[logger_root]
handlers=

[logger_myapp]
level=DEBUG
handlers=
qualname=myapp

[logger_urllib3]
level=CRITICAL
handlers=
qualname=urllib3
"""

LEVELS_ONLY_TOML = """\
[loggers.myapp]
level = "DEBUG"

[loggers.urllib3]
level = "CRITICAL"
"""


def their_file_handler(path: Path) -> dict:
    return {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}


PLAIN = {"plain": {"format": "%(process)d %(name)s %(levelname)s %(message)s"}}


def check_levels_applied(text: str, done: dict[int, int]) -> None:
    records, _ = entries(text)
    for wid, pid in done.items():
        assert Entry("debug", pid, "myapp.worker", f"app debug from worker {wid}") in records
    assert "app debug from server -1" in text, "log_config's level wins over log_level"
    assert "library error from" not in text, "urllib3 was set to CRITICAL"
    assert "app info from server -1" in text


@pytest.mark.timeout(60)
def test_levels_of_log_config_win_over_log_level_in_every_process(start_log_run, tmp_path):
    theirs = tmp_path / "theirs.log"
    config = {"formatters": PLAIN, "handlers": {"theirs": their_file_handler(theirs)},
              "loggers": {"myapp": {"level": "DEBUG", "handlers": ["theirs"]},
                          "urllib3": {"level": "CRITICAL"}}}
    run = start_log_run({"workers": 2, "log_level": "info", "test_python_logging": True,
                         "log_config": config})
    done = dict(run.wait_events("done", 2, 30))
    assert run.stop() == 0
    text = run.log_path.read_text()
    check_levels_applied(text, done)
    # Their handler, opened once before the forks, got every process's lines.
    mine = theirs.read_text()
    for wid, pid in done.items():
        assert f"{pid} myapp.worker DEBUG app debug from worker {wid}" in mine
    assert "myapp.server WARNING app warning from server -1" in mine


@pytest.mark.timeout(60)
@pytest.mark.parametrize("keep_pyse", [False, True])
def test_root_handlers_of_log_config_replace_pyses_unless_they_name_it(
        start_log_run, tmp_path, keep_pyse):
    theirs = tmp_path / "theirs.log"
    handlers = {"theirs": their_file_handler(theirs)}
    if keep_pyse:
        handlers["pyse"] = {"class": "pyse.logger.PyseLogHandler"}
    config = {"formatters": PLAIN, "handlers": handlers,
              "root": {"level": "INFO", "handlers": sorted(handlers)}}
    run = start_log_run({"workers": 1, "log_level": "debug", "test_python_logging": True,
                         "log_config": config})
    (_, pid), = run.wait_events("done", 1, 30)
    assert run.stop() == 0
    text, mine = run.log_path.read_text(), theirs.read_text()
    assert mine.count("app info from worker 0") == 1
    assert text.count("app info from worker 0") == (1 if keep_pyse else 0)
    # root's level came from log_config, not from log_level debug
    assert "app debug from" not in text + mine
    said = "The root logger already has handlers (FileHandler)"
    assert (said in text) is not keep_pyse
    if keep_pyse:
        assert Entry("info", pid, "myapp.worker", "app info from worker 0") in entries(text)[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".json", ".toml", ".ini"])
def test_log_config_from_a_file(start_log_run, tmp_path, suffix):
    if suffix == ".toml":
        pytest.importorskip("tomllib")
    path = tmp_path / f"logging{suffix}"
    path.write_text({".json": json.dumps(LEVELS_ONLY), ".toml": LEVELS_ONLY_TOML,
                     ".ini": LEVELS_ONLY_INI}[suffix])
    run = start_log_run({"workers": 1, "log_level": "info", "test_python_logging": True,
                         "log_config": str(path)})
    done = dict(run.wait_events("done", 1, 30))
    assert run.stop() == 0
    check_levels_applied(run.log_path.read_text(), done)


@pytest.mark.parametrize("value,words", [
    ({"handler": {}}, "unknown section(s) 'handler'"),
    ({"version": 2}, "version 2"),
    ({"loggers": {"myapp": "DEBUG"}}, "'loggers' must map names to dicts"),
    ("/nonexistent/logging.json", "cannot read /nonexistent/logging.json"),
    ("logging.xml", "is neither .json, .toml, .yaml, .yml nor .ini, .conf, .cfg"),
    (42, "got a int"),
])
def test_a_bad_log_config_is_refused_before_anything_starts(value, words):
    with pytest.raises(pyse.ConfigError) as info:
        config_mod.load({"log_config": value})
    message = str(info.value)
    assert "'log_config'" in message and words in message, message
    assert "logging.config.dictConfig dict" in message


def test_a_bad_file_names_the_file_and_the_problem(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    no_sections = tmp_path / "logging.ini"
    no_sections.write_text("[loggers]\nkeys=root\n")
    for path, words in [(broken, "is not valid"), (no_sections, "no [handlers] section")]:
        with pytest.raises(pyse.ConfigError, match="log_config") as info:
            config_mod.load({"log_config": str(path)})
        assert str(path) in str(info.value) and words in str(info.value)


def apply_in_a_child(config: dict, then: str = "") -> subprocess.CompletedProcess:
    """apply_log_config() in a fresh interpreter: dictConfig closes every
    handler of the process it runs in, pytest's included."""
    code = (f"import logging; from pyse.log_config import apply_log_config\n"
            f"early = logging.getLogger('early')\n"
            f"apply_log_config({config!r})\n{then}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=helpers.marked_env())


def test_applying_reports_what_could_not_be_built(tmp_path):
    config = {"handlers": {"f": {"class": "logging.FileHandler",
                                 "filename": str(tmp_path / "no" / "x.log")}}}
    done = apply_in_a_child(config)
    assert done.returncode != 0
    assert re.search(r"ValueError: Unable to configure handler 'f'.*No such file", done.stderr)


def test_version_may_be_left_out_and_loggers_made_before_stay_enabled():
    done = apply_in_a_child({"loggers": {"other": {"level": "INFO"}}},
                            "assert not early.disabled; print('ok')")
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


@pytest.mark.timeout(60)
def test_a_log_config_that_fails_at_start_stops_the_start(start_log_run, tmp_path):
    """One clear line and the start-failure exit code (a daemonized launch
    goes through the same start, see test_daemon)."""
    config = {"handlers": {"f": {"class": "logging.FileHandler",
                                 "filename": str(tmp_path / "no" / "x.log")}}}
    run = start_log_run({"log_config": config, "daemonize_error_exit_code": 3})
    assert run.proc.wait(30) == 3
    said = run.outer_path.read_text()
    assert "config key 'log_config'" in said and "Unable to configure handler 'f'" in said, said
    assert not run.events("run")
