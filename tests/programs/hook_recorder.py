"""recorder.py's workers, plus a server module that records its overridable
hooks (reload_config, stop, restart, each calling super()), for every
worker type.  Lines go to $PYSE_TEST_EVENTS as in recorder.py.

Usage: python hook_recorder.py CONFIG.json
       python hook_recorder.py --child WORKER_ID   (the spawned command)

Test-only config keys besides recorder.py's: test_raise_once (worker 0's
first run() raises), test_raise_always (every run() raises), test_block (run() blocks in one wait with no
timeout until stop()), test_spawn_beat (a list of worker ids whose spawned
command writes one heartbeat, then goes silent), test_spawn_missing (spawn
a command that does not exist; "later": only after the first spawn, which
runs /bin/true), test_spawn_cmd (spawn this
argv instead of the recording child), test_hook_raises (the
server's reload_config() override raises).  $PYSE_TEST_LINK="heartbeat_fd,lifeline_fd"
gives the server a ParentLink, as a supervisor's set-up of its server
process would (pyse.process_manager.setup_child).
"""
import os
import signal
import sys
import threading

import pyse
from pyse import lowlevel
from pyse.process_manager import ParentLink
from pyse.signals import SERVER_SIGNALS
from recorder import RecordingServer, RecordingWorker, load_config, record


class HookServer(RecordingServer):
    def initialize(self):
        record("server_initialize", -1)
        link = os.environ.get("PYSE_TEST_LINK")
        if link:
            heartbeat_fd, lifeline_fd = map(int, link.split(","))
            loop = lowlevel.Loop(reap_any=self.config["worker_type"] in ("process", "spawn"))
            loop.own_signals(SERVER_SIGNALS)
            loop.set_lifeline_fd(lifeline_fd)
            loop.set_parent_heartbeat(heartbeat_fd, self.config["server_heartbeat_interval"])
            self.parent_link = ParentLink(os.getppid(), heartbeat_fd, lifeline_fd, loop)

    def reload_config(self):
        record("reload_config", -1)
        if self.config.get("test_hook_raises"):
            raise RuntimeError("user reload_config failed")
        super().reload_config()
        record(f"config_workers_{self.config['workers']}", -1)

    def stop(self, stop_graceful):
        record("server_stop_graceful" if stop_graceful else "server_stop_immediate", -1)
        super().stop(stop_graceful)

    def restart(self, stop_graceful):
        record("server_restart", -1)
        super().restart(stop_graceful)


class HookWorker(RecordingWorker):
    raised = False
    spawned_once = False

    def run(self):
        record(f"run_thread_{threading.current_thread().name}", self.worker_id)
        if self.config.get("test_raise_always"):
            raise RuntimeError("run always fails")
        if self.config.get("test_raise_once") and self.worker_id == 0 and not HookWorker.raised:
            HookWorker.raised = True
            record("run", self.worker_id)
            raise RuntimeError("first run fails")
        if self.config.get("test_block"):
            # One C-level wait with no timeout: only stop() can end it.
            record("run", self.worker_id)
            self.flag.wait_for_set()
            record("return", self.worker_id)
            return
        super().run()

    def before_fork(self):
        record("before_fork", self.worker_id)

    def after_start(self):
        record("after_start", self.worker_id)

    def stop(self):
        record(f"stop_thread_{threading.current_thread().name}", self.worker_id)
        super().stop()

    def spawn(self, process_manager):
        record("spawn", self.worker_id)
        missing = self.config.get("test_spawn_missing")
        if missing == "later" and not HookWorker.spawned_once:
            HookWorker.spawned_once = True
            process_manager.spawn({}, "/bin/true")
            return
        if missing:
            process_manager.spawn({}, "/nonexistent/pyse-test-command")
            return
        if self.config.get("test_spawn_cmd"):
            process_manager.spawn({}, *self.config["test_spawn_cmd"])
            return
        beat = self.worker_id in self.config.get("test_spawn_beat", [])
        process_manager.spawn({"TEST_BEAT": "1" if beat else ""}, sys.executable,
                              os.path.abspath(__file__), "--child", str(self.worker_id))


def child_main(worker_id):
    """The spawned command: records like a worker; TERM ends it, USR1 is its
    reload signal in the tests."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: (record("stop", worker_id), done.set()))
    signal.signal(signal.SIGUSR1, lambda *a: record("reload", worker_id))
    heartbeat_fd = os.environ.get("PYSE_HEARTBEAT_FD")
    record("run", worker_id)
    record(f"heartbeat_fd_{heartbeat_fd}", worker_id)
    if os.environ.get("TEST_BEAT"):
        os.write(int(heartbeat_fd), b".")
    while not done.wait(0.5):
        pass
    record("return", worker_id)


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child_main(int(sys.argv[2]))
    else:
        pyse.create(HookServer, HookWorker, load_config).run()
