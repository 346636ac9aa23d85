"""The pid file: written atomically, refused while its daemon lives, removed
on a clean exit.

"Is the process named in the pid file a live pyse daemon?" is answered by a
lock, not by the pid.  The daemon holds an exclusive ``flock`` on the pid
file's inode for as long as it runs; the kernel drops the lock when the last
fd of that open file description is closed, which happens however the
process dies (SIGKILL included).  So:

- locked: a live daemon owns the file; a second start is refused and the
  first is left alone;
- not locked: whatever pid it holds is stale (the daemon died, or the pid
  was reused by an unrelated process), and the file is replaced.

Reading ``/proc/<pid>/cmdline`` instead would be fooled by pid reuse and by
process titles (``daemon_process_name``); the lock cannot be.

The file is never seen half-written: the pid goes into a locked temporary
file in the same directory, which then replaces the path by ``rename`` (or
appears there by ``link``, when there was no file, so that two racing
starts cannot both win).  ``flock`` locks belong to the open file
description, so they survive ``fork``: a launcher may take the lock, fork the
daemon, and let the daemon keep it (see :mod:`pyse.daemon`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from typing import Optional


class PidFileError(RuntimeError):
    """The pid file cannot be taken; the message says why."""


class PidFileInUse(PidFileError):
    def __init__(self, path: str, pid: Optional[int]) -> None:
        held = f"pid {pid}" if pid is not None else "a process"
        super().__init__(f"pid file {path!r} is in use: {held} is running and holds its lock; "
                         f"not starting a second daemon")
        self.path = path
        self.pid = pid


def read_pid(path: str) -> Optional[int]:
    """The pid a pid file holds, or None (no file, or not a pid)."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def is_locked(path: str) -> bool:
    """True if a live process holds the lock of the pid file at path.

    Tests with a shared lock, released at once: it conflicts only with a
    daemon's exclusive lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock
    return False


def running_pid(path: str) -> int:
    """The pid of the live daemon that owns the pid file at path; raises
    :class:`PidFileError` if there is none (no file, or a stale one)."""
    pid = read_pid(path)
    if pid is None:
        if os.path.exists(path):
            raise PidFileError(f"pid file {path!r} does not hold a pid")
        raise PidFileError(f"pid file {path!r} does not exist: the daemon is not running")
    if not is_locked(path):
        raise PidFileError(f"pid file {path!r} is stale: pid {pid} is no longer the daemon "
                           f"(nothing holds the file's lock)")
    return pid


class PidFile:
    """One daemon's claim on ``path``: :meth:`reserve` before forking, then
    :meth:`publish` with the daemon's pid, :meth:`remove` at a clean exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: the locked file that is (or becomes) the pid file; the daemon keeps it open
        self.fd = -1
        self._temp_path: Optional[str] = None
        #: fd of a stale pid file, locked so no other start takes it meanwhile
        self._stale_fd = -1
        #: the pid a replaced stale file held (None: there was none), for the log
        self.stale_pid: Optional[int] = None
        self.had_stale_file = False

    # -- taking it -------------------------------------------------------------
    def reserve(self) -> None:
        """Fails with :class:`PidFileInUse` if a live daemon holds the file;
        otherwise prepares a locked temporary file (and locks the stale one)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.",
                                        suffix=".tmp", dir=directory)
            os.fchmod(fd, 0o644)
        except OSError as e:
            raise PidFileError(f"pid file {self.path!r}: cannot create a temporary file in "
                               f"{directory!r}: {e.strerror}") from e
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else has it
        self.fd, self._temp_path = fd, temp
        try:
            self._lock_existing()
        except BaseException:
            self.abandon()
            raise

    def _lock_existing(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            except OSError as e:
                raise PidFileError(f"pid file {self.path!r}: cannot open it: {e.strerror}") from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PidFileInUse(self.path, read_pid(self.path)) from None
            # Locked, but the path may have been replaced between open and flock.
            if _same_file(fd, self.path):
                self._stale_fd = fd
                self.had_stale_file = True
                self.stale_pid = read_pid(self.path)
                return
            os.close(fd)

    def publish(self, pid: int) -> None:
        """Writes pid and puts the file in place; the lock stays with
        :attr:`fd` (and every process that inherited it)."""
        assert self.fd >= 0 and self._temp_path is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)
        temp, self._temp_path = self._temp_path, None
        try:
            if self._stale_fd >= 0:
                os.rename(temp, self.path)
            else:
                self._link_new(temp)
        except BaseException:
            _unlink_quietly(temp)
            raise
        finally:
            self._close_stale()

    def _link_new(self, temp: str) -> None:
        try:
            os.link(temp, self.path)
        except FileExistsError:
            # Someone created the file after reserve(): the lock decides.
            self._lock_existing()
            if self._stale_fd < 0:  # it vanished again: try once more
                os.link(temp, self.path)
            else:
                os.rename(temp, self.path)
                return
        os.unlink(temp)

    def acquire(self, pid: int) -> None:
        """reserve() then publish(pid): for a process writing its own pid."""
        self.reserve()
        self.publish(pid)

    def adopt_in_daemon(self) -> None:
        """In a daemon forked after reserve(): the launcher publishes the
        file; this process only keeps the lock (:attr:`fd`) and later
        removes the file if it is still this one."""
        self._temp_path = None
        self._close_stale()

    # -- letting go ----------------------------------------------------------
    def abandon(self) -> None:
        """Gives up a reservation that was not published (a failed start)."""
        if self._temp_path is not None:
            _unlink_quietly(self._temp_path)
            self._temp_path = None
        self._close_stale()
        self.close()

    def close(self) -> None:
        """Closes this process's fd of the lock (the file stays)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> Optional[str]:
        """At a clean exit: unlinks the pid file if it is still ours, and
        releases the lock.  Returns a reason when it could not be removed."""
        problem = None
        if self.fd >= 0 and self._temp_path is None:
            if _same_file(self.fd, self.path):
                try:
                    os.unlink(self.path)
                except OSError as e:
                    problem = f"cannot remove pid file {self.path!r}: {e.strerror}"
        self.close()
        return problem

    def _close_stale(self) -> None:
        if self._stale_fd >= 0:
            os.close(self._stale_fd)
            self._stale_fd = -1


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM):
            raise
