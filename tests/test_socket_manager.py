"""The socket manager's table: one socket per exact address, the same
socket every time, TCP/UDP over IPv4 and IPv6, unix sockets, and the
inherited table of a forked child."""
from __future__ import annotations

import errno
import os
import socket
import stat

import pytest

import pyse
from pyse import config as config_mod
from pyse.socket_manager import SocketManagerServer
from pyse.socket_manager_address import inet_address, unix_address
from socket_manager_harness import (accept_one, driven_manager, has_ipv6_loopback,
                                    same_open_socket, wait_readable)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def manager():
    with SocketManagerServer(activation=False) as m:
        yield m


def test_the_same_address_gives_the_same_socket_every_time(manager):
    first = manager.listen_tcp("127.0.0.1", 0)
    port = first.getsockname()[1]
    again = manager.listen_tcp("127.0.0.1", port)
    from_client = pyse.SocketManager.Client(manager.path).listen_tcp("127.0.0.1", port)
    assert len({first.fileno(), again.fileno(), from_client.fileno()}) == 3  # each its own dup
    assert same_open_socket(first, again) and same_open_socket(first, from_client)
    assert list(manager.sockets()) == [("tcp", "127.0.0.1", port)]
    # A connection made to the address is seen by accept() on any dup.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        with accept_one(again) as server_side:
            server_side.sendall(b"hi")
            assert c.recv(2) == b"hi"
    # Closing a dup leaves the manager's socket listening.
    first.close()
    again.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        accept_one(from_client).close()


def test_127_0_0_1_and_0_0_0_0_are_different_keys(manager):
    local = manager.listen_tcp("127.0.0.1", 0)
    port = local.getsockname()[1]
    # ServerEngine would hand back the 127.0.0.1 socket here.  Without
    # SO_REUSEPORT the kernel refuses a second listener on the port.
    with pytest.raises(OSError) as caught:
        manager.listen_tcp("0.0.0.0", port)
    assert caught.value.errno == errno.EADDRINUSE
    assert "tcp 0.0.0.0:%d" % port in str(caught.value)
    assert list(manager.sockets()) == [("tcp", "127.0.0.1", port)]


def test_with_reuseport_each_exact_address_is_its_own_socket():
    with SocketManagerServer(activation=False, reuseport=True) as m:
        local = m.listen_tcp("127.0.0.1", 0)
        port = local.getsockname()[1]
        wildcard = m.listen_tcp("0.0.0.0", port)
        other = m.listen_tcp("127.0.0.2", port)
        assert wildcard.getsockname() == ("0.0.0.0", port)
        assert other.getsockname() == ("127.0.0.2", port)
        assert not same_open_socket(local, wildcard) and not same_open_socket(local, other)
        assert sorted(m.sockets()) == [("tcp", "0.0.0.0", port), ("tcp", "127.0.0.1", port),
                                       ("tcp", "127.0.0.2", port)]
        for sock in (local, wildcard, other):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        # 127.0.0.2 traffic goes to its own socket.
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            accept_one(other).close()


def test_names_resolve_to_the_numeric_key(manager):
    sock = manager.listen_tcp("localhost", 0)
    host, port = sock.getsockname()[:2]
    assert host in ("127.0.0.1", "::1")
    assert same_open_socket(sock, manager.listen_tcp(host, port))
    # "" is every IPv4 address, as in Python's socket API.
    assert inet_address("tcp", "", 80).key == ("tcp", "0.0.0.0", 80)


def test_port_zero_binds_a_new_socket_each_time(manager):
    a = manager.listen_tcp("127.0.0.1", 0)
    b = manager.listen_tcp("127.0.0.1", 0)
    assert a.getsockname()[1] != b.getsockname()[1]
    assert len(manager.sockets()) == 2


def test_ipv6_tcp_and_udp(manager):
    why = has_ipv6_loopback()
    if why:
        pytest.skip(why)
    tcp = manager.listen_tcp("::1", 0)
    port = tcp.getsockname()[1]
    assert tcp.family == socket.AF_INET6
    assert tcp.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    # Another spelling of the same address is the same key.
    assert same_open_socket(tcp, manager.listen_tcp("0:0:0:0:0:0:0:1", port))
    with socket.create_connection(("::1", port), timeout=5):
        accept_one(tcp).close()
    udp = manager.listen_udp("::1", 0)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"ping6", udp.getsockname())
        assert wait_readable(udp, 5)
        assert udp.recv(10) == b"ping6"
    assert ("udp", "::1", udp.getsockname()[1]) in manager.sockets()


