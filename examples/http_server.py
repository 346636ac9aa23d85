"""A prefork HTTP/1.1 server on the socket manager (standard library only).

    python examples/http_server.py [PORT] [WORKERS]      # default 8080 and 4
    curl -i http://127.0.0.1:8080/
    wrk -t2 -c16 -d10s http://127.0.0.1:8080/

With ``socket_manager: true`` pyse opens the socket manager in the top
process, here the supervisor (``supervisor: true``); the server's
before_run() asks it for the listener, and each worker process takes a dup
and serves each connection on a thread of its own, with HTTP/1.1
keep-alive and a Content-Length on every response.  The listening socket
lives in the supervisor, so no restart closes it: connections made while
nobody accepts wait in the kernel's queue, and no client is refused.

- kill -KILL <worker pid>: the server starts a new worker; only the
  requests the dead worker was answering are cut;
- kill -USR1 <supervisor pid>: the workers restart gracefully: each stops
  accepting, answers the requests it has (with "Connection: close") and
  exits;
- kill -KILL <server pid>: its workers notice and finish; the supervisor
  starts a new server, whose workers take the same socket;
- kill -INT <supervisor pid>: a live restart: the old server stops
  gracefully and a new one starts (beside it, if the old one takes longer
  than server_detach_wait).
"""
import http.server
import os
import select
import selectors
import socket
import socketserver
import sys
import threading
from typing import Any, cast

import pyse

#: seconds a keep-alive connection may stay idle
IDLE_TIMEOUT = 15.0
#: at a graceful stop, seconds an idle connection still waits for a request
#: already on its way (a client that just had an answer sends the next one
#: at once); then it is closed
STOP_GRACE = 0.2
#: seconds a stopping worker waits for its connections to finish
DRAIN_TIMEOUT = 10.0


class HTTPServer(pyse.Server):
    def before_run(self) -> None:
        # Asked for before the workers fork, so that they inherit it (and a
        # port in use fails the start, not every worker).
        self.socket_manager.listen_tcp(self.config["bind"], self.config["port"])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive unless the client says otherwise
    timeout = 5                     # seconds to read a request once it has begun
    disable_nagle_algorithm = True  # headers and body leave at once, not 40 ms apart

    def __init__(self, conn: socket.socket, address: Any, worker: "HTTPWorker") -> None:
        self.worker = worker    # first: BaseRequestHandler.__init__ serves the connection
        # Its third argument, "server", is only kept as self.server, which
        # BaseHTTPRequestHandler never reads; the worker plays that part.
        super().__init__(conn, address, cast(socketserver.BaseServer, worker))

    def handle(self) -> None:
        while self.worker.wait_for_request(self.connection):
            self.handle_one_request()
            if self.close_connection:
                break

    def do_GET(self) -> None:
        body = b"Hello from worker %d (pid %d)\n" % (self.worker.worker_id, os.getpid())
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.worker.stopping.is_set():
            self.close_connection = True
        if self.close_connection:    # stopping, or the client asked (or spoke HTTP/1.0)
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        self.worker.logger.debug("%s %s", self.address_string(), format % args)


# A plain class at run time (pyse.WorkerModule; pyse mixes it into
# pyse.Worker), so that a program can also run it without pyse around it.
class HTTPWorker(pyse.WorkerModule):
    def initialize(self) -> None:
        self.stopping = threading.Event()
        self.connections = 0
        self.connections_changed = threading.Condition()

    def run(self) -> None:
        # Client() finds the manager this process inherited, or, in a
        # program a spawn worker started, the one its environment names.
        listener = pyse.SocketManager.Client().listen_tcp(self.config["bind"], self.config["port"])
        # stop() writes to it once and nobody reads it: it stays readable,
        # waking the accept loop and every idle connection.
        self.stop_r, self.stop_w = socket.socketpair()
        if self.stopping.is_set():
            self.stop_w.send(b"x")      # stop() came before the pair existed
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(self.stop_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is listener:
                        self.accept(listener)
        listener.close()
        with self.connections_changed:
            self.connections_changed.wait_for(lambda: self.connections == 0, DRAIN_TIMEOUT)

    def accept(self, listener: socket.socket) -> None:
        try:
            conn, address = listener.accept()
        except BlockingIOError:
            return                      # another worker took it
        with self.connections_changed:
            self.connections += 1
        threading.Thread(target=self.serve, args=(conn, address), daemon=True).start()

    def serve(self, conn: socket.socket, address: Any) -> None:
        try:
            Handler(conn, address, self)
        except OSError as e:
            self.logger.debug("Connection from %s: %s", address, e)
        finally:
            conn.close()
            with self.connections_changed:
                self.connections -= 1
                self.connections_changed.notify_all()

    def wait_for_request(self, conn: socket.socket) -> bool:
        """True once conn has a request to read; False when it stayed idle
        too long, or the worker is stopping and none came within the grace."""
        poller = select.poll()          # not select(): fds may pass 1024
        poller.register(conn, select.POLLIN)
        poller.register(self.stop_r, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(IDLE_TIMEOUT * 1000)}
        if conn.fileno() in ready or not ready:
            return bool(ready)
        poller.unregister(self.stop_r)
        return bool(poller.poll(STOP_GRACE * 1000))

    def stop(self) -> None:
        self.stopping.set()
        stop_w = getattr(self, "stop_w", None)
        if stop_w is not None:
            stop_w.send(b"x")


if __name__ == "__main__":
    pyse.create(HTTPServer, HTTPWorker, {
        "supervisor": True,
        "socket_manager": True,
        "worker_type": "process",
        "workers": int(sys.argv[2]) if len(sys.argv) > 2 else 4,
        "bind": "127.0.0.1",
        "port": int(sys.argv[1]) if len(sys.argv) > 1 else 8080,
        "log_level": "info",
    }).run()
