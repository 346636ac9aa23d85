"""ServerEngine's spec/daemon_logger_spec.rb, ported.

ServerEngine's DaemonLogger is what ``self.logger`` is in its hooks; pyse's
is a standard logging.Logger that pyse builds from the ``log``, ``log_level``
and ``log_rotate_*`` keys.  So each example runs in a small program whose
embedded worker does what the spec does to its ``subject``, through
``self.logger`` and the signals: Ruby's ``reopen!`` and ``logdev =`` are a
reload (USR2) here, which reopens the log and applies a new ``log``.
"""
from __future__ import annotations

import json
import logging
import re
import subprocess
import textwrap

import pytest

import helpers
import pyse

PROGRAM = '''
import json, logging, os, signal, sys
import pyse

RESULTS = {{}}
CONFIG = {config}
TRACE = logging.getLevelName("TRACE")


def log_text(path):
    with open(path) as f:
        return f.read()


class Subject:
    def initialize(self):
        self.stop_flag = pyse.BlockingFlag()
        self.reloaded = pyse.BlockingFlag()

    def reload_now(self):
        """The pyse way to reach the logger's reopen!: USR2, and its end."""
        self.reloaded.reset()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert self.reloaded.wait_for_set(10), "no reload within 10 s"

    def run(self):
        logger = self.logger
        try:
{body}
        finally:
            with open(sys.argv[1], "w") as f:
                json.dump(RESULTS, f)
            os.kill(os.getpid(), signal.SIGTERM)
            self.stop_flag.wait_for_set(10)

    def stop(self):
        self.stop_flag.set()

    def reload(self):
        self.reloaded.set()


pyse.create(None, Subject, lambda: dict(CONFIG)).run()
'''


def run_subject(tmp_path, config: dict, body: str, timeout: float = 15) -> dict:
    """Runs body as the worker's run() (``logger`` is self.logger; RESULTS a
    dict it fills) in an embedded server with config; returns RESULTS, and
    what the program wrote to its stdout and stderr as RESULTS["output"]."""
    results = tmp_path / "results.json"
    source = PROGRAM.format(config=repr(config),
                            body=textwrap.indent(textwrap.dedent(body), " " * 12))
    proc = helpers.start_python(source, tmp_path, (results,), stdout=subprocess.PIPE)
    with helpers.killing_group(proc):
        out, _ = proc.communicate(timeout=timeout)
    output = out.decode(errors="replace")
    assert proc.returncode == 0, output
    return {**json.loads(results.read_text()), "output": output}


@pytest.fixture
def log_dir(tmp_path):
    """The spec's tmp/ directory."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def subject_config(log_dir, **config):
    """The spec's subject: DaemonLogger.new("tmp/se1.log", level: 'trace')."""
    return {"log": str(log_dir / "se1.log"), "log_level": "trace", **config}


def test_reopen(tmp_path, log_dir):
    """reopen"""
    results = run_subject(tmp_path, subject_config(log_dir), '''
        path = CONFIG["log"]
        logger.warning("ABCDEF")
        open(path, "w").close()
        logger.warning("test2")
        RESULTS["after_truncate"] = log_text(path)
        self.reload_now()
        logger.warning("test3")
        RESULTS["after_reopen"] = log_text(path)
    ''')
    assert "ABCDEF" not in results["after_truncate"]
    assert "test3" in results["after_reopen"]


def test_reset_path(tmp_path, log_dir):
    """reset path"""
    run_subject(tmp_path, subject_config(log_dir), f'''
        CONFIG["log"] = {str(log_dir / "se2.log")!r}
        self.reload_now()
        logger.warning("test")
    ''')
    assert re.search(r"test$", (log_dir / "se2.log").read_text(), re.M)


def test_default_level_is_debug(tmp_path, log_dir):
    """default level is debug"""
    config = subject_config(log_dir)
    del config["log_level"]
    run_subject(tmp_path, config, '''
        logger.debug("debug")
        logger.trace("trace")
    ''')
    text = (log_dir / "se1.log").read_text()
    assert re.search(r"debug$", text, re.M)
    assert not re.search(r"trace$", text, re.M)


LEVELS = ["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE"]   # FATAL ... TRACE
TRACE = 5   # pyse's trace level, below DEBUG (docs/logging.md)


