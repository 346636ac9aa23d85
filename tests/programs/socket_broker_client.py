"""A broker client written from the wire protocol in docs/sockets.md alone,
as a program in another language would be: it imports nothing from pyse.

Usage: python socket_broker_client.py REQUEST_JSON
The token comes from $PYSE_SOCKET_MANAGER_TOKEN unless REQUEST_JSON has
one; the broker's path from $PYSE_SOCKET_MANAGER_PATH.  Prints the reply
line, then "inode <st_ino of the received socket>".  Then, for a TCP
socket, accepts one connection and writes "served by <pid>" to it; for a
UDP socket, answers one datagram the same way.
"""
import json
import os
import select
import socket
import sys

request = json.loads(sys.argv[1])
request.setdefault("token", os.environ["PYSE_SOCKET_MANAGER_TOKEN"])
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
conn.settimeout(10)
conn.connect(os.environ["PYSE_SOCKET_MANAGER_PATH"])
conn.sendall(json.dumps(request).encode() + b"\n")
reply, fds = b"", []
while not reply.endswith(b"\n"):
    chunk, got, _, _ = socket.recv_fds(conn, 4096, 1)
    fds += got
    if not chunk:
        break
    reply += chunk
print(reply.decode().strip(), flush=True)
if not fds:
    sys.exit(1)
sock = socket.socket(fileno=fds[0])
print("inode", os.fstat(sock.fileno()).st_ino, flush=True)
answer = b"served by %d" % os.getpid()
select.select([sock], [], [], 10)
if sock.type == socket.SOCK_STREAM:
    client, _ = sock.accept()
    client.sendall(answer)
    client.close()
else:
    _, sender = sock.recvfrom(100)
    sock.sendto(answer, sender)
