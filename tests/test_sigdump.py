"""sigdump (SPEC section 3, CONT; issue 5): what the dump holds, that it
works from any thread, and that it refuses what someone planted at its path."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import tracemalloc

import pytest

import helpers
from pyse import sigdump


def parked_thread(name: str) -> tuple[threading.Thread, threading.Event]:
    release = threading.Event()

    def wait_here_for_the_dump() -> None:
        release.wait(30)

    thread = threading.Thread(target=wait_here_for_the_dump, name=name)
    thread.start()
    return thread, release


def dump_from_another_thread(directory) -> str:
    """Dumps from a thread that is not the main one (as a worker's hook
    thread does) and returns the text written."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(sigdump.dump(str(directory))),
                              name="dumper")
    thread.start()
    thread.join(30)
    assert result, "the dump raised"
    return open(result[0]).read()


def test_dump_holds_every_thread_gc_and_memory(tmp_path):
    thread, release = parked_thread("parked-for-dump")
    try:
        text = dump_from_another_thread(tmp_path)
    finally:
        release.set()
        thread.join()
    assert text.startswith("Sigdump at ")
    assert f"process {os.getpid()}" in text
    assert "Thread 'MainThread'" in text
    assert "Thread 'dumper'" in text
    # the parked thread's stack, down to the function it waits in
    parked = text.split("Thread 'parked-for-dump'")[1].split("  Thread ")[0]
    assert "in wait_here_for_the_dump" in parked
    assert re.search(r"GC: counts \(\d+, \d+, \d+\) thresholds", text)
    assert "GC generation 2:" in text
    assert re.search(r"Memory: VmSize \d+ kB, VmHWM \d+ kB, VmRSS \d+ kB", text)
    assert "tracemalloc: not tracing" in text
    assert oct(os.stat(sigdump.dump_path(str(tmp_path))).st_mode & 0o777) == "0o600"


def test_dump_lists_top_allocations_when_tracing(tmp_path):
    tracemalloc.start()
    try:
        hoard = [bytearray(1000) for _ in range(2000)]   # 2 MB from this line
        text = sigdump.dump(str(tmp_path)) and open(sigdump.dump_path(str(tmp_path))).read()
        del hoard
    finally:
        tracemalloc.stop()
    assert "top allocations:" in text
    allocations = text.split("top allocations:")[1]
    assert "test_sigdump.py" in allocations.splitlines()[1], "the biggest is our hoard"


def test_second_dump_appends(tmp_path):
    sigdump.dump(str(tmp_path))
    sigdump.dump(str(tmp_path))
    assert open(sigdump.dump_path(str(tmp_path))).read().count("Sigdump at ") == 2


def test_uses_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert sigdump.dump() == str(tmp_path / f"sigdump-{os.getpid()}.log")


@pytest.mark.parametrize("dangling", [False, True])
def test_refuses_a_planted_symlink(tmp_path, dangling):
    target = tmp_path / "victim"
    if not dangling:
        target.write_text("precious\n")
    os.symlink(target, sigdump.dump_path(str(tmp_path)))
    with pytest.raises(OSError, match="symlink"):
        sigdump.dump(str(tmp_path))
    if dangling:
        assert not target.exists(), "the symlink's target was created"
    else:
        assert target.read_text() == "precious\n"


