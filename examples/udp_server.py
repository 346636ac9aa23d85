"""A prefork UDP echo server on the socket manager.

    python examples/udp_server.py [PORT] [WORKERS]       # default 9072 and 4
    echo hello | nc -u -w1 127.0.0.1 9072                 # -> worker 2 (pid 1234): hello

or, without nc::

    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hello", ("127.0.0.1", 9072)); print(s.recv(100))'

With ``socket_manager: true`` the supervisor owns the UDP socket and every
worker process reads from a dup of it: the kernel gives each datagram to
one of them.  Datagrams sent while a worker or the server restarts (a
SIGKILL, USR1, a live restart with INT) wait in the socket's buffer, which
lives in the supervisor, for whichever worker reads next.
"""
import os
import socket
import sys

import pyse


class UDPServer(pyse.Server):
    def before_run(self) -> None:
        # Bound before the workers fork: they inherit it (no round trip).
        self.socket_manager.listen_udp(self.config["bind"], self.config["port"])


class UDPWorker(pyse.Worker):
    def initialize(self) -> None:
        self.stop_flag = pyse.BlockingFlag()

    def run(self) -> None:
        sock = pyse.SocketManager.Client().listen_udp(self.config["bind"], self.config["port"])
        # A timeout keeps the shared socket non-blocking (as every copy must
        # stay) and lets stop() be noticed between datagrams.
        sock.settimeout(0.2)
        prefix = b"worker %d (pid %d): " % (self.worker_id, os.getpid())
        while not self.stop_flag.is_set():
            try:
                data, sender = sock.recvfrom(65535)
            except socket.timeout:
                continue
            sock.sendto(prefix + data, sender)

    def stop(self) -> None:
        self.stop_flag.set()


if __name__ == "__main__":
    pyse.create(UDPServer, UDPWorker, {
        "supervisor": True,
        "socket_manager": True,
        "worker_type": "process",
        "workers": int(sys.argv[2]) if len(sys.argv) > 2 else 4,
        "bind": "127.0.0.1",
        "port": int(sys.argv[1]) if len(sys.argv) > 1 else 9072,
        "log_level": "info",
    }).run()
