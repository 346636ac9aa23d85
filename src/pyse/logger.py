"""The logger every hook sees: a standard :class:`logging.Logger` configured
from ``log``, ``log_level`` and the ``log_rotate_*`` keys, writing lines in
ServerEngine's (Ruby Logger's) shape::

    I, [2026-11-25T10:00:00.123456 #4242]  INFO -- : Worker 0 started

:class:`LogSetup` owns the handler and the fd 1/2 capture: ``start()``,
``reopen()`` (USR2), ``apply_config()`` (reload of ``log``/``log_level``),
``after_fork_child()`` and ``close()``.  The file side (one file shared by
every process, rotation under a lock) is :mod:`pyse.log_file`; the fd 1/2
side is :mod:`pyse.log_capture`.  docs/logging.md tells the whole story.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Optional, Union

from pyse.log_capture import DirectCapture, PipeCapture
from pyse.log_file import SharedLogFile

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

#: config log_level -> logging level
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}
#: logging level name -> Ruby Logger's severity word
_SEVERITY = {"TRACE": "TRACE", "DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN",
             "ERROR": "ERROR", "CRITICAL": "FATAL"}


def _trace(self: logging.Logger, msg: Any, *args: Any, **kwargs: Any) -> None:
    if self.isEnabledFor(TRACE):
        self._log(TRACE, msg, args, **kwargs)


if not hasattr(logging.Logger, "trace"):
    logging.Logger.trace = _trace  # type: ignore[attr-defined]


class RubyFormatter(logging.Formatter):
    """``S, [time #pid] SEVERITY -- progname: message``."""

    def format(self, record: logging.LogRecord) -> str:
        severity = _SEVERITY.get(record.levelname, record.levelname)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            message += "\n" + record.exc_text
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        progname = "" if record.name in ("pyse", "root") else record.name
        return (f"{severity[0]}, [{stamp}.{micros:06d} #{record.process}] "
                f"{severity:>5} -- {progname}: {message}")


def level_of(name: str) -> int:
    return LEVELS[name]


def set_level(logger: logging.Logger, name: Optional[str]) -> None:
    """setLevel, then forget the logger's cached isEnabledFor answers.
    logging clears those caches only for loggers registered in its manager
    (logging.getLogger); ours is private to this LogSetup, so without this a
    reloaded log_level would not apply to levels already asked about."""
    logger.setLevel(level_of(name or "debug"))
    cache = getattr(logger, "_cache", None)
    if isinstance(cache, dict):
        cache.clear()


class SharedFileHandler(logging.Handler):
    """Writes formatted records into a :class:`SharedLogFile`.

    Its own failures are reported on ``error_fd`` (never on sys.stderr,
    which may be a capture pipe whose reader is waiting for this very
    handler)."""

    def __init__(self, log_file: SharedLogFile) -> None:
        super().__init__()
        self.file = log_file
        self.error_fd = 2

    def encode(self, record: logging.LogRecord) -> bytes:
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.file.write_lines([self.encode(record)])
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def emit_lines(self, name: str, level: int, lines: list[str]) -> None:
        """Captured fd 1/2 output: one record per line, written in one go.
        Not filtered by log_level: it is the program's output, which
        ServerEngine's raw redirection never filtered either."""
        records = [logging.LogRecord(name, level, "", 0, line, None, None) for line in lines]
        try:
            self.file.write_lines([self.encode(r) for r in records])
        except RecursionError:
            raise
        except Exception:
            self.handleError(records[0])

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        text = f"pyse: could not write to the log {self.file.path}: {error!r}\n"
        try:
            os.write(self.error_fd, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # nowhere left to report it; the line is lost, the process goes on

    def close(self) -> None:
        super().close()
        self.file.close()


def threads_allowed(config: dict) -> bool:
    """Whether the process that starts with this config may run a capture
    thread: not if it forks (process server, spawn server, supervisor),
    because a forking process must stay single-threaded."""
    return config.get("worker_type", "embedded") in ("embedded", "thread") \
        and not config.get("supervisor")


class LogSetup:
    """Builds the logger from a validated configuration."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.handler: Optional[logging.Handler] = None
        self.capture: Union[DirectCapture, PipeCapture, None] = None
        self.threads_allowed = threads_allowed(config)
        self._close_lock = threading.Lock()
        given = config.get("logger")
        if given is not None:
            self.logger = given
            self.owned = False
            return
        self.owned = True
        cls = config.get("logger_class") or logging.Logger
        self.logger = cls("pyse")
        self.logger.propagate = False
        set_level(self.logger, config.get("log_level"))

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Opens the destination (OSError if it cannot) and starts the
        capture of fd 1/2 when the log is a file."""
        if self.owned and self.handler is None:
            self.handler = self._make_handler(self.config)
            self.logger.addHandler(self.handler)
            self._start_capture()

    def _make_handler(self, config: dict) -> logging.Handler:
        dest = config.get("log")
        if dest is None:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        elif dest == "-":
            handler = logging.StreamHandler(sys.stdout)
        elif hasattr(dest, "write"):
            handler = logging.StreamHandler(dest)
        else:
            handler = SharedFileHandler(SharedLogFile(
                os.fspath(dest), int(config.get("log_rotate_size", 1048576)),
                int(config.get("log_rotate_age", 5))))
        handler.setFormatter(RubyFormatter())
        return handler

    def _start_capture(self, originals: Optional[dict[int, int]] = None) -> None:
        handler = self.handler
        # Only into a file: capturing fd 2 into a log written to fd 2 loops.
        if not isinstance(handler, SharedFileHandler) or not handler.file.may_capture_std_fds():
            return
        fds = [fd for fd, key in ((1, "log_stdout"), (2, "log_stderr"))
               if self.config.get(key, True)]
        if not fds:
            return
        capture: Union[DirectCapture, PipeCapture]
        if self.threads_allowed:
            capture = PipeCapture(handler.emit_lines, fds)
        else:
            capture = DirectCapture(handler.file, fds)
        capture.start(originals)
        self.capture = capture
        handler.error_fd = capture.saved.get(2, 2)

    def _stop_capture(self) -> None:
        capture, self.capture = self.capture, None
        if capture is not None:
            if isinstance(self.handler, SharedFileHandler):
                self.handler.error_fd = 2
            capture.stop()

    def reopen(self) -> None:
        """USR2: the log file again from its path (logrotate renamed it)."""
        if isinstance(self.handler, SharedFileHandler):
            self.handler.file.reopen()

    def reload_in_child(self, config_source: Any) -> None:
        """A worker's USR2.  The server reloaded its configuration, but a
        worker process never sees that copy, so it reads ``log`` and
        ``log_level`` from the same source, then reopens.  Raises
        ConfigError or OSError (its logging unchanged, still reopened)."""
        try:
            if self.owned and config_source is not None and not self.config.get("disable_reload"):
                from pyse import config as config_mod

                new = config_mod.load(config_source)
                self.apply_config(dict(self.config, log=new.get("log"),
                                       log_level=new.get("log_level")))
        finally:
            self.reopen()

    def apply_config(self, config: dict) -> None:
        """Puts a reloaded ``log`` and ``log_level`` into effect; raises
        OSError (changing nothing) when the new log cannot be opened."""
        if not self.owned:
            self.config = config
            return
        if config.get("log") != self.config.get("log") and self.handler is not None:
            new = self._make_handler(config)
            old = self.handler
            self._stop_capture()
            self.logger.addHandler(new)
            self.logger.removeHandler(old)
            self.handler = new
            old.close()
            self.config = config
            self._start_capture()
        set_level(self.logger, config.get("log_level"))
        self.config = config

    def after_fork_child(self, threads_allowed: bool = True) -> None:
        """In a freshly forked child (a worker; a server under a supervisor):
        its own lock fd, and its own capture of fd 1/2 (the parent's reader
        thread, if any, did not come along)."""
        self.threads_allowed = threads_allowed
        self._close_lock = threading.Lock()
        if isinstance(self.handler, SharedFileHandler):
            self.handler.file.after_fork_child()
            self.handler.error_fd = 2
        originals: dict[int, int] = {}
        if self.capture is not None:
            # The parent's saved fds are the process's real fd 1/2 (a
            # terminal, /dev/null): this child restores those, not the log.
            originals = self.capture.abandon_in_child()
            self.capture = None
        self._start_capture(originals)
        for fd in originals.values():  # not captured here
            os.close(fd)

    def close(self) -> None:
        """At exit: the captured fds go back (their last lines logged first),
        and the handler is flushed.  The log stays open for late records."""
        with self._close_lock:
            self._stop_capture()
            if self.handler is not None:
                self.handler.flush()
