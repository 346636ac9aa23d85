"""One log file shared by every process of the tree, rotated by size.

Every process (supervisor, server, workers) opens the file itself with
O_APPEND and writes whole lines.  What makes rotation safe across processes
is one ``flock`` on a side file, ``<log>.lock``, held around "follow the
path, check the size, rotate if needed, write":

- the lock file is never renamed, so every process locks the same inode
  (locking the log itself would not work: after a rename two processes could
  each hold "the" lock on two different files);
- under the lock a writer first compares its fd's inode with the path's: if
  another process rotated (or logrotate renamed the file) it reopens, so no
  line is written into a file that was already shifted away;
- the size check and the write happen under the same lock, so a file never
  grows past ``rotate_size`` unless a single line is longer than that.

flock belongs to an open file description, which fork shares: a child that
kept its parent's lock fd would "hold" the parent's lock.  So each process
opens its own lock fd (checked by pid before every write), and the in-process
lock is re-created in a forked child, where a thread that held it does not
exist.  See docs/logging.md for why a lock rather than one writer process.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time
import weakref
from typing import Callable, Iterable, Optional

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
#: seconds a writer waits for the lock before writing without it
LOCK_TIMEOUT = 2.0
_instances: "weakref.WeakSet[SharedLogFile]" = weakref.WeakSet()


class LogWriteError(OSError):
    """A write of a batch of lines that failed (a full disk, a file size
    limit): ``lines_written`` of the batch's lines are whole in the file."""

    def __init__(self, error: OSError, lines_written: int) -> None:
        super().__init__(error.errno, error.strerror, error.filename)
        self.lines_written = lines_written


