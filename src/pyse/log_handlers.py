"""The handlers behind pyse's log.

- :class:`SharedFileHandler`: ``log`` is a path; writes into a
  :class:`~pyse.log_file.SharedLogFile` (one file for the whole tree).
- :class:`StreamLogHandler`: ``log`` is stderr (the default), ``"-"``
  (stdout) or an object with ``write()``.
- :class:`PyseLogHandler`: the handler pyse puts on the root logger, so that
  records of every other logger (``logging.getLogger("myapp")``, a
  library's) reach pyse's log; a user's ``dictConfig`` can name it too
  (``"class": "pyse.logger.PyseLogHandler"``).

Both writing handlers report their own failures on a raw fd (never through
``sys.stderr``, which may be a capture pipe whose reader waits for this very
handler) and through a :class:`~pyse.log_drops.DropReport`, so a full disk
gives a few lines of stderr, not one per lost line.

``close()`` releases nothing: ``logging.config.dictConfig`` and
``logging.shutdown()`` close every handler of the process, and a user's
dictConfig in a worker must not take pyse's log away (its fd number could
then be reused by some other file, which pyse would go on writing into).
pyse lets go of a destination only through ``close_destination()``.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Optional

from pyse.log_drops import DropReport
from pyse.log_file import LogWriteError, SharedLogFile

#: the handler that PyseLogHandler forwards to in this process (set by LogSetup)
_target: Optional[logging.Handler] = None


def set_pyse_target(handler: Optional[logging.Handler]) -> None:
    global _target
    _target = handler


class ReportingHandler(logging.Handler):
    """What both writing handlers share: drop accounting and reports on a raw fd."""

    def __init__(self, destination: str) -> None:
        super().__init__()
        self.destination = destination
        self.drops = DropReport(destination)
        #: where this handler's own failures are reported (see the module's docstring)
        self.error_fd = 2

    def report(self, message: Optional[str]) -> None:
        if message is None:
            return
        try:
            os.write(self.error_fd, (message + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # nowhere left to report it; the line is lost, the process goes on

    def report_format_error(self, record: logging.LogRecord, error: BaseException) -> None:
        self.report(f"pyse[{os.getpid()}]: a log record of {record.name!r} could not be "
                    f"formatted ({error!r}); its message was {record.msg!r}")

    def lost_note_record(self, now: float) -> Optional[logging.LogRecord]:
        """The record telling the log about lines lost just before, if any."""
        note = self.drops.lost_note(now)
        if note is None:
            return None
        return logging.LogRecord("pyse", logging.WARNING, "", 0, note, None, None)

    def after_fork_child(self) -> None:
        self.error_fd = 2
        self.drops.forget_in_child()


class SharedFileHandler(ReportingHandler):
    """Writes formatted records into a :class:`SharedLogFile`."""

    def __init__(self, log_file: SharedLogFile) -> None:
        super().__init__(log_file.path)
        self.file = log_file

    def encode(self, record: logging.LogRecord) -> bytes:
        return (self.format(record) + "\n").encode("utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        self.write_records([record])

    def emit_lines(self, name: str, level: int, lines: list[str]) -> None:
        """Captured fd 1/2 output: one record per line, written in one go.
        Not filtered by log_level: it is the program's output, which
        ServerEngine's raw redirection never filtered either."""
        self.write_records([logging.LogRecord(name, level, "", 0, line, None, None)
                            for line in lines])

    def write_records(self, records: list[logging.LogRecord]) -> None:
        encoded = []
        for record in records:
            try:
                encoded.append(self.encode(record))
            except RecursionError:
                raise
            except Exception as e:
                self.report_format_error(record, e)
        if not encoded:
            return
        # The handler's lock: the capture thread writes here too, and the
        # drop count must not be raced.
        self.acquire()
        try:
            now = time.monotonic()
            note = self.lost_note_record(now)
            notes = [self.encode(note)] if note is not None else []
            try:
                self.file.write_lines(notes + encoded)
            except RecursionError:
                raise
            except Exception as e:
                written = e.lines_written if isinstance(e, LogWriteError) else 0
                dropped = len(encoded) - max(0, written - len(notes))
                self.report(self.drops.failed(now, e, max(dropped, 0)))
                return
            self.report(self.drops.recovered(now))
        finally:
            self.release()

    def close_destination(self) -> None:
        """Closes the file: pyse moved to another destination."""
        self.close()
        self.file.close()


class StreamLogHandler(ReportingHandler):
    """Writes formatted records to a text stream (stderr, stdout, or the
    object given as ``log``)."""

    terminator = "\n"

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(str(getattr(stream, "name", None) or repr(stream)))
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception as e:
            self.report_format_error(record, e)
            return
        now = time.monotonic()
        try:
            note = self.lost_note_record(now)
            if note is not None:
                text = self.format(note) + self.terminator + text
            self.stream.write(text)
            self.flush()
        except RecursionError:
            raise
        except Exception as e:
            self.report(self.drops.failed(now, e, 1))
            return
        self.report(self.drops.recovered(now))

    def flush(self) -> None:
        # An object given as `log` needs only write().
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()

    def close_destination(self) -> None:
        self.close()   # the stream is not ours to close
        try:
            self.flush()
        except (OSError, ValueError):
            pass  # a broken or closed stream: nothing left in it to save


class PyseLogHandler(logging.Handler):
    """Forwards records into pyse's log in this process.

    pyse puts one on the root logger when the root logger has no handler of
    its own; name it in a ``dictConfig`` (``"class":
    "pyse.logger.PyseLogHandler"``) to keep records in pyse's log while
    also sending them elsewhere.  It drops records when pyse writes no log
    of its own (with the ``logger`` key)."""

    def emit(self, record: logging.LogRecord) -> None:
        target = _target
        if target is not None and target is not self:
            target.handle(record)


def std_stream_handler(to_stdout: bool) -> StreamLogHandler:
    """The handler for ``log: "-"`` (stdout) or no ``log`` (stderr)."""
    return StreamLogHandler(sys.stdout if to_stdout else sys.stderr)
