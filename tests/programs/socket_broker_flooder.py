"""Floods the broker at $PYSE_SOCKET_MANAGER_PATH with connections that
each send more garbage than a request may hold, as fast as it can, until
killed.  Prints "flooding" once the first connection was made."""
import os
import socket

path = os.environ["PYSE_SOCKET_MANAGER_PATH"]
junk = os.urandom(8192)
announced = False
while True:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1)
            conn.connect(path)
            if not announced:
                print("flooding", flush=True)
                announced = True
            conn.sendall(junk)
            conn.recv(100)
    except OSError:
        pass  # reset or refused by the broker: expected; go on