class SharedLogFile:
    """A log file path that rotates at ``rotate_size`` bytes keeping
    ``rotate_age`` old files (``path.0`` is the newest); 0 for either means
    never rotate.  ``on_reopen(fd)`` is called (lock held) whenever this
    process switches to a new file, so fd 1/2 redirections can follow."""

    def __init__(self, path: str, rotate_size: int = 0, rotate_age: int = 0,
                 lock_timeout: float = LOCK_TIMEOUT) -> None:
        # Absolute: a daemon changes directory, and the path must not move.
        self.path = os.path.abspath(path)
        self.lock_path = self.path + ".lock"
        self.rotate_size = int(rotate_size)
        self.rotate_age = int(rotate_age)
        self.on_reopen: Optional[Callable[[int], None]] = None
        self.lock_timeout = lock_timeout
        #: writes done without the lock (none to be had, or its holder stuck)
        self.lock_timeouts = 0
        #: the last wait for the lock timed out, and no take has worked since
        self._lock_stuck = False
        self._mutex = threading.Lock()
        #: why there is no lock fd (then: no rotation), or None
        self.lock_error: Optional[str] = None
        self._fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        #: a regular file named by a path that is not a symlink.  Anything
        #: else is only written to: no lock file beside it, no following, no
        #: rotation, no fd 1/2 capture.  Rotating renames the path, and
        #: renaming /dev/stderr (a symlink to /proc/self/fd/2, which may be a
        #: file) would replace a system symlink with our log; as root, it did.
        self.regular = (stat.S_ISREG(os.fstat(self._fd).st_mode)
                        and stat.S_ISREG(os.lstat(self.path).st_mode)
                        and not self.path.startswith(("/dev/", "/proc/")))
        self._lock_fd = self._open_lock_fd() if self.regular else -1
        self._lock_pid = os.getpid()
        #: whole lines of the current batch written so far
        self._lines_done = 0
        #: a failed write left part of a line at the end of the file
        self._torn = False
        _instances.add(self)

    @property
    def rotates(self) -> bool:
        return self.rotate_size > 0 and self.rotate_age > 0

    def fileno(self) -> int:
        return self._fd

    def may_capture_std_fds(self) -> bool:
        """Whether fd 1/2 may be sent into this file: only a regular one (see
        ``regular``).  ``/dev/stderr`` reopened (USR2) in a process whose
        fd 2 is a capture pipe would open that very pipe, and the capture
        would feed itself forever."""
        return self.regular

    # -- writing -------------------------------------------------------------
    def write_lines(self, lines: Iterable[bytes]) -> None:
        """Appends each line (newline included) whole, rotating between lines
        when the next one would take the file past rotate_size.  Raises
        LogWriteError (an OSError) when the lines could not all be written."""
        lines = list(lines)
        if not lines:
            return
        with self._mutex:
            self._lines_done = 0
            try:
                self._write_batch(lines)
            except LogWriteError:
                raise
            except OSError as e:   # following, rotating or reopening the path failed
                raise LogWriteError(e, self._lines_done) from e

    def _write_batch(self, lines: list[bytes]) -> None:
        if not self.regular:
            self._write_all(b"".join(lines))
            return
        lock_fd = self._own_lock_fd()
        if lock_fd < 0:
            self._append_unlocked(lines, None if self.lock_timeouts else (
                f"pyse: no log lock ({self.lock_error}): not rotating {self.path}\n"))
            return
        was_stuck = self._lock_stuck
        if not self._take_lock(lock_fd):
            why = None if was_stuck else (
                f"pyse: the log lock {self.lock_path} was busy for {self.lock_timeout:g} s "
                f"(a stuck process holds it?); writing without it until it is free\n")
            self._append_unlocked(lines, why)
            return
        try:
            self._follow_path()
            self._append_locked(lines)
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _take_lock(self, lock_fd: int) -> bool:
        """flock with a deadline: False after lock_timeout seconds.

        A holder can be stuck: a worker thread holding the lock while
        another thread of that worker keeps the GIL forever never gets to
        unlock.  A blocking flock would then freeze every process at its
        next log line, the server included, which could no longer kill that
        very worker.  Python has no flock with a timeout, so poll with a
        growing pause (uncontended, the first try succeeds)."""
        if self._lock_stuck:
            # Already waited once for this holder: do not make every line
            # (the server's included) pay the whole timeout again.
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._lock_stuck = False
            return True
        pause = 0.0001
        deadline = None
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass  # held by another process: wait below
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.lock_timeout
            elif now >= deadline:
                self._lock_stuck = True
                return False
            time.sleep(min(pause, deadline - now))
            pause = min(pause * 2, 0.01)

    def _append_unlocked(self, lines: list[bytes], why: Optional[str]) -> None:
        """No lock to be had: write anyway, without rotating (after a line
        saying why, when given).  O_APPEND keeps each line whole; at worst
        it lands in a file being shifted, still exactly once."""
        self.lock_timeouts += 1
        self._follow_path()
        if why is not None:
            lines = [why.encode("utf-8", "backslashreplace"), *lines]
        self._write_all(b"".join(lines))

    def _append_locked(self, lines: list[bytes]) -> None:
        size = os.fstat(self._fd).st_size
        chunk: list[bytes] = []
        pending = 0
        for line in lines:
            if self.rotates and size + pending + len(line) > self.rotate_size and size + pending > 0:
                self._write_all(b"".join(chunk))
                chunk, pending = [], 0
                self._rotate_locked()
                size = 0
            chunk.append(line)
            pending += len(line)
        self._write_all(b"".join(chunk))

    def _write_all(self, data: bytes) -> None:
        """Writes data (whole lines) to the end of the file.  A failure
        raises LogWriteError counting the lines of this batch that made it;
        a line it cut short is ended by the next write that works, so the
        next line does not run on from it."""
        lines = data.count(b"\n")
        ending = b""
        if self._torn and os.fstat(self._fd).st_size > 0:
            ending = b"\n"   # ends the cut line; not one of ours
        data = ending + data
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError as e:
                done = data[:len(data) - len(view)]
                if done:
                    self._torn = not done.endswith(b"\n")
                    self._lines_done += done[len(ending):].count(b"\n")
                raise LogWriteError(e, self._lines_done) from e
            view = view[written:]
        self._torn = False
        self._lines_done += lines

    def _follow_path(self) -> None:
        """Reopens when the path no longer names our file: another process
        rotated it, or logrotate renamed it away."""
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            self._reopen_locked()
            return
        ours = os.fstat(self._fd)
        if (at_path.st_dev, at_path.st_ino) != (ours.st_dev, ours.st_ino):
            self._reopen_locked()

    def _rotate_locked(self) -> None:
        # Oldest first, so each rename lands on a name already moved away;
        # rename() replaces path.(age-1), which drops the oldest generation.
        for i in range(self.rotate_age - 2, -1, -1):
            try:
                os.rename(f"{self.path}.{i}", f"{self.path}.{i + 1}")
            except FileNotFoundError:
                pass  # fewer generations than rotate_age so far
        try:
            os.rename(self.path, f"{self.path}.0")
        except FileNotFoundError:
            pass  # renamed away by logrotate since we followed the path
        self._reopen_locked()

    # -- reopening -------------------------------------------------------------
    def reopen(self) -> None:
        """USR2: switch to whatever file is at the path now (creating it)."""
        with self._mutex:
            self._reopen_locked()

    def _reopen_locked(self) -> None:
        fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        old, self._fd = self._fd, fd
        os.close(old)
        if self.on_reopen is not None:
            self.on_reopen(fd)

    def _own_lock_fd(self) -> int:
        pid = os.getpid()
        if self._lock_pid != pid and self.regular:
            # Forked: the inherited fd shares the parent's lock.  Closing our
            # copy leaves the parent's description (and any lock on it) alone.
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            self._lock_fd = self._open_lock_fd()
            self._lock_pid = pid
        return self._lock_fd

    def _open_lock_fd(self) -> int:
        """The lock file's fd, or -1 when the directory does not let us
        create it (a log file we may write in a directory we may not):
        logging goes on, rotation (which renames in that directory) is off."""
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self.lock_error = f"cannot open {self.lock_path}: {e.strerror}"
            return -1

    def after_fork_child(self) -> None:
        with self._mutex:
            self._own_lock_fd()

    def close(self) -> None:
        with self._mutex:
            for fd in (self._fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            self._fd = self._lock_fd = -1
        _instances.discard(self)


def _reinit_mutexes_in_child() -> None:
    # A thread of the parent may have held a mutex at fork; it does not exist
    # here, so the mutex would stay locked forever.
    for log_file in list(_instances):
        log_file._mutex = threading.Lock()


os.register_at_fork(after_in_child=_reinit_mutexes_in_child)
