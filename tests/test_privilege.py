"""chuser/chgroup/chumask and worker_ch*: checked through /proc (issue 6).

These run as root against a real unprivileged user that the test creates
(with a supplementary group of its own, so that "supplementary groups set"
can be seen) and against ``nobody``."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import helpers
from supervised_harness import SupervisedRun, proc_status, reap, wait_until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root; "
                       "run the suite as root to test chuser/chgroup"),
    pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd/groupadd"),
]
NOBODY, NOGROUP = 65534, 65534
ERROR_CODE = 9


@pytest.fixture(scope="module")
def test_user():
    """(name, uid, supplementary gid) of a user created for these tests."""
    tag = uuid.uuid4().hex[:6]
    user, group = f"pyse-u-{tag}", f"pyse-g-{tag}"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", "-G", group,
                        "-s", "/usr/sbin/nologin", user], check=True)
        try:
            import grp
            import pwd

            yield user, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        finally:
            subprocess.run(["userdel", user], check=True)
    finally:
        subprocess.run(["groupdel", group], check=True)


@pytest.fixture
def shared_dir():
    """A directory the unprivileged users may write (tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="pyse-priv-"))
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def start(shared_dir):
    def make(config, name="run"):
        base = {"workers": 1, "daemonize_error_exit_code": ERROR_CODE,
                "pid_path": str(shared_dir / "daemon.pid")}
        base.update(config)
        # Every process of the tree fails any import after its drop, and
        # sigdumps go to the shared directory (removed with it).
        return SupervisedRun(shared_dir, base, name=name,
                             env={"PYSE_TEST_NO_IMPORT_AFTER_DROP": "1",
                                  "TMPDIR": str(shared_dir)})

    yield from helpers.started_runs(make)


def ids_of(pid: int) -> tuple[list[int], list[int], set[int], str]:
    st = proc_status(pid)
    return ([int(x) for x in st["Uid"].split()], [int(x) for x in st["Gid"].split()],
            {int(x) for x in st["Groups"].split()}, st["Umask"])


def test_workers_drop_to_worker_chuser(start, test_user):
    user, uid, supplementary = test_user
    run = start({"chumask": "027", "worker_chuser": user, "worker_chumask": "077"})
    (worker,) = {r.pid for r in run.wait_record("run")}
    # The server stays root (no chuser) and only takes chumask.
    uids, _, _, umask = ids_of(run.pid)
    assert uids == [0] * 4 and umask == "0027"
    uids, gids, groups, umask = ids_of(worker)
    assert uids == [uid] * 4
    assert gids == [NOGROUP] * 4, "no worker_chgroup: the user's primary group"
    assert groups == {NOGROUP, supplementary}, "the user's supplementary groups, set"
    assert umask == "0077"
    worker_ids = [r for r in run.wait_record("ids", 2) if r.worker_id == 0][0]
    assert worker_ids.detail == f"{uid} {NOGROUP} 77 setuid0=refused"


def test_foreground_server_drops_before_it_is_created(start):
    run = start({"chuser": "nobody", "chgroup": "nogroup", "chumask": 0o007})
    (worker,) = {r.pid for r in run.wait_record("run")}
    server_ids = [r for r in run.wait_record("ids", 2) if r.worker_id == -1][0]
    assert server_ids.pid == run.pid
    assert server_ids.detail == f"{NOBODY} {NOGROUP} 7 setuid0=refused"
    init = run.of("initialize")[0]
    assert init.pid == run.pid
    for pid in (run.pid, worker):
        assert ids_of(pid) == ([NOBODY] * 4, [NOGROUP] * 4, {NOGROUP}, "0007")
    assert Path(run.log_path).stat().st_uid == NOBODY, "the log is opened after the drop"


def test_daemonized_supervisor_drops_before_the_server_exists(start, test_user, shared_dir):
    user, uid, supplementary = test_user
    run = start({"daemonize": True, "supervisor": True, "chuser": user,
                 "chgroup": supplementary, "chumask": 0o022})
    assert run.wait_exit(30) == 0, run.output()
    supervisor = int(run.output().split("daemon ")[1].split()[0])
    server = [r for r in run.wait_record("ids") if r.worker_id == -1][0].pid
    (worker,) = {r.pid for r in run.wait_record("run")}
    for pid in (supervisor, server, worker):
        uids, gids, groups, umask = ids_of(pid)
        assert uids == [uid] * 4, pid
        assert gids == [supplementary] * 4, pid
        assert groups == {supplementary}, pid
        assert umask == "0022"
    # What a running tree does after the drop imports nothing new: CONT
    # (a sigdump in the supervisor, the server and the worker), USR2.
    os.kill(supervisor, signal.SIGCONT)
    wait_until(lambda: len(list(shared_dir.glob("sigdump-*.log"))) >= 3, 15,
               "a sigdump from the supervisor, the server and the worker")
    os.kill(supervisor, signal.SIGUSR2)
    run.wait_record("reload")
    assert "ImportError" not in run.log(), run.log()
    # The pid file was written by the (root) launcher; the daemon removes it
    # at its clean exit from the world-writable directory.
    assert (shared_dir / "daemon.pid").read_text() == f"{supervisor}\n"
    os.kill(supervisor, 15)
    reap(supervisor, 20)
    wait_until(lambda: not run.members(), 15, "the tree to be gone")
    assert not (shared_dir / "daemon.pid").exists()


def test_a_process_that_is_not_root_cannot_change_user(shared_dir):
    events = shared_dir / "events"
    proc = helpers.start_python(f"""
        import os, sys
        import pyse
        # Nothing else is imported before the drop: `import pyse` must bring
        # in everything pyse needs later (after the drop, the installed
        # package may be unreadable: a venv in a root-only directory).
        os.setgroups([])
        os.setgid({NOGROUP})
        os.setuid({NOBODY})

        class W:
            def run(self):
                pass

        sys.exit(pyse.create(None, W, {{"chuser": "root", "daemonize_error_exit_code": 9,
                                         "log": {str(shared_dir / 'x.log')!r}}}).main())
    """, shared_dir, stdout=subprocess.PIPE, env={"PYSE_TEST_EVENTS": str(events)})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == ERROR_CODE, out
    assert b"pyse: cannot start: chuser 'root'" in out
    assert b"Operation not permitted" in out


def test_privilege_change_verifies_the_drop(shared_dir):
    """privilege.change() in a forked root process: uid, gid, groups, umask."""
    proc = helpers.start_python("""
        import os
        from pyse import privilege
        privilege.change("nobody", None, 0o027)
        print(os.getresuid(), os.getresgid(), os.getgroups(), oct(os.umask(0)))
        try:
            privilege.lookup_user("no-such-user-pyse")
        except privilege.PrivilegeError as e:
            print(e)
    """, shared_dir, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    lines = out.decode().splitlines()
    assert lines[0] == f"{(NOBODY,) * 3} {(NOGROUP,) * 3} [{NOGROUP}] 0o27"
    assert lines[1] == "no user 'no-such-user-pyse' on this system"
