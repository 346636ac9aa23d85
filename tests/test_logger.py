"""The logger (the Logger keys and the log file): ServerEngine's
line shape, the trace level, logger_class / logger, and what USR2 reloads."""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import select
import signal

import pytest

import pyse
from log_harness import LogWriterRun, bare_root_logger, child_logger  # noqa: F401 (a fixture)
from pyse import config as config_mod
from pyse.logger import TRACE, LogSetup, RubyFormatter, SharedFileHandler

pytestmark = pytest.mark.usefixtures("bare_root_logger")

LINE = re.compile(r"^(?P<letter>[TDIWEFA]), \[(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) "
                  r"#(?P<pid>\d+)\] (?P<severity>[ A-Z]{5}) -- (?P<prog>[^:]*): (?P<msg>.*)$")


def setup_on(stream: io.StringIO, **config) -> LogSetup:
    setup = LogSetup(config_mod.load(dict({"log": stream}, **config)))
    setup.start()
    return setup


def lines_of(stream: io.StringIO) -> list[re.Match]:
    out = []
    for line in stream.getvalue().splitlines():
        match = LINE.match(line)
        assert match, f"not ServerEngine's shape: {line!r}"
        out.append(match)
    return out


def test_line_shape_and_severity_words():
    stream = io.StringIO()
    logger = setup_on(stream, log_level="trace").logger
    logger.trace("t")
    logger.debug("d")
    logger.info("i %s", "arg")
    logger.warning("w")
    logger.error("e")
    logger.critical("f")
    got = [(m["letter"], m["severity"], m["prog"], m["msg"]) for m in lines_of(stream)]
    assert got == [("T", "TRACE", "", "t"), ("D", "DEBUG", "", "d"), ("I", " INFO", "", "i arg"),
                   ("W", " WARN", "", "w"), ("E", "ERROR", "", "e"), ("F", "FATAL", "", "f")]
    assert {int(m["pid"]) for m in lines_of(stream)} == {os.getpid()}


def test_exact_layout_of_one_record():
    record = logging.LogRecord("pyse", logging.INFO, "", 0, "Worker 0 started", None, None)
    record.created = 1795600800.123456
    record.process = 4242
    text = RubyFormatter().format(record)
    assert re.fullmatch(r"I, \[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.12345\d #4242\]  INFO -- : "
                        r"Worker 0 started", text), text


def test_exception_traceback_follows_the_line():
    stream = io.StringIO()
    logger = setup_on(stream).logger
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    text = stream.getvalue()
    assert re.match(r"E, \[.*\] ERROR -- : it failed\nTraceback", text)
    assert "ValueError: boom" in text


def test_trace_is_below_debug():
    assert TRACE < logging.DEBUG
    assert logging.getLevelName(TRACE) == "TRACE"
    stream = io.StringIO()
    logger = setup_on(stream, log_level="debug").logger
    logger.trace("hidden")
    logger.debug("shown")
    assert [m["msg"] for m in lines_of(stream)] == ["shown"]


@pytest.mark.parametrize("level,shown", [
    ("info", ["i", "w", "e", "f"]), ("warn", ["w", "e", "f"]), ("error", ["e", "f"]),
    ("fatal", ["f"])])
def test_levels(level, shown):
    stream = io.StringIO()
    logger = setup_on(stream, log_level=level).logger
    for name, emit in [("d", logger.debug), ("i", logger.info), ("w", logger.warning),
                       ("e", logger.error), ("f", logger.critical)]:
        emit(name)
    assert [m["msg"] for m in lines_of(stream)] == shown


def test_bad_log_level_names_the_key():
    with pytest.raises(pyse.ConfigError, match="log_level"):
        config_mod.load({"log_level": "verbose"})


class CountingLogger(logging.Logger):
    made = 0

    def __init__(self, name: str) -> None:
        super().__init__(name)
        CountingLogger.made += 1


def test_logger_class_builds_the_logger():
    stream = io.StringIO()
    before = CountingLogger.made
    logger = setup_on(stream, logger_class=CountingLogger, log_level="info").logger
    assert isinstance(logger, CountingLogger) and CountingLogger.made == before + 1
    logger.info("through the subclass")
    assert [m["msg"] for m in lines_of(stream)] == ["through the subclass"]


