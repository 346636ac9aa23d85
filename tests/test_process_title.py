"""Process titles: without a *_process_name key each process of the tree
says what it is, and the environment stays readable in /proc."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import helpers
from ops_harness import APP, pids_of_workers, start_pyse
from pyse.process_title import app_label
from pyse.worker import Worker, mix_in
from test_cli import write

pytestmark = pytest.mark.timeout(60)



class Plain:
    class Inner:
        def run(self) -> None:
            pass

    def run(self) -> None:
        pass


class Subclassed(Worker):
    def run(self) -> None:
        pass


def test_the_app_is_the_users_class_import_path():
    assert app_label(mix_in(Plain, Worker, "worker")) == f"{__name__}:Plain"
    assert app_label(mix_in(Plain.Inner, Worker, "worker")) == f"{__name__}:Plain.Inner"
    assert app_label(Subclassed) == f"{__name__}:Subclassed"


def test_a_class_of_the_main_script_is_named_by_the_script(tmp_path):
    script = write(tmp_path, "myserver.py", """
        import os
        from pyse.process_title import app_label, set_title
        class Main:
            def run(self):
                pass
        print(app_label(Main))
        set_title(None, "worker 7", Main)
        with open("/proc/self/cmdline", "rb") as f:
            print(f.read().rstrip(b"\\0").decode())
        print("SPT_NOENV" in os.environ)
    """)
    out = subprocess.run([sys.executable, str(script), "--a-long-argument-for-the-title-to-fit"],
                         capture_output=True, text=True, timeout=30, env=helpers.marked_env())
    # The title takes the command line's place; what the process's children
    # inherit is its environment as it was.
    assert out.stdout.splitlines() == ["myserver.py:Main", "pyse: worker 7 [myserver.py:Main]",
                                       "False"], out.stderr


@pytest.mark.parametrize("supervisor", [False, True])
def test_every_process_says_what_it_is(tmp_path, supervisor):
    write(tmp_path, "app.py", APP)
    extra = ["--set", "supervisor=true"] if supervisor else []
    proc = start_pyse(tmp_path, "run", "app:W", "-k", "process", "-w", "2", *extra)
    with helpers.killing_group(proc):
        expected = ["pyse: worker 0 [app:W]", "pyse: worker 1 [app:W]"]
        if supervisor:
            expected.insert(0, "pyse: server [app:W]")

        def titles():
            found = sorted(helpers.cmdline(pid) for pid in pids_of_workers(proc.pid))
            return found if found == sorted(expected) else None
        helpers.wait_for(titles, 15, what=f"the titles {expected}")
        assert helpers.cmdline(proc.pid) == ("pyse: supervisor [app:W]" if supervisor
                                             else "pyse: server [app:W]")
        for pid in [proc.pid, *pids_of_workers(proc.pid)]:
            assert helpers.environ_of(pid).get(helpers.MARKER_ENV) == \
                os.environ[helpers.MARKER_ENV], f"pid {pid}'s environment was overwritten"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0


def test_an_embedded_server_is_a_server(tmp_path):
    write(tmp_path, "app.py", APP)
    proc = start_pyse(tmp_path, "run", "app:W")
    with helpers.killing_group(proc):
        helpers.wait_for(lambda: helpers.cmdline(proc.pid) == "pyse: server [app:W]", 15,
                         what="the server's title")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
