"""The pid file (pyse.pidfile): every case in one process.

flock locks belong to an open file description, so two PidFile objects of
one process conflict exactly as two processes would."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pyse import pidfile
from pyse.pidfile import PidFile, PidFileError, PidFileInUse

pytestmark = pytest.mark.timeout(30)


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_publish_writes_the_pid_and_holds_the_lock(tmp_path):
    path = tmp_path / "d.pid"
    f = PidFile(str(path))
    f.acquire(4242)
    assert path.read_text() == "4242\n"
    assert pidfile.is_locked(str(path))
    assert pidfile.running_pid(str(path)) == 4242
    assert leftovers(tmp_path) == []
    assert not f.had_stale_file
    assert f.remove() is None
    assert not path.exists()
    assert not pidfile.is_locked(str(path))


def test_a_live_pid_file_refuses_a_second_start_and_is_left_alone(tmp_path):
    path = tmp_path / "d.pid"
    first = PidFile(str(path))
    first.acquire(1111)
    second = PidFile(str(path))
    with pytest.raises(PidFileInUse, match=r"in use: pid 1111 is running"):
        second.reserve()
    assert path.read_text() == "1111\n"
    assert pidfile.is_locked(str(path))
    assert leftovers(tmp_path) == []
    first.remove()


@pytest.mark.parametrize("content", ["1\n", "99999999\n", "not a pid", ""])
def test_a_stale_pid_file_is_replaced(tmp_path, content):
    # pid 1 is alive but does not hold the lock: pid reuse cannot fool the check.
    path = tmp_path / "d.pid"
    path.write_text(content)
    f = PidFile(str(path))
    f.acquire(2222)
    assert f.had_stale_file
    assert f.stale_pid == (int(content) if content.strip().isdigit() else None)
    assert path.read_text() == "2222\n"
    assert pidfile.is_locked(str(path))
    f.remove()


def test_the_lock_dies_with_its_process(tmp_path):
    path = tmp_path / "d.pid"
    code = ("import sys; from pyse.pidfile import PidFile; f = PidFile(sys.argv[1]); "
            "f.acquire(7); print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"held\n"
        assert pidfile.is_locked(str(path))
        with pytest.raises(PidFileInUse):
            PidFile(str(path)).reserve()
    finally:
        proc.kill()
        proc.wait(10)
    assert path.exists(), "a killed daemon leaves its file behind..."
    assert not pidfile.is_locked(str(path)), "...but not its lock"
    with pytest.raises(PidFileError, match="stale"):
        pidfile.running_pid(str(path))
    f = PidFile(str(path))
    f.acquire(8)
    assert f.stale_pid == 7
    f.remove()


def test_two_racing_starts_only_one_wins(tmp_path):
    path = tmp_path / "d.pid"
    a, b = PidFile(str(path)), PidFile(str(path))
    a.reserve()
    b.reserve()          # both saw no file
    a.publish(1)
    with pytest.raises(PidFileInUse):
        b.publish(2)
    assert path.read_text() == "1\n"
    assert leftovers(tmp_path) == []
    a.remove()


def test_a_reservation_given_up_leaves_nothing(tmp_path):
    path = tmp_path / "d.pid"
    path.write_text("5\n")
    f = PidFile(str(path))
    f.reserve()
    f.abandon()
    assert path.read_text() == "5\n"
    assert leftovers(tmp_path) == []
    assert not pidfile.is_locked(str(path))


def test_remove_spares_a_file_that_is_no_longer_ours(tmp_path):
    path = tmp_path / "d.pid"
    f = PidFile(str(path))
    f.acquire(1)
    os.unlink(path)
    path.write_text("2\n")   # someone else's now
    f.remove()
    assert path.read_text() == "2\n"


def test_running_pid_errors(tmp_path):
    path = tmp_path / "d.pid"
    with pytest.raises(PidFileError, match="does not exist"):
        pidfile.running_pid(str(path))
    path.write_text("garbage")
    with pytest.raises(PidFileError, match="does not hold a pid"):
        pidfile.running_pid(str(path))


def test_unwritable_directory_is_a_clear_error(tmp_path):
    path = tmp_path / "missing" / "d.pid"
    with pytest.raises(PidFileError, match="cannot create"):
        PidFile(str(path)).reserve()
