"""The logger every hook sees: a standard :class:`logging.Logger` configured
from ``log``, ``log_level`` and the ``log_rotate_*`` keys, writing lines in
ServerEngine's (Ruby Logger's) shape::

    I, [2026-11-25T10:00:00.123456 #4242]  INFO -- : Worker 0 started

:class:`LogSetup` owns the handler: ``start()``, ``reopen()`` (USR2),
``apply_config()`` (reload of ``log``/``log_level``), ``after_fork_child()``
and ``close()``.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Optional

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


class LogSetup:
    """Builds the logger from a validated configuration."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.handler: Optional[logging.Handler] = None
        given = config.get("logger")
        if given is not None:
            self.logger = given
            self.owned = False
            return
        self.owned = True
        cls = config.get("logger_class") or logging.Logger
        self.logger = cls("pyse")
        self.logger.propagate = False
        self.logger.setLevel(level_of(config.get("log_level") or "debug"))

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        if self.owned and self.handler is None:
            self.handler = self._make_handler(self.config)
            self.logger.addHandler(self.handler)

    def _make_handler(self, config: dict) -> logging.Handler:
        dest = config.get("log")
        if dest is None:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
        elif dest == "-":
            handler = logging.StreamHandler(sys.stdout)
        elif hasattr(dest, "write"):
            handler = logging.StreamHandler(dest)
        else:
            handler = logging.FileHandler(dest, encoding="utf-8")
        handler.setFormatter(RubyFormatter())
        return handler

    def reopen(self) -> None:
        handler = self.handler
        if isinstance(handler, logging.FileHandler):
            with handler.lock:  # type: ignore[union-attr]
                old = handler.stream
                handler.stream = handler._open()
                if old is not None:
                    old.close()

    def apply_config(self, config: dict) -> None:
        """Puts a reloaded ``log`` and ``log_level`` into effect; raises
        OSError (changing nothing) when the new log cannot be opened."""
        if not self.owned:
            return
        if config.get("log") != self.config.get("log") and self.handler is not None:
            new = self._make_handler(config)
            old = self.handler
            self.logger.addHandler(new)
            self.logger.removeHandler(old)
            self.handler = new
            old.close()
        self.logger.setLevel(level_of(config.get("log_level") or "debug"))
        self.config = config

    def after_fork_child(self) -> None:
        pass

    def close(self) -> None:
        if self.handler is not None:
            self.handler.flush()