def test_level_set_by_int(tmp_path, log_dir):
    """level set by int"""
    results = run_subject(tmp_path, subject_config(log_dir), '''
        # What the server logged already asked the logger about these levels.
        for name in ["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE"]:
            level = logging.getLevelName(name)
            logger.setLevel(level)
            RESULTS[name] = [logger.level == level] + [
                logger.isEnabledFor(logging.getLevelName(asked))
                for asked in ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]]
    ''')
    del results["output"]
    for set_to, got in results.items():
        enabled = [LEVELS.index(asked) <= LEVELS.index(set_to)
                   for asked in ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]]
        assert got == [True] + enabled, f"after setLevel({set_to})"


def test_level_set_by_string(tmp_path, log_dir):
    """level set by string"""
    # The log_level key takes ServerEngine's level words; set here by a reload.
    results = run_subject(tmp_path, subject_config(log_dir), '''
        for word in ["fatal", "error", "warn", "info", "debug", "trace"]:
            CONFIG["log_level"] = word
            self.reload_now()
            RESULTS[word] = logger.level
    ''')
    del results["output"]
    assert results == {"fatal": logging.CRITICAL, "error": logging.ERROR,
                       "warn": logging.WARNING, "info": logging.INFO,
                       "debug": logging.DEBUG, "trace": TRACE}


class Worker:
    def run(self):
        pass


def test_unknown_level():
    """unknown level"""
    # Ruby's ArgumentError: a pyse.ConfigError, which is a ValueError.
    with pytest.raises(pyse.ConfigError, match="log_level") as caught:
        pyse.create(None, Worker, {"log_level": "unknown"})
    assert isinstance(caught.value, ValueError)
    assert "unknown" in str(caught.value)


def test_rotation(tmp_path, log_dir):
    """rotation"""
    se3 = log_dir / "se3.log"
    results = run_subject(tmp_path, subject_config(
        log_dir, log=str(se3), log_rotate_age=3, log_rotate_size=10000), '''
        import os
        path = CONFIG["log"]
        exists = lambda suffix: os.path.exists(path + suffix)
        logger.warning("test1" * 20)          # about 150 bytes a line
        RESULTS["first"] = [exists(""), exists(".0")]
        for _ in range(100):                  # about 15000 bytes
            logger.warning("test2" * 20)
        RESULTS["second"] = [exists(""), exists(".0"), log_text(path + ".0")]
        for _ in range(100):                  # about 15000 bytes more
            logger.warning("test3" * 20)
        RESULTS["third"] = [exists(""), exists(".1"), exists(".2"), exists(".3")]
        logger.warning("test4" * 20)
        RESULTS["last"] = [log_text(path), log_text(path + ".0")]
    ''')
    assert results["first"] == [True, False]
    assert results["second"][:2] == [True, True]
    assert re.search(r"(test2)+$", results["second"][2], re.M)
    # Deliberate: three rotations happened; Ruby's Logger keeps age-1 old
    # files (.0 and .1 for age 3), pyse keeps log_rotate_age of them.
    assert results["third"] == [True, True, True, False]
    assert re.search(r"(test4)+\n$", results["last"][0])
    assert re.search(r"(test3)+\n$", results["last"][1])


def test_io_logger(tmp_path):
    """IO logger"""
    # log "-" is the stream sys.stdout.  ServerEngine must write to its IO and
    # never reopen it; pyse must keep writing to the same stream, not closed,
    # across the reopen of a reload.
    results = run_subject(tmp_path, {"log": "-"}, '''
        import sys
        stdout = sys.stdout
        logger.debug("stdout logging test")
        self.reload_now()                     # Ruby's log.reopen!
        logger.debug("after reopen")
        RESULTS["streams"] = [handler.stream is stdout for handler in logger.handlers]
        RESULTS["closed"] = stdout.closed
    ''')
    assert re.search(r"^D, .* -- : stdout logging test$", results["output"], re.M)
    assert re.search(r"^D, .* -- : after reopen$", results["output"], re.M)
    assert results["streams"] == [True]
    assert results["closed"] is False


def test_inter_process_locking_on_rotation(start_log_run):
    """inter-process locking on rotation"""
    # Two worker processes (the spec forks two) write 10 lines each through
    # a rotation at every line.
    run = start_log_run({"workers": 2, "test_lines": 10, "log_rotate_size": 10,
                         "log_rotate_age": 3})
    run.wait_events("done", 2, 15)
    assert run.stop() == 0
    stderr = run.outer_path.read_text(errors="replace")
    assert not re.search(r"could not write|rotat|lock", stderr), stderr
    text = run.all_log_text()
    assert "was busy" not in text
    assert sorted(p.name for p in run.log_files()) == ["server.log", "server.log.0",
                                                       "server.log.1", "server.log.2"]
