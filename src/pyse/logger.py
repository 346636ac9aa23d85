"""The logger every hook sees, and where Python logging lands.

``self.logger`` is a standard :class:`logging.Logger` configured from
``log``, ``log_level``, ``log_format`` and the ``log_rotate_*`` keys,
writing lines in ServerEngine's (Ruby Logger's) shape by default::

    I, [2026-11-25T10:00:00.123456 #4242]  INFO -- : Worker 0 started

Records of every other logger (``logging.getLogger("myapp")``, a library's)
reach the same log through a :class:`PyseLogHandler` on the root logger,
unless the root logger already has handlers of the user's (then those get
them, and pyse adds nothing, so nothing is written twice).

:class:`LogSetup` owns all of it: ``start()``, ``reopen()`` (USR2),
``apply_config()`` (reload of ``log``/``log_level``/``log_format``),
``after_fork_child()`` and ``close()``.  The formats are
:mod:`pyse.log_format`, the handlers :mod:`pyse.log_handlers`, the user's
``log_config`` :mod:`pyse.log_config`, the file (one for every process,
rotation under a lock) :mod:`pyse.log_file`, fd 1/2 :mod:`pyse.log_capture`.
docs/logging.md tells the whole story.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Optional, Union

from pyse.log_capture import DirectCapture, PipeCapture
from pyse.log_config import apply_log_config
from pyse.log_file import SharedLogFile
from pyse.log_format import JsonFormatter, RubyFormatter, make_formatter
from pyse.log_handlers import (PyseLogHandler, SharedFileHandler, StreamLogHandler,
                               set_pyse_target, std_stream_handler)

__all__ = ["TRACE", "LEVELS", "LogSetup", "PyseLogHandler", "RubyFormatter", "JsonFormatter",
           "SharedFileHandler", "StreamLogHandler", "level_of", "set_level"]

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

#: config log_level -> logging level
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL}


def _trace(self: logging.Logger, msg: Any, *args: Any, **kwargs: Any) -> None:
    if self.isEnabledFor(TRACE):
        self._log(TRACE, msg, args, **kwargs)


if not hasattr(logging.Logger, "trace"):
    # ServerEngine's trace level as a method of every logger; logging's
    # stubs do not know it (typed code calls logger.log(TRACE, ...))
    logging.Logger.trace = _trace  # type: ignore[attr-defined]


def level_of(name: str) -> int:
    return LEVELS[name]


def set_level(logger: logging.Logger, name: Optional[str]) -> None:
    logger.setLevel(level_of(name or "debug"))


def private_logger(cls: type[logging.Logger], name: str) -> logging.Logger:
    """A logger of its own, outside logging.getLogger()'s registry (a
    program's own "pyse" logger stays the program's), whose setLevel() still
    works: logging clears the isEnabledFor cache of the loggers its manager
    knows, so this one gets a manager that knows it.  Without that, a user's
    ``self.logger.setLevel()`` would not apply to levels already asked about."""
    logger = cls(name)
    manager = logging.Manager(logging.root)
    manager.loggerDict[name] = logger
    logger.manager = manager
    return logger


def threads_allowed(config: dict[str, Any]) -> bool:
    """Whether the process that starts with this config may run a capture
    thread: not if it forks (process server, spawn server, supervisor),
    because a forking process must stay single-threaded."""
    return config["worker_type"] in ("embedded", "thread") and not config["supervisor"]


Handler = Union[SharedFileHandler, StreamLogHandler]


def root_logger() -> logging.Logger:
    """The root logger (a function, so that tests can give a LogSetup a
    root of its own)."""
    return logging.getLogger()


class LogSetup:
    """Builds the logger from a validated configuration."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.handler: Optional[Handler] = None
        self.capture: Union[DirectCapture, PipeCapture, None] = None
        self.threads_allowed = threads_allowed(config)
        self._close_lock = threading.Lock()
        #: pyse put its handler on the root logger, and sets its level
        #: from log_level (unless log_config set it)
        self.owns_root = False
        self.root_level_from_config = False
        self.started = False
        given = config["logger"]
        if given is not None:
            self.logger = given
            self.owned = False
            return
        self.owned = True
        self.logger = private_logger(config["logger_class"] or logging.Logger, "pyse")
        self.logger.propagate = False
        set_level(self.logger, config["log_level"])

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Applies log_config (ConfigError if it fails), opens the
        destination (OSError if it cannot), links the root logger to it and
        starts the capture of fd 1/2 when the log is a file."""
        if self.started:
            return
        self.started = True
        if self.config["log_config"] is not None:
            from pyse.config import ConfigError

            try:
                # Before pyse's handler exists: dictConfig closes every
                # handler there is when it starts.
                self.root_level_from_config = apply_log_config(self.config["log_config"])
            except ValueError as e:
                raise ConfigError(f"config key 'log_config': {e}", "log_config",
                                  self.config["log_config"]) from e
        if self.owned:
            self.handler = self._make_handler(self.config)
            self.logger.addHandler(self.handler)
            set_pyse_target(self.handler)
            self._link_root_logger()
            self._start_capture()

    def _make_handler(self, config: dict[str, Any]) -> Handler:
        dest = config["log"]
        handler: Handler
        if dest is None or dest == "-":
            handler = std_stream_handler(to_stdout=dest == "-")
        elif hasattr(dest, "write"):
            handler = StreamLogHandler(dest)
        else:
            handler = SharedFileHandler(SharedLogFile(
                os.fspath(dest), config["log_rotate_size"], config["log_rotate_age"]))
        handler.setFormatter(make_formatter(config["log_format"]))
        return handler

    def _link_root_logger(self) -> None:
        """Records of every other logger into pyse's log: a PyseLogHandler
        on the root logger, and log_level as its level.  Not when the root
        logger has handlers already (the program's logging.basicConfig(),
        log_config's root handlers): that configuration is the user's, and
        adding ours would write each record twice (theirs to stderr, which
        is captured, and ours)."""
        root = root_logger()
        # A NullHandler writes nothing: no line could be written twice.
        theirs = [h for h in root.handlers
                  if not isinstance(h, (PyseLogHandler, logging.NullHandler))]
        if theirs:
            if not any(isinstance(h, PyseLogHandler) for h in root.handlers):
                self.logger.info("The root logger already has handlers (%s): records of "
                                 "other loggers go to those only, not into this log",
                                 ", ".join(type(h).__name__ for h in theirs))
            return
        if not any(isinstance(h, PyseLogHandler) for h in root.handlers):
            root.addHandler(PyseLogHandler())
        self.owns_root = True
        self._set_root_level(self.config)

    def _set_root_level(self, config: dict[str, Any]) -> None:
        if self.owns_root and not self.root_level_from_config:
            root_logger().setLevel(level_of(config["log_level"]))

    def _start_capture(self, originals: Optional[dict[int, int]] = None) -> None:
        handler = self.handler
        # Only into a file: capturing fd 2 into a log written to fd 2 loops.
        if not isinstance(handler, SharedFileHandler) or not handler.file.may_capture_std_fds():
            return
        fds = [fd for fd, key in ((1, "log_stdout"), (2, "log_stderr")) if self.config[key]]
        if not fds:
            return
        capture: Union[DirectCapture, PipeCapture]
        if self.threads_allowed:
            capture = PipeCapture(handler.emit_lines, fds)
        else:
            capture = DirectCapture(handler.file, fds, handler.emit_lines)
        capture.start(originals)
        self.capture = capture
        handler.error_fd = capture.saved.get(2, 2)

    def _stop_capture(self) -> None:
        capture, self.capture = self.capture, None
        if capture is not None:
            if self.handler is not None:
                self.handler.error_fd = 2
            capture.stop()

    def reopen(self) -> None:
        """USR2: the log file again from its path (logrotate renamed it)."""
        if isinstance(self.handler, SharedFileHandler):
            self.handler.file.reopen()

    def apply_config(self, config: dict[str, Any]) -> None:
        """Puts a reloaded ``log``, ``log_level`` and ``log_format`` into
        effect; raises OSError (changing nothing) when the new log cannot be
        opened."""
        if not self.owned:
            self.config = config
            return
        if self.handler is not None:
            if config["log"] != self.config["log"]:
                self._switch_handler(self._make_handler(config))
            elif config["log_format"] != self.config["log_format"]:
                self.handler.setFormatter(make_formatter(config["log_format"]))
        set_level(self.logger, config["log_level"])
        self._set_root_level(config)
        self.config = config

    def _switch_handler(self, new: Handler) -> None:
        old = self.handler
        assert old is not None
        self._stop_capture()
        self.logger.addHandler(new)
        self.logger.removeHandler(old)
        self.handler = new
        set_pyse_target(new)
        old.close_destination()
        self._start_capture()

    def after_fork_child(self, threads_allowed: bool = True) -> None:
        """In a freshly forked child (a worker; a server under a supervisor):
        its own lock fd, its own drop count, and its own capture of fd 1/2
        (the parent's reader thread, if any, did not come along)."""
        self.threads_allowed = threads_allowed
        self._close_lock = threading.Lock()
        if self.handler is not None:
            self.handler.after_fork_child()
        if isinstance(self.handler, SharedFileHandler):
            self.handler.file.after_fork_child()
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
