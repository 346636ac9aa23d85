"""``log_format: "json"``: one JSON object per line, for records and for
captured fd 1/2 lines alike; reloaded at USR2."""
from __future__ import annotations

import calendar
import io
import json
import logging
import signal
import time

import pytest

from log_harness import Entry, bare_root_logger, child_logger, entries  # noqa: F401 (fixture)
from pyse import config as config_mod
from pyse.log_format import JsonFormatter
from pyse.logger import LogSetup


def test_json_fields_of_one_record():
    record = logging.LogRecord("myapp.worker", logging.WARNING, "", 0, "disk at %d%%", (93,), None)
    record.created = 1795600800.123456
    record.process = 4242
    obj = json.loads(JsonFormatter().format(record))
    assert obj == {"timestamp": obj["timestamp"], "level": "warning", "pid": 4242,
                   "logger": "myapp.worker", "message": "disk at 93%"}
    stamp = obj["timestamp"]
    assert stamp.endswith("Z") and stamp[19:] == ".123456Z", stamp
    assert calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) == 1795600800


def test_json_exception_newlines_and_text_stay_on_one_line():
    try:
        raise KeyError("missing")
    except KeyError:
        record = logging.LogRecord("app", logging.ERROR, "", 0, "two\nlines «ü»", None,
                                   __import__("sys").exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text and "«ü»" in text
    obj = json.loads(text)
    assert obj["message"] == "two\nlines «ü»"
    assert obj["exception"].startswith("Traceback (most recent call last):")
    assert obj["exception"].endswith("KeyError: 'missing'")
    assert "stack" not in obj


@pytest.mark.usefixtures("bare_root_logger")
def test_levels_of_pyse_and_of_other_loggers_in_json(bare_root_logger):  # noqa: F811
    stream = io.StringIO()
    setup = LogSetup(config_mod.load({"log": stream, "log_format": "json", "log_level": "trace"}))
    setup.start()
    setup.logger.trace("t")
    setup.logger.warning("w")
    child_logger(bare_root_logger, "lib").critical("c")
    child_logger(bare_root_logger, "lib").log(5, "trace of another logger")
    got = [(o["level"], o["logger"], o["message"])
           for o in map(json.loads, stream.getvalue().splitlines())]
    assert got == [("trace", "pyse", "t"), ("warning", "pyse", "w"), ("critical", "lib", "c"),
                   ("trace", "lib", "trace of another logger")]


@pytest.mark.timeout(60)
def test_captured_output_is_json_too(start_log_run):
    """Workers' fd 1/2 (through the reader thread) and the process server's
    print() (a record at once) are JSON records; only what is written below
    Python in the forking server stays raw."""
    run = start_log_run({"workers": 1, "test_output": True, "log_format": "json"})
    (_, pid), = run.wait_events("done", 1, 30)
    assert run.stop() == 0
    records, others = entries(run.log_path.read_text(), "json")
    for entry in [Entry("info", pid, "stdout", "print from worker 0"),
                  Entry("info", pid, "stdout", "fd1 from worker 0"),
                  Entry("warning", pid, "stderr", "fd2 from worker 0"),
                  Entry("warning", pid, "stderr", "child stderr of worker 0"),
                  Entry("info", pid, "stdout", "last words of worker 0"),
                  Entry("info", run.pid, "stdout", "server print in before_run"),
                  Entry("info", run.pid, "pyse", f"Worker 0 started (pid {pid})")]:
        assert entry in records, entry
    assert others == ["server raw in before_run"]


@pytest.mark.timeout(60)
def test_usr2_switches_the_format_in_the_server_and_the_workers(start_log_run):
    run = start_log_run({"workers": 1})
    (_, pid), = run.wait_events("run", 1, 30)
    config = json.loads(run.config_path.read_text())
    config["log_format"] = "json"
    run.config_path.write_text(json.dumps(config))
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("reload", 1, 10)
    run.wait_log('"message": "print at reload of worker 0"', 10)
    assert run.stop() == 0
    before, _, after = run.log_path.read_text().partition("Received reload")
    assert entries(before)[0], "ServerEngine's lines before the reload"
    records, others = entries(after.split("\n", 1)[1], "json")
    # The worker says it got the signal before it reads the new format.
    assert [line for line in others if "Worker 0 received SIGUSR2" not in line] \
        == ["server raw at reload"]
    assert Entry("info", pid, "pyse", "worker 0 reloaded") in records
    assert Entry("info", run.pid, "pyse", "Worker 0 finished with status 0") in records
