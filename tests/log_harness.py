"""Runs tests/programs/log_writer.py (a process server writing to a log
file) and reads its events and log files."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest

import helpers
import pyse.logger
from pyse import log_handlers

PROGRAM = Path(__file__).parent / "programs" / "log_writer.py"


#: one line in ServerEngine's shape
SE_LINE = re.compile(r"^(?P<letter>[TDIWEFA]), \[(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) "
                     r"#(?P<pid>\d+)\] (?P<severity>[ A-Z]{5}) -- (?P<prog>[^:]*): (?P<msg>.*)$")
#: Ruby Logger's severity word -> the JSON format's level
JSON_LEVELS = {"TRACE": "trace", "DEBUG": "debug", "INFO": "info", "WARN": "warning",
               "ERROR": "error", "FATAL": "critical"}


class Entry(NamedTuple):
    """One record of the log, whatever its format: level as the JSON format
    names it, logger name ("" for pyse's own and root in ServerEngine's shape)."""
    level: str
    pid: int
    logger: str
    message: str


def entries(text: str, log_format: str = "serverengine") -> tuple[list[Entry], list[str]]:
    """The records in a log's text, and the lines that are no record
    (traceback lines, raw writes)."""
    records, others = [], []
    for line in text.splitlines():
        if log_format == "json":
            try:
                obj = json.loads(line)
            except ValueError:
                others.append(line)
                continue
            records.append(Entry(obj["level"], obj["pid"], obj["logger"], obj["message"]))
            continue
        match = SE_LINE.match(line)
        if match is None:
            others.append(line)
            continue
        records.append(Entry(JSON_LEVELS[match["severity"].strip()], int(match["pid"]),
                             match["prog"], match["msg"]))
    return records, others


@pytest.fixture
def bare_root_logger(monkeypatch) -> Iterator[logging.Logger]:
    """A root logger as a program starts with (no handler, WARNING) for
    LogSetups built in this process, instead of the real one, on which
    pytest hangs its own capture handlers; loggers made with
    ``child_logger()`` propagate to it."""
    root = logging.RootLogger(logging.WARNING)
    monkeypatch.setattr(pyse.logger, "root_logger", lambda: root)
    target = log_handlers._target
    try:
        yield root
    finally:
        log_handlers.set_pyse_target(target)


def child_logger(root: logging.Logger, name: str) -> logging.Logger:
    """A logger whose records propagate to root, as getLogger(name)'s
    propagate to the real root logger."""
    logger = logging.Logger(name)
    logger.parent = root
    return logger


class LogWriterRun:
    def __init__(self, tmp_path: Path, config: dict, env: Optional[dict] = None) -> None:
        self.dir = tmp_path
        self.config_path = tmp_path / "config.json"
        self.events_path = tmp_path / "events.log"
        self.log_path = tmp_path / "server.log"
        self.outer_path = tmp_path / "outer.out"
        base = {"worker_type": "process", "log_level": "debug", "log": str(self.log_path)}
        base.update(config)
        self.config_path.write_text(json.dumps(base))
        self.events_path.touch()
        full_env = helpers.marked_env({"PYSE_TEST_EVENTS": str(self.events_path)})
        full_env.update(env or {})
        self.outer = open(self.outer_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROGRAM), str(self.config_path)],
                                     env=full_env, stdout=self.outer, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    def events(self, event: str) -> list[tuple[int, int]]:
        """(worker id, pid) of each recorded ``event``."""
        out = []
        for line in self.events_path.read_text().splitlines():
            name, wid, pid = line.split()
            if name == event:
                out.append((int(wid), int(pid)))
        return out

    def wait_events(self, event: str, count: int, timeout: float) -> list[tuple[int, int]]:
        return helpers.wait_for(lambda: (lambda es: es if len(es) >= count else None)(
            self.events(event)), timeout, what=f"{count} {event!r} events")

    def log_files(self) -> list[Path]:
        """The log and its rotated generations, oldest first."""
        rotated = sorted(self.dir.glob("server.log.[0-9]*"),
                         key=lambda p: int(p.name.rsplit(".", 1)[1]), reverse=True)
        return rotated + ([self.log_path] if self.log_path.exists() else [])

    def all_log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files())

    def wait_log(self, text: str, timeout: float, path: Optional[Path] = None) -> None:
        path = path or self.log_path
        helpers.wait_for(lambda: path.exists() and text in path.read_text(errors="replace"),
                         timeout, what=f"{text!r} in {path.name}")

    def stop(self, timeout: float = 30.0) -> int:
        os.kill(self.pid, 15)
        return self.proc.wait(timeout)

    def close(self) -> None:
        helpers.kill_group(self.pid)
        self.proc.wait(10)
        self.outer.close()