def test_logger_class_must_be_a_logger_subclass():
    with pytest.raises(pyse.ConfigError, match="logger_class"):
        config_mod.load({"logger_class": dict})


def test_a_ready_logger_is_used_as_it_is():
    mine = logging.getLogger("test_logger.mine")
    mine.setLevel(logging.WARNING)
    handlers = list(mine.handlers)
    setup = LogSetup(config_mod.load({"logger": mine, "log_level": "trace"}))
    setup.start()
    assert setup.logger is mine
    assert mine.handlers == handlers, "pyse adds no handler to a ready logger"
    assert mine.level == logging.WARNING, "nor changes its level"
    setup.apply_config(config_mod.load({"logger": mine, "log_level": "debug"}))
    assert mine.level == logging.WARNING
    setup.close()
    with pytest.raises(pyse.ConfigError, match="logger"):
        config_mod.load({"logger": "not a logger"})


def test_apply_config_reloads_level_and_destination(tmp_path):
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    quiet = {"log_stdout": False, "log_stderr": False}
    setup = LogSetup(config_mod.load(dict(quiet, log=str(first))))
    setup.start()
    setup.logger.debug("one")
    setup.apply_config(config_mod.load(dict(quiet, log=str(second), log_level="warn")))
    setup.logger.info("two (filtered)")
    setup.logger.warning("three")
    setup.close()
    assert "one" in first.read_text() and "three" not in first.read_text()
    assert [line.split(": ", 1)[1] for line in second.read_text().splitlines()] == ["three"]


def test_reloaded_level_applies_to_levels_already_used():
    """logging caches isEnabledFor answers per logger; a reload must not be
    defeated by that cache."""
    stream = io.StringIO()
    setup = setup_on(stream, log_level="debug")
    setup.logger.info("before")
    setup.apply_config(config_mod.load({"log": stream, "log_level": "warn"}))
    setup.logger.info("after (filtered)")
    setup.apply_config(config_mod.load({"log": stream, "log_level": "trace"}))
    setup.logger.trace("trace now")
    assert [m["msg"] for m in lines_of(stream)] == ["before", "trace now"]


def test_apply_config_keeps_everything_when_the_new_log_cannot_open(tmp_path):
    quiet = {"log_stdout": False, "log_stderr": False}
    good = tmp_path / "good.log"
    setup = LogSetup(config_mod.load(dict(quiet, log=str(good))))
    setup.start()
    with pytest.raises(OSError):
        setup.apply_config(config_mod.load(dict(quiet, log=str(tmp_path / "no" / "x.log"),
                                                log_level="error")))
    setup.logger.info("still here")
    setup.close()
    assert "still here" in good.read_text()


def test_write_failures_go_to_error_fd_not_to_sys_stderr(tmp_path):
    """The handler reports its own failure on a raw fd: sys.stderr may be a
    capture pipe whose reader is waiting for this very handler."""
    setup = LogSetup(config_mod.load({"log": str(tmp_path / "x.log"), "log_stdout": False,
                                      "log_stderr": False}))
    setup.start()
    handler = setup.handler
    assert isinstance(handler, SharedFileHandler)
    read_end, write_end = os.pipe()
    try:
        handler.error_fd = write_end

        def disk_full(lines):
            raise OSError(errno.ENOSPC, "No space left on device")

        handler.file.write_lines = disk_full
        setup.logger.info("lost")
        assert select.select([read_end], [], [], 10)[0], "no report on error_fd"
        assert b"cannot write to the log" in os.read(read_end, 4096)
    finally:
        os.close(read_end)
        os.close(write_end)
        handler.close_destination()


# ---- USR2 reload of log_level and log in a running process server ----------

def rewrite_config(run: LogWriterRun, **changes) -> None:
    config = json.loads(run.config_path.read_text())
    config.update(changes)
    tmp = run.config_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, run.config_path)