def test_refuses_a_hard_link_to_another_file(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    os.link(target, sigdump.dump_path(str(tmp_path)))
    with pytest.raises(OSError, match="links"):
        sigdump.dump(str(tmp_path))
    assert target.read_text() == "precious\n"


def test_refuses_a_fifo_without_hanging(tmp_path):
    os.mkfifo(sigdump.dump_path(str(tmp_path)))
    with pytest.raises(OSError):
        sigdump.dump(str(tmp_path))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_refuses_another_users_file(tmp_path):
    path = sigdump.dump_path(str(tmp_path))
    with open(path, "w") as f:
        f.write("theirs\n")
    os.chown(path, 4242, 4242)
    with pytest.raises(OSError, match="owned by uid 4242"):
        sigdump.dump(str(tmp_path))
    assert open(path).read() == "theirs\n"


# ---- CONT to a running process server ----------------------------------------

@pytest.mark.timeout(60)
def test_cont_dumps_the_server_and_every_worker(start_log_run, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = start_log_run({"workers": 2}, env={"TMPDIR": str(dumps)})
    workers = [pid for _, pid in run.wait_events("run", 2, 30)]
    run.proc.send_signal(signal.SIGCONT)
    for pid in [run.pid, *workers]:
        path = dumps / f"sigdump-{pid}.log"
        helpers.wait_for(lambda: path.exists() and "Memory:" in path.read_text(), 10,
                         what=f"the dump of pid {pid}")
    run.wait_log(f"Wrote sigdump to {dumps}/sigdump-{run.pid}.log", 10)
    for pid in workers:
        text = (dumps / f"sigdump-{pid}.log").read_text()
        for name in ("MainThread", "pyse-control", "pyse-hooks", "pyse-log-capture"):
            assert f"Thread '{name}'" in text, name
        assert "in run" in text, "the main thread's stack reaches the worker's run()"
    server_text = (dumps / f"sigdump-{run.pid}.log").read_text()
    assert server_text.count("  Thread ") == 1, "the process server has one thread"
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_a_planted_symlink_does_not_stop_the_server(start_log_run, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = start_log_run({"workers": 1}, env={"TMPDIR": str(dumps)})
    run.wait_events("run", 1, 30)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, dumps / f"sigdump-{run.pid}.log")
    run.proc.send_signal(signal.SIGCONT)
    run.wait_log("No sigdump written", 10)
    assert "symlink" in run.log_path.read_text()
    assert victim.read_text() == "precious\n"
    assert helpers.is_running(run.pid)
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_disable_sigdump(start_log_run, tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = start_log_run({"workers": 1, "disable_sigdump": True}, env={"TMPDIR": str(dumps)})
    _, worker = run.wait_events("run", 1, 30)[0]
    run.proc.send_signal(signal.SIGCONT)
    run.wait_log("Worker 0 received SIGCONT", 10)
    run.proc.send_signal(signal.SIGUSR2)
    # The worker's hooks run one at a time: once reload() ran, dump() had.
    run.wait_events("reload", 1, 10)
    assert list(dumps.iterdir()) == []
    assert run.stop() == 0


@pytest.mark.timeout(60)
def test_cont_right_after_term_writes_no_dump(start_log_run, tmp_path):
    """systemd and timeout(1) send CONT right after their TERM: a stopping
    tree writes no dump."""
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = start_log_run({"workers": 2}, env={"TMPDIR": str(dumps)})
    workers = [pid for _, pid in run.wait_events("run", 2, 30)]
    run.proc.send_signal(signal.SIGTERM)
    run.proc.send_signal(signal.SIGCONT)
    for pid in workers:   # and as systemd's KillMode=control-group does, to every process
        with contextlib.suppress(ProcessLookupError):   # it may have stopped already
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
    assert run.proc.wait(20) == 0
    assert list(dumps.iterdir()) == [], (workers, run.pid, [p.read_text()[:3000] for p in dumps.iterdir()])


@pytest.mark.timeout(60)
def test_sigdump_signal_and_path_come_from_the_environment(start_log_run, tmp_path):
    """As with Ruby's sigdump: SIGDUMP_SIGNAL picks the signal, SIGDUMP_PATH
    one file that every process of the tree appends its dump to."""
    target = tmp_path / "all-dumps.log"
    run = start_log_run({"workers": 2}, env={"SIGDUMP_SIGNAL": "WINCH",
                                             "SIGDUMP_PATH": str(target)})
    workers = [pid for _, pid in run.wait_events("run", 2, 30)]
    run.proc.send_signal(signal.SIGWINCH)
    helpers.wait_for(lambda: target.exists() and all(
        f"process {pid} " in target.read_text() for pid in [run.pid, *workers]), 10,
        what="one dump from the server and from each worker in the one file")
    run.wait_log(f"Wrote sigdump to {target}", 10)
    assert run.stop() == 0


def test_sigdump_signal_must_be_free():
    from pyse.signals import dump_signal
    assert dump_signal({"SIGDUMP_SIGNAL": "TERM"}) == signal.SIGCONT, "TERM means stop"
    assert dump_signal({"SIGDUMP_SIGNAL": "nonsense"}) == signal.SIGCONT
    assert dump_signal({"SIGDUMP_SIGNAL": "sigwinch"}) == signal.SIGWINCH
    assert dump_signal({"SIGDUMP_SIGNAL": str(int(signal.SIGTSTP))}) == signal.SIGTSTP
    assert dump_signal({}) == signal.SIGCONT


def test_sigdump_path_dash_is_stdout(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("SIGDUMP_PATH", "-")
    assert sigdump.dump() == "stdout"
    assert "Sigdump at" in capfd.readouterr().out
