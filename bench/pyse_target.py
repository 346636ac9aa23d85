"""The pyse side of the benchmark: a process server whose workers report to
the bench (see event_writer.py).

    python bench/pyse_target.py CONFIG.json

CONFIG.json holds pyse configuration keys (the same names ServerEngine
reads, see serverengine_target.rb) plus ``bench_mode``:

- ``normal``: the usual worker; "ready" when run() starts, stop() ends it
  (and the server records "fork" in before_fork());
- ``stubborn``: stop() records "term" and is ignored, QUIT is recorded
  ("quit") and survived, so the server's kill escalation runs to its SIGKILL;
- ``http``: the server listens on 127.0.0.1:``bench_port`` and the workers
  answer every HTTP request with the response gunicorn_app.py gives, one
  request per connection as gunicorn's sync workers do.
"""
import json
import os
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyse  # noqa: E402
from event_writer import EventWriter  # noqa: E402

#: the server's own writer, for "fork" lines from before_fork()
MASTER_EVENTS = None
#: what gunicorn_app.py answers (gunicorn adds Server and Date headers)
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
            b"Connection: close\r\n\r\nAwesome work!\n")


def listen(host, port):
    """The listening socket the HTTP workers share: the socket manager's
    (``socket_manager: true``, set by load_config in http mode), which the
    server holds, so it stays open while workers die."""
    return pyse.SocketManager.Client().listen_tcp(host, port)


class HttpServer:
    def before_run(self):
        self.listener = listen("127.0.0.1", self.config["bench_port"])


class BenchWorker:
    def before_fork(self):
        # Runs in the server just before each fork: splits a respawn into the
        # server's reaction and the new worker's start-up.
        global MASTER_EVENTS
        if MASTER_EVENTS is None:
            MASTER_EVENTS = EventWriter()
        MASTER_EVENTS.record("fork")

    def initialize(self):
        self.flag = pyse.BlockingFlag()
        self.mode = self.config.get("bench_mode")

    def run(self):
        self.events = EventWriter()
        if self.mode == "stubborn":
            # run() is on the main thread, the only one with QUIT unblocked in
            # a pyse worker, so the handler interrupts the wait below at once.
            signal.signal(signal.SIGQUIT, lambda signo, frame: self.events.record("quit"))
        self.events.record("ready")
        if self.mode == "http":
            self.serve_http(self.server.listener)
            return
        while not self.flag.wait_for_set(1.0):
            pass

    def serve_http(self, listener):
        # The timeout lets stop() be noticed between connections.
        listener.settimeout(0.5)
        while not self.flag.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            with conn:
                try:
                    answer(conn)
                except (ConnectionError, socket.timeout):
                    # The client gave up on this connection (wrk does at the
                    # end of its run): nothing is left to answer.
                    continue

    def stop(self):
        self.events.record("term")
        if self.mode != "stubborn":
            self.flag.set()


def answer(conn):
    """Reads one request (up to its blank line) and sends the response."""
    conn.settimeout(5.0)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(65536)
        if not chunk:
            return
        request += chunk
    conn.sendall(RESPONSE)


def load_config():
    with open(sys.argv[1]) as f:
        config = json.load(f)
    return {"socket_manager": config.get("bench_mode") == "http", **config}


if __name__ == "__main__":
    mode = load_config().get("bench_mode")
    pyse.create(HttpServer if mode == "http" else None, BenchWorker, load_config).run()
