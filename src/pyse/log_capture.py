"""fd 1 and fd 2 into the log (``log_stdout`` / ``log_stderr``), only when
the log is a file: sending fd 2 into a log that *is* fd 2 would loop.

Two ways, chosen by whether the process may run threads:

- :class:`DirectCapture`, for a process that forks (the process and spawn
  servers, a supervisor), which must stay single-threaded: fd 1/2 are
  ``dup2``-ed onto the log file's own fd (O_APPEND, so writes land whole at
  the end), and again whenever the log file reopens (rotation, USR2).
  ``sys.stdout`` and ``sys.stderr`` become :class:`LineRecordStream`s, so
  what Python code writes (print, warnings, tracebacks) is logged as
  records, synchronously.  What is written below Python (``os.write``, C
  libraries, spawned commands) arrives raw, without level, time or pid, and
  is not counted by the rotation's size check.
- :class:`PipeCapture`, for a process that may run threads (a worker, an
  embedded or thread server): fd 1/2 become pipes read by one thread that
  turns each line into a log record (``-- stdout:`` / ``-- stderr:``).  The
  thread only reads and writes the log, never fd 1/2, so it cannot block on
  its own pipe; a program that prints faster than the log takes it waits in
  write() (back-pressure), it never deadlocks.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import select
import sys
import threading
from typing import Any, AnyStr, Callable, Optional, Sequence

#: a line longer than this is cut into several records
MAX_LINE = 16384
READ_SIZE = 65536
#: fd -> (record name, level) of its captured lines
STREAMS = {1: ("stdout", logging.INFO), 2: ("stderr", logging.WARNING)}
#: emit_lines(record name, level, lines): writes captured lines as records
EmitLines = Callable[[str, int, list[str]], None]


def flush_std_streams() -> None:
    """Pushes what Python buffered for fd 1/2 out before the fds change."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream has nothing we could save


def line_buffer_std_streams() -> None:
    # Captured output should reach the log a line at a time, not 8 KiB later.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(line_buffering=True)
            except (ValueError, OSError):
                pass  # not a text stream we can change; it still works


def take_originals(fds: Sequence[int], originals: Optional[dict[int, int]]) -> dict[int, int]:
    """fd -> the fd to put back at stop: taken from originals (removed from
    it) or a close-on-exec copy of the fd as it is now."""
    saved = {}
    for fd in fds:
        if originals and fd in originals:
            saved[fd] = originals.pop(fd)
        else:
            saved[fd] = os.dup(fd)  # close-on-exec: programs we run never get it
    return saved


def cut_long_lines(lines: list[AnyStr]) -> list[AnyStr]:
    return [line[i:i + MAX_LINE] for line in lines
            for i in range(0, max(len(line), 1), MAX_LINE)]


class LineRecordStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` of a process that may not run a
    capture thread: each whole line written becomes a record, at once, in
    the writing thread.  Bytes written through ``buffer`` (and by anything
    below Python) still go to the fd itself."""

    def __init__(self, original: Any, fd: int, emit_lines: EmitLines) -> None:
        super().__init__()
        self.original = original
        self.fd = fd
        self.emit_lines = emit_lines
        self.record_name, self.level = STREAMS[fd]
        self.partial = ""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        *whole, rest = (self.partial + text).split("\n")
        while len(rest) > MAX_LINE:
            whole.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self.partial = rest
        if whole:
            self.emit_lines(self.record_name, self.level, cut_long_lines(whole))
        return len(text)

    def finish(self) -> None:
        """Logs an unterminated last line."""
        rest, self.partial = self.partial, ""
        if rest:
            self.emit_lines(self.record_name, self.level, [rest])

    def flush(self) -> None:
        """Whole lines are already written; a partial one waits for its end."""

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    # read-only, over TextIOBase's settable attribute: the original stream's
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    @property
    def buffer(self) -> Any:
        return self.original.buffer


class DirectCapture:
    """fd 1/2 point at the log file itself, sys.stdout/sys.stderr log
    records; no thread."""

    def __init__(self, log_file: Any, fds: Sequence[int], emit_lines: EmitLines) -> None:
        self.log_file = log_file
        self.fds = tuple(fds)
        self.emit_lines = emit_lines
        self.saved: dict[int, int] = {}
        self.streams: dict[int, LineRecordStream] = {}

    def start(self, originals: Optional[dict[int, int]] = None) -> None:
        """originals: fds to restore at stop() instead of copies of the
        current fd 1/2 (taken over from the parent's capture by a child)."""
        flush_std_streams()
        self.saved = take_originals(self.fds, originals)
        self.redirect(self.log_file.fileno())
        self.log_file.on_reopen = self.redirect
        line_buffer_std_streams()
        for fd in self.fds:
            name = "stdout" if fd == 1 else "stderr"
            original = getattr(sys, name)
            if original is not None:
                stream = self.streams[fd] = LineRecordStream(original, fd, self.emit_lines)
                setattr(sys, name, stream)

    def redirect(self, log_fd: int) -> None:
        for fd in self.fds:
            os.dup2(log_fd, fd)

    def put_streams_back(self, finish: bool) -> None:
        for fd, stream in self.streams.items():
            name = "stdout" if fd == 1 else "stderr"
            if finish:
                stream.finish()
            if getattr(sys, name) is stream:   # unless someone replaced it since
                setattr(sys, name, stream.original)
        self.streams.clear()

    def stop(self) -> None:
        self.put_streams_back(finish=True)
        flush_std_streams()
        if self.log_file.on_reopen == self.redirect:
            self.log_file.on_reopen = None
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved.clear()

    def abandon_in_child(self) -> dict[int, int]:
        """In a forked child: forget the parent's state (its partial lines
        are the parent's to log), give sys.stdout/sys.stderr back, leave
        fd 1/2 as they are; returns the saved original fds (the caller owns
        them now)."""
        self.put_streams_back(finish=False)
        if self.log_file.on_reopen == self.redirect:
            self.log_file.on_reopen = None
        saved, self.saved = self.saved, {}
        return saved


class PipeCapture:
    """fd 1/2 are pipes; a reader thread turns their lines into records given
    to ``emit_lines(name, level, lines)``."""

    def __init__(self, emit_lines: EmitLines, fds: Sequence[int]) -> None:
        self.emit_lines = emit_lines
        self.fds = tuple(fds)
        self.saved: dict[int, int] = {}
        self.readers: dict[int, int] = {}     # pipe read end -> captured fd
        self.partial: dict[int, bytes] = {}
        self.wake_r = self.wake_w = -1
        self.thread: Optional[threading.Thread] = None

    def start(self, originals: Optional[dict[int, int]] = None) -> None:
        """originals: as for DirectCapture.start()."""
        flush_std_streams()
        self.wake_r, self.wake_w = os.pipe()
        self.saved = take_originals(self.fds, originals)
        for fd in self.fds:
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.dup2(write_end, fd)  # inheritable: child programs write here too
            os.close(write_end)
            self.readers[read_end] = fd
            self.partial[read_end] = b""
        line_buffer_std_streams()
        self.thread = threading.Thread(target=self.read_lines, name="pyse-log-capture",
                                       daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Puts the original fds back, then lets the thread take what is left
        in the pipes.  A grandchild may still hold a write end, so the thread
        is told to finish rather than waiting for end of file."""
        flush_std_streams()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self.saved.clear()
        if self.thread is not None:
            os.write(self.wake_w, b"x")
            self.thread.join(timeout)
            if not self.thread.is_alive():
                self._close_pipes()
            self.thread = None

    def abandon_in_child(self) -> dict[int, int]:
        """In a forked child: the reader thread is not here; close the
        parent's pipe ends, leave fd 1/2 as they are; returns the saved
        original fds (the caller owns them now)."""
        self.thread = None
        self._close_pipes()
        saved, self.saved = self.saved, {}
        return saved

    def _close_pipes(self) -> None:
        for fd in [*self.readers, self.wake_r, self.wake_w]:
            if fd >= 0:
                os.close(fd)
        self.readers.clear()
        self.wake_r = self.wake_w = -1

    # -- the reader thread ---------------------------------------------------
    def read_lines(self) -> None:
        poller = select.poll()
        for read_end in self.readers:
            poller.register(read_end, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        open_ends = set(self.readers)
        while True:
            events = poller.poll()
            if any(fd == self.wake_r for fd, _ in events):
                for read_end in self.readers:
                    self.drain_reporting(read_end, final=True)
                return
            for fd, _ in events:
                if fd in open_ends and not self.drain_reporting(fd, final=False):
                    # every writer closed it: flush the last partial line
                    poller.unregister(fd)
                    open_ends.discard(fd)
                    self.drain_reporting(fd, final=True)

    def drain_reporting(self, read_end: int, final: bool) -> bool:
        """drain(), but this thread must outlive any failure: if it died, the
        pipes would fill and every print() of the process would block."""
        try:
            return self.drain(read_end, final)
        except Exception as e:
            note = f"pyse: log capture of fd {self.readers.get(read_end)} failed: {e!r}\n"
            try:
                os.write(self.saved.get(2, 2), note.encode("utf-8", "backslashreplace"))
            except OSError:
                pass  # no stderr left to tell; the capture goes on regardless
            return True

    def drain(self, read_end: int, final: bool) -> bool:
        """Reads what the pipe holds now and emits its whole lines (and, when
        final, the unterminated rest).  Returns False at end of file."""
        data = self.partial.get(read_end, b"")
        alive = True
        reads = 0
        # Bounded, so one busy pipe cannot starve the other; the final drain
        # more loosely, so a grandchild that never stops writing cannot hold
        # the exit forever.
        while reads < (1024 if final else 16):
            reads += 1
            try:
                chunk = os.read(read_end, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise
                alive = False
                break
            if not chunk:
                alive = False
                break
            data += chunk
        whole = data.split(b"\n")
        rest = whole.pop()
        if final and rest:
            whole.append(rest)
            rest = b""
        lines = cut_long_lines(whole)
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self.partial[read_end] = rest
        if lines:
            name, level = STREAMS.get(self.readers.get(read_end, 1), STREAMS[1])
            self.emit_lines(name, level, [line.decode("utf-8", "backslashreplace")
                                          for line in lines])
        return alive
