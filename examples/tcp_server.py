"""ServerEngine's "multiprocess TCP server": the server binds, workers accept.

    python examples/tcp_server.py 9071 &
    printf 'hi' | nc 127.0.0.1 9071      # -> Awesome work!

The listening socket lives in the server process, so it stays open while
workers die and restart: clients are never refused.
"""
import socket
import sys

import pyse


class MyServer(pyse.ServerModule):      # module MyServer
    def before_run(self) -> None:
        self.sock = socket.create_server((self.config["bind"], self.config["port"]), backlog=128)


class MyWorker(pyse.WorkerModule):      # module MyWorker
    def initialize(self) -> None:
        self.stop_flag = pyse.BlockingFlag()

    def run(self) -> None:
        # self.server is a pyse.Server to the type checker; at run time it is
        # MyServer mixed into the process server, as this check tells it.
        assert isinstance(self.server, MyServer)
        sock = self.server.sock
        sock.settimeout(0.2)  # so that stop() is noticed between connections
        while not self.stop_flag.is_set():
            try:
                conn, _ = sock.accept()
            except (socket.timeout, BlockingIOError):
                continue
            with conn:
                conn.sendall(b"Awesome work!")

    def stop(self) -> None:
        self.stop_flag.set()


if __name__ == "__main__":
    pyse.create(MyServer, MyWorker, {
        "worker_type": "process",
        "workers": 4,
        "bind": "127.0.0.1",
        "port": int(sys.argv[1]) if len(sys.argv) > 1 else 9071,
        "log_level": "info",
    }).run()
