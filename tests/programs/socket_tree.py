"""A server on the tree's socket manager (``socket_manager: true``), for
every worker type, with or without a supervisor.

Usage: python socket_tree.py CONFIG.json             the daemon
       python socket_tree.py --spawned CONFIG.json ID  what a spawn worker runs
or, as a module: pyse run socket_tree:TreeWorker --server socket_tree:TreeServer.

Test-only config keys: ``test_port`` (TCP, asked for by before_run through
``self.socket_manager``), ``test_udp_port`` (asked for by each worker only,
after it started: a forked worker gets it through the broker),
``test_name`` (a socket name to ask for first, as systemd passes them),
``test_info`` (a file where before_run writes {"path", "token", "pid"} of
the manager, for tests that talk to the broker), ``test_spawn_argv`` (the
command a spawn worker runs instead of this program).

Each worker answers every TCP connection with one JSON line: its id, pid,
uid, how it got the listener ("server" through self.server.socket_manager,
"client" through pyse.SocketManager.Client()), and whether both ways gave
the same socket; and echoes every UDP datagram, prefixed by its pid.
"""
import json
import os
import selectors
import signal
import socket
import sys

import pyse


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def same_socket(a, b):
    sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class TreeServer:
    def before_run(self):
        config = self.config
        if config.get("test_port") is not None:
            self.socket_manager.listen_tcp("127.0.0.1", config["test_port"],
                                           name=config.get("test_name"))
        if config.get("test_info"):
            write_json(config["test_info"], {"path": self.socket_manager.path,
                                             "token": self.socket_manager.token,
                                             "pid": os.getpid()})


class Serving:
    """What every worker does, whoever runs it."""

    def start_serving(self, config, worker_id, server_manager):
        client = pyse.SocketManager.Client()
        self.listener = client.listen_tcp("127.0.0.1", config["test_port"],
                                          name=config.get("test_name"))
        how, same = "client", None
        if server_manager is not None:
            mine = server_manager.listen_tcp("127.0.0.1", config["test_port"],
                                             name=config.get("test_name"))
            how, same = "server", same_socket(mine, self.listener)
            mine.close()
        self.udp = None
        if config.get("test_udp_port") is not None:
            self.udp = client.listen_udp("127.0.0.1", config["test_udp_port"])
        self.answer = {"worker": worker_id, "pid": os.getpid(), "uid": os.getuid(),
                       "how": how, "same": same}
        self.stop_r, self.stop_w = socket.socketpair()
        if getattr(self, "stopped", False):
            self.stop_w.send(b"x")   # stop() came before the pair existed

    def serve(self):
        with selectors.DefaultSelector() as selector:
            for sock in (self.listener, self.udp, self.stop_r):
                if sock is not None:
                    selector.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self.stop_r:
                        return
                    try:
                        self.answer_one(key.fileobj)
                    except (BlockingIOError, ConnectionError):
                        pass  # another worker took it, or the client left

    def answer_one(self, sock):
        if sock is self.udp:
            data, sender = sock.recvfrom(1000)
            sock.sendto(b"%d: %s" % (os.getpid(), data), sender)
            return
        conn, _ = sock.accept()
        with conn:
            conn.sendall(json.dumps(self.answer).encode() + b"\n")

    def stop_serving(self):
        self.stopped = True
        stop_w = getattr(self, "stop_w", None)
        if stop_w is not None:
            stop_w.send(b"x")


class TreeWorker(Serving):
    def run(self):
        self.start_serving(self.config, self.worker_id, self.server.socket_manager)
        self.serve()

    def spawn(self, process_manager):
        argv = self.config.get("test_spawn_argv") or [
            sys.executable, os.path.abspath(__file__), "--spawned",
            self.config["test_config_path"], str(self.worker_id)]
        process_manager.spawn(None, *argv)

    def stop(self):
        self.stop_serving()


def run_spawned(config_path, worker_id):
    with open(config_path) as f:
        config = json.load(f)
    worker = Serving()
    worker.start_serving(config, worker_id, None)
    signal.signal(signal.SIGTERM, lambda signo, frame: worker.stop_serving())
    worker.serve()


def load_config():
    with open(sys.argv[1]) as f:
        return dict(json.load(f), test_config_path=sys.argv[1])


if __name__ == "__main__":
    if sys.argv[1] == "--spawned":
        run_spawned(sys.argv[2], int(sys.argv[3]))
    else:
        pyse.create(TreeServer, TreeWorker, load_config).run()
