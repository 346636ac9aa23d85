"""The two shapes a log line can take (``log_format``).

``serverengine`` (the default), ServerEngine's (Ruby Logger's) line::

    I, [2026-11-25T10:00:00.123456 #4242]  INFO -- myapp.worker: message

``json``, one JSON object per line, with the field names log shippers look
for without configuration (Datadog, Vector, Loki, Elastic's filebeat with
``json.keys_under_root``, Fluent Bit's json parser)::

    {"timestamp": "2026-11-25T09:00:00.123456Z", "level": "info", "pid": 4242,
     "logger": "myapp.worker", "message": "message"}

plus ``"exception"`` (the formatted traceback) when the record carries one
and ``"stack"`` when it carries a stack.  A message's newlines are escaped
inside the string, so a record is always exactly one line.
"""
from __future__ import annotations

import json
import logging
import time

#: logging level name -> Ruby Logger's severity word
SEVERITY_WORDS = {"TRACE": "TRACE", "DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN",
                  "ERROR": "ERROR", "CRITICAL": "FATAL"}
#: loggers whose lines carry no progname (pyse's own, and the root logger)
UNNAMED = ("pyse", "root")


class RubyFormatter(logging.Formatter):
    """``S, [time #pid] SEVERITY -- progname: message``; the progname is the
    record's logger name (empty for pyse's own logger and the root logger)."""

    def format(self, record: logging.LogRecord) -> str:
        severity = SEVERITY_WORDS.get(record.levelname, record.levelname)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            message += "\n" + record.exc_text
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        progname = "" if record.name in UNNAMED else record.name
        return (f"{severity[0]}, [{stamp}.{micros:06d} #{record.process}] "
                f"{severity:>5} -- {progname}: {message}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module's docstring for the fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        fields = {
            "timestamp": f"{stamp}.{micros:06d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            fields["exception"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii=False: UTF-8 text stays readable; the handler encodes.
        return json.dumps(fields, ensure_ascii=False, default=str)


FORMATTERS = {"serverengine": RubyFormatter, "json": JsonFormatter}


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for a validated ``log_format``."""
    return FORMATTERS[log_format]()
