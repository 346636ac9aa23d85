"""Started the way systemd starts a socket-activated service: sockets from
fd 3 on, LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES set.

Usage: python socket_activated.py REQUESTS_JSON
REQUESTS_JSON is a list of [method, args, kwargs] to call on the socket
manager (e.g. ["listen_tcp", ["127.0.0.1", 8080], {"name": "web"}]).
Prints one JSON object: "env" (the LISTEN_* variables left after the
manager started), "adopted" (name and key of each adopted socket), and
"answers" (per request: the inode of the socket got, or the error).
"""
import json
import os
import sys

from pyse.socket_manager import SocketManagerServer

manager = SocketManagerServer()
answers = []
for method, args, kwargs in json.loads(sys.argv[1]):
    try:
        sock = getattr(manager, method)(*args, **kwargs)
        answers.append({"inode": os.fstat(sock.fileno()).st_ino})
    except (OSError, ValueError) as e:
        answers.append({"error": str(e)})
print(json.dumps({
    "env": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
    "adopted": [[a.name, list(a.address.key)] for a in manager._activated],
    "answers": answers,
}))
manager.close()