@pytest.mark.timeout(60)
def test_usr2_reloads_log_level(start_log_run):
    run = start_log_run({"workers": 1})
    run.wait_events("run", 1, 30)
    rewrite_config(run, log_level="warn")
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("server_reload", 1, 10)
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("server_reload", 2, 10)
    run.wait_events("reload", 2, 10)
    # The first "Received reload" was logged before the reload; the second
    # one (INFO) is below the new level.  The worker gets the new level with
    # the configuration, before it logs the (DEBUG) receipt: neither that
    # line nor its reload() INFO line is there.
    text = run.log_path.read_text()
    assert text.count("Received reload") == 1, text
    assert text.count("Worker 0 received the server's reload") == 0, text
    assert "worker 0 reloaded" not in text
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_usr2_moves_the_log_and_the_servers_fd1(start_log_run, tmp_path):
    run = start_log_run({"workers": 1})
    run.wait_events("run", 1, 30)
    moved = tmp_path / "moved.log"
    rewrite_config(run, log=str(moved))
    run.proc.send_signal(signal.SIGUSR2)
    run.wait_events("server_reload", 1, 10)
    run.wait_log("server raw at reload", 10, path=moved)
    assert "server raw at reload" not in run.log_path.read_text()
    # The worker moves too, its captured fd 1 included.
    run.wait_log("worker 0 reloaded", 10, path=moved)
    run.wait_log("-- stdout: print at reload of worker 0", 10, path=moved)
    assert run.stop() == 0
    assert "Received graceful stop" in moved.read_text()


# ---- the root logger: other loggers into pyse's log --------------------------

def test_other_loggers_reach_the_log_once_with_their_name_and_level(bare_root_logger):
    stream = io.StringIO()
    setup = setup_on(stream, log_level="info")
    child_logger(bare_root_logger, "myapp.worker").info("from my module")
    child_logger(bare_root_logger, "urllib3").error("from a library")
    child_logger(bare_root_logger, "myapp.worker").debug("below log_level")
    setup.logger.info("pyse's own, not through the root logger")
    got = [(m["severity"], m["prog"], m["msg"]) for m in lines_of(stream)]
    assert got == [(" INFO", "myapp.worker", "from my module"), ("ERROR", "urllib3", "from a library"),
                   (" INFO", "", "pyse's own, not through the root logger")]
    assert bare_root_logger.level == logging.INFO
    setup.apply_config(config_mod.load({"log": stream, "log_level": "error"}))
    assert bare_root_logger.level == logging.ERROR, "a reloaded log_level reaches the root logger"


def test_a_configured_root_logger_is_left_alone(bare_root_logger):
    theirs = io.StringIO()
    bare_root_logger.addHandler(logging.StreamHandler(theirs))
    bare_root_logger.setLevel(logging.ERROR)
    stream = io.StringIO()
    setup = setup_on(stream, log_level="debug")
    child_logger(bare_root_logger, "myapp").error("theirs only")
    assert theirs.getvalue() == "theirs only\n"
    assert [m["msg"] for m in lines_of(stream)] == [
        "The root logger already has handlers (StreamHandler): records of other loggers go to "
        "those only, not into this log"]
    assert len(bare_root_logger.handlers) == 1 and bare_root_logger.level == logging.ERROR
    setup.apply_config(config_mod.load({"log": stream, "log_level": "trace"}))
    assert bare_root_logger.level == logging.ERROR


def test_a_null_handler_on_the_root_logger_does_not_keep_pyse_out(bare_root_logger):
    bare_root_logger.addHandler(logging.NullHandler())
    stream = io.StringIO()
    setup_on(stream)
    child_logger(bare_root_logger, "lib").warning("lands")
    assert [m["msg"] for m in lines_of(stream)] == ["lands"]


def test_with_a_ready_logger_the_root_logger_is_untouched(bare_root_logger):
    setup = LogSetup(config_mod.load({"logger": logging.Logger("mine"), "log_level": "trace"}))
    setup.start()
    assert bare_root_logger.handlers == [] and bare_root_logger.level == logging.WARNING


def test_a_log_object_needs_only_write():
    class Lines:
        def __init__(self) -> None:
            self.written: list[str] = []

        def write(self, text: str) -> None:
            self.written.append(text)

    dest = Lines()
    setup = LogSetup(config_mod.load({"log": dest}))
    setup.start()
    setup.logger.info("through write() alone")
    setup.close()
    assert len(dest.written) == 1 and dest.written[0].endswith("-- : through write() alone\n")
