"""systemd socket activation: adopting the listening sockets a service
manager passed in, as ``sd_listen_fds_with_names(unset_environment=1)`` does.

The protocol: ``LISTEN_PID`` is the pid they are meant for (another
process's variables, e.g. a parent's that leaked into our environment, are
ignored), ``LISTEN_FDS`` their count, starting at fd 3, and
``LISTEN_FDNAMES`` their names, colon-separated (``FileDescriptorName=``;
systemd's default is the socket unit's name).  The variables are removed
once read, so that no child process mistakes them for its own.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
from dataclasses import dataclass
from typing import MutableMapping, Optional

from pyse.socket_manager_address import SocketAddress, address_of_socket

LISTEN_FDS_START = 3
ACTIVATION_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: the name of a socket when LISTEN_FDNAMES does not give one (systemd's choice)
UNKNOWN_NAME = "unknown"


@dataclass(frozen=True)
class ActivatedSocket:
    """A socket passed in by the service manager."""

    name: str
    address: SocketAddress
    sock: socket.socket


def adopt_activated_sockets(environ: Optional[MutableMapping[str, str]] = None,
                            pid: Optional[int] = None, *, unset: bool = True,
                            logger: Optional[logging.Logger] = None) -> list[ActivatedSocket]:
    """The sockets passed to this process, close-on-exec and non-blocking.

    Returns [] when ``LISTEN_PID`` is missing or names another process.
    An fd that is not a TCP, UDP or unix stream socket (or a stream socket
    that does not listen) is left alone and logged.  With ``unset`` the
    three variables are removed from ``environ`` (os.environ by default)."""
    environ = os.environ if environ is None else environ
    logger = logger or logging.getLogger("pyse.socket_manager")
    pid = os.getpid() if pid is None else pid
    try:
        count = _passed_fd_count(environ, pid, logger)
        given_names = environ.get("LISTEN_FDNAMES")
    finally:
        if unset:
            for key in ACTIVATION_ENV:
                environ.pop(key, None)
    names = given_names.split(":") if given_names is not None and count else []
    if len(names) != count:
        if names:
            logger.warning("Socket activation: LISTEN_FDNAMES has %d names for %d fds; "
                           "ignoring the names", len(names), count)
        names = [UNKNOWN_NAME] * count
    adopted = []
    for offset, name in enumerate(names):
        found = _adopt_fd(LISTEN_FDS_START + offset, name or UNKNOWN_NAME, logger)
        if found is not None:
            adopted.append(found)
    return adopted


def _passed_fd_count(environ: MutableMapping[str, str], pid: int,
                     logger: logging.Logger) -> int:
    listen_pid, listen_fds = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    if listen_pid is None or listen_fds is None:
        return 0
    if not listen_pid.isdigit() or not listen_fds.isdigit():
        logger.warning("Socket activation: ignoring LISTEN_PID=%r LISTEN_FDS=%r "
                       "(expected numbers)", listen_pid, listen_fds)
        return 0
    if int(listen_pid) != pid:
        logger.debug("Socket activation: LISTEN_PID=%s is not this process (%d)", listen_pid, pid)
        return 0
    return int(listen_fds)


def _adopt_fd(fd: int, name: str, logger: logging.Logger) -> Optional[ActivatedSocket]:
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        sock = socket.socket(fileno=fd)
    except OSError as e:
        logger.warning("Socket activation: fd %d (%s) is not a socket: %s", fd, name,
                       e.strerror or e)
        return None
    address = address_of_socket(sock)
    listening = address is not None and (
        address.kind == "udp"
        or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    if address is None or not listening:
        logger.warning("Socket activation: fd %d (%s) is not a listening TCP, UDP or "
                       "unix stream socket; leaving it alone", fd, name)
        sock.detach()   # the fd stays open, and not ours to close
        return None
    sock.setblocking(False)
    logger.info("Socket activation: adopted fd %d (%s) %s", fd, name, address)
    return ActivatedSocket(name, address, sock)