def udp_and_tcp_on_one_port(manager) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on one port number that another program on
    this machine may hold in one protocol: a few tries."""
    for _ in range(20):
        udp = manager.listen_udp("127.0.0.1", 0)
        try:
            return udp, manager.listen_tcp("127.0.0.1", udp.getsockname()[1])
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("no port free for both UDP and TCP in 20 tries")


def test_udp_socket_is_shared(manager):
    udp, tcp = udp_and_tcp_on_one_port(manager)
    port = udp.getsockname()[1]
    again = manager.listen_udp("127.0.0.1", port)
    assert same_open_socket(udp, again)
    assert udp.type == socket.SOCK_DGRAM
    # A UDP socket and a TCP socket on the same port are two keys.
    assert tcp.type == socket.SOCK_STREAM and not same_open_socket(tcp, udp)
    assert ("tcp", "127.0.0.1", port) in manager.sockets()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"ping", ("127.0.0.1", port))
        assert wait_readable(again, 5)
        assert udp.recvfrom(10)[0] == b"ping"


def test_sockets_are_non_blocking(manager):
    sock = manager.listen_tcp("127.0.0.1", 0)
    assert sock.gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        sock.accept()


def test_unix_socket_by_path(manager, tmp_path, monkeypatch):
    path = tmp_path / "app.sock"
    sock = manager.listen_unix(str(path))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    monkeypatch.chdir(tmp_path)  # a relative path means the same file
    assert same_open_socket(sock, manager.listen_unix("app.sock"))
    assert list(manager.sockets()) == [("unix", str(path))]
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(str(path))
        accept_one(sock).close()
    manager.close()
    assert not path.exists(), "the owner removes the unix sockets it bound"


def test_unix_socket_replaces_a_stale_file_but_not_a_live_one(manager, tmp_path):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))     # bound, never listened: connect is refused
    manager.listen_unix(str(stale))
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(live))
        other.listen(1)
        with pytest.raises(OSError) as caught:
            manager.listen_unix(str(live))
        assert caught.value.errno == errno.EADDRINUSE
    regular = tmp_path / "file"
    regular.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        manager.listen_unix(str(regular))
    assert regular.read_text() == "not a socket"


@pytest.mark.parametrize("call, message", [
    (lambda m: m.listen_tcp("127.0.0.1", 70000), "port: got 70000"),
    (lambda m: m.listen_tcp("127.0.0.1", True), "port: got True"),
    (lambda m: m.listen_udp(None, 80), "bind: got None"),
    (lambda m: m.listen_unix(""), "path: got ''"),
    (lambda m: m.listen_unix("/" + "x" * 200), "longer than the 107 bytes"),
    (lambda m: pyse.SocketManager.Client(m.path).listen("sctp", "127.0.0.1", 1), "kind: got 'sctp'"),
])
def test_bad_arguments_name_what_was_expected(manager, call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call(manager)


def test_binding_errors_name_the_address(manager):
    with pytest.raises(OSError, match=r"resolving the bind address 'no-such-host\.invalid'"):
        manager.listen_tcp("no-such-host.invalid", 80)
    assert unix_address("/a/b").key == ("unix", "/a/b")


def test_close_closes_the_sockets_and_removes_the_broker_files():
    m = SocketManagerServer(activation=False)
    sock = m.listen_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    broker_dir = os.path.dirname(m.path)
    assert stat.S_IMODE(os.stat(broker_dir).st_mode) == 0o700
    m.close()
    assert not os.path.exists(broker_dir)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_config_keys_set_up_the_manager(tmp_path):
    config = config_mod.validate({"socket_reuseport": True, "socket_backlog": 7,
                                  "socket_manager_dir": str(tmp_path),
                                  "socket_manager_timeout": 1.5, "socket_activation": False})
    with SocketManagerServer.from_config(config) as m:
        assert m.path.startswith(str(tmp_path) + "/pyse-sockets-")
        assert (m.reuseport, m.backlog, m.broker.timeout) == (True, 7, 1.5)
        assert m.listen_udp("127.0.0.1", 0).getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    with pytest.raises(pyse.ConfigError, match="socket_manager_timeout"):
        config_mod.validate({"socket_manager_timeout": 0})


def test_the_namespace_is_serverengines():
    assert pyse.SocketManager.Server is SocketManagerServer
    assert pyse.SocketManager.PATH_ENV == "PYSE_SOCKET_MANAGER_PATH"
    with pytest.raises(TypeError, match="namespace"):
        pyse.SocketManager()


def fork_and_report(work) -> bytes:
    """Runs work() in a forked child; returns what it wrote to the pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, work())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def test_a_forked_child_takes_inherited_sockets_without_asking(manager):
    sock = manager.listen_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    broker_inode = os.fstat(manager.broker.listener.fileno()).st_ino

    def in_child() -> bytes:
        # Nobody serves the broker in this test: a round trip would time out.
        got = pyse.SocketManager.Client(timeout=0.5).listen_tcp("127.0.0.1", port)
        broker_closed = all(os.stat(f"/proc/self/fd/{fd}").st_ino != broker_inode
                            for fd in map(int, os.listdir("/proc/self/fd"))
                            if os.path.exists(f"/proc/self/fd/{fd}"))
        return b"%d %d" % (os.fstat(got.fileno()).st_ino, broker_closed)

    inode, broker_closed = fork_and_report(in_child).split()
    assert int(inode) == os.fstat(sock.fileno()).st_ino
    assert broker_closed == b"1", "a forked child must not hold the broker's fds"


def test_a_forked_child_asks_the_owner_for_a_new_socket(tmp_path):
    path = str(tmp_path / "late.sock")
    with driven_manager() as m:
        def in_child() -> bytes:
            got = pyse.SocketManager.Client(timeout=5).listen_unix(path)
            return b"%d" % os.fstat(got.fileno()).st_ino

        inode = int(fork_and_report(in_child))
        # The owner bound it, and holds it after the child is gone.
        held = m.sockets()[("unix", path)]
        assert os.fstat(held.fileno()).st_ino == inode
        with socket.socket(socket.AF_UNIX) as c:
            c.connect(path)
