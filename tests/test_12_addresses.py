"""Lesson 12: names and addresses, IPv6 and dual stack, Unix domain sockets, socketpair.

Everything stays on this machine: 127.0.0.1, ::1 and Unix sockets. The only
other address touched is in outgoing_address()'s UDP connect(), which sends
no packet. Where this machine lacks a feature, a test skips with the words
the lesson itself uses.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import stat
import sys
import tempfile
import threading

import pytest

from lessons.kit import adversary
from lessons.kit.child import Child
from lessons.kit.unixpeers import crash_a_server, permission_experiment
from lessons.kit.echo import echo
from lessons.kit.families import (HAVE_ABSTRACT, HAVE_PEERCRED, HAVE_UNIX, NO_ABSTRACT, NO_DUALSTACK,
                                  NO_IPV6, NO_OTHER_USER, NO_PEERCRED, NO_UNIX, address_kind,
                                  free_on_both_loopbacks, from_loopback, have_ipv6, knock, peer_kind)
from lessons.kit.server import running_on
from lessons.kit.transcript import ACCEPT, CLOSE, SERVER, Transcript
from tests.conftest import lesson

addresses = lesson("12_addresses")

needs_ipv6 = pytest.mark.skipif(not have_ipv6(), reason=NO_IPV6)
needs_dualstack = pytest.mark.skipif(not (have_ipv6() and socket.has_dualstack_ipv6()), reason=NO_DUALSTACK)
needs_unix = pytest.mark.skipif(not HAVE_UNIX, reason=NO_UNIX)
needs_abstract = pytest.mark.skipif(not HAVE_ABSTRACT, reason=NO_ABSTRACT)
needs_peercred = pytest.mark.skipif(not HAVE_PEERCRED, reason=NO_PEERCRED)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's behaviour")


@pytest.fixture
def sockdir():
    """A short private directory for socket files (a Unix socket path has room for about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="l12-") as directory:
        yield directory


# --- The echo contract, over every kind of address. ---

@contextlib.contextmanager
def echo_server(kind: str, directory: str, log: Transcript | None = None):
    """The lesson's server on IPv4, IPv6 or a Unix path; yields (talk, connect)."""
    if kind == "unix":
        path = os.path.join(directory, "echo.sock")
        with addresses.serving_unix(path, log):
            def connect():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(path)
                return sock
            yield (lambda message: addresses.unix_echo(path, message)), connect
    else:
        host = {"ipv4": "127.0.0.1", "ipv6": "::1"}[kind]
        with running_on(addresses.listen_tcp(host), addresses.serve, log) as server:
            yield (lambda message: echo(server.address, message)), \
                (lambda: socket.create_connection(server.address, timeout=5))


KINDS = ["ipv4", pytest.param("ipv6", marks=needs_ipv6), pytest.param("unix", marks=needs_unix)]
SEEN = {"ipv4": "over IPv4", "ipv6": "over IPv6", "unix": "over a Unix socket"}


@pytest.mark.parametrize("kind", KINDS)
def test_the_echo_contract(kind, sockdir):
    log = Transcript()
    with echo_server(kind, sockdir, log) as (talk, connect):
        assert talk(b"hello") == b"hello"
        assert talk(b"") == b""
        big = adversary.flood_pattern(4 * 1024 * 1024)
        assert talk(big) == big
        # A client that says nothing holds no one up: a thread per client.
        with connect() as silent:
            assert talk(b"past a silent client") == b"past a silent client"
            silent.sendall(b"late")
            silent.shutdown(socket.SHUT_WR)
            assert adversary.recv_until_eof(silent) == b"late"
        # One byte at a time; a client that leaves without reading its echo; five clients at once.
        with connect() as slow:
            for byte in b"dribbled":
                slow.sendall(bytes([byte]))
            slow.shutdown(socket.SHUT_WR)
            assert adversary.recv_until_eof(slow) == b"dribbled"
        with connect() as rude:
            rude.sendall(b"x" * 200_000)
        replies: dict = {}
        threads = [threading.Thread(target=lambda i=i: replies.__setitem__(i, talk(b"client %d" % i)))
                   for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert replies == {i: b"client %d" % i for i in range(5)}
    # The transcript says how each client came, and never from where.
    assert {e.detail for e in log.events(SERVER) if e.kind == ACCEPT} == {SEEN[kind]}


# --- Names. ---

def test_names_and_the_tutorials_localhost():
    assert addresses.resolve("127.0.0.1") == [("IPv4", "127.0.0.1")]
    assert addresses.resolve("::1") == [("IPv6", "::1")]
    found = addresses.resolve("localhost", 80)
    assert found and all(from_loopback(socket.AF_INET6 if f == "IPv6" else socket.AF_INET, (a, 80))
                         for f, a in found)
    # The tutorial's AF_INET socket turns 'localhost' into 127.0.0.1, whatever else it means here.
    with addresses.tutorial_listener() as listener:
        assert listener.family == socket.AF_INET and listener.getsockname()[0] == "127.0.0.1"
    with running_on(addresses.listen_tcp("127.0.0.1"), addresses.serve) as server:
        assert addresses.tutorial_client(server.port) == "Received: Hello, Server!"


@needs_ipv6
@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0"])
def test_a_loopback_server_holds_its_port_on_the_other_family_while_it_lives(host):
    other, family = ("127.0.0.1", socket.AF_INET) if ":" in host else ("::1", socket.AF_INET6)
    listener = addresses.listen_tcp(host)
    port = listener.getsockname()[1]
    with listener:
        with pytest.raises(ConnectionRefusedError):          # bound there, never listening
            socket.create_connection((other, port), timeout=2)
        with socket.socket(family) as squatter, pytest.raises(OSError):
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((other, port))                     # nobody else gets that number
    del listener
    gc.collect()                                             # the listener gone: so is the hold
    with socket.socket(family) as later:
        later.bind((other, port))


@needs_ipv6
def test_a_port_taken_on_ipv6_is_skipped(monkeypatch):
    # Port 0 picked an IPv4 number that something holds on ::1: another number is tried.
    tried = []

    class Probe(socket.socket):
        def bind(self, address):
            if self.family == socket.AF_INET6 and address[1]:
                tried.append(address[1])
                if len(tried) == 1:
                    raise OSError(98, "Address already in use")
            return super().bind(address)

    monkeypatch.setattr(socket, "socket", Probe)
    port, guard = free_on_both_loopbacks("127.0.0.1")
    monkeypatch.undo()
    with guard:
        assert len(tried) == 2 and port == tried[1] and guard.getsockname()[:2] == ("::1", port)


@needs_ipv6
def test_localhost_against_an_ipv6_only_server():
    with running_on(addresses.listen_tcp("::1"), addresses.serve) as server:
        with pytest.raises(ConnectionRefusedError):         # the tutorial's IPv4 socket never tries ::1
            addresses.tutorial_client(server.port)
        # create_connection() tries every address: it reaches this server exactly when
        # localhost resolves to ::1 here (macOS: yes; Debian's /etc/hosts: maybe not).
        try:
            socket.create_connection(("localhost", server.port), timeout=2).close()
            connected = True
        except ConnectionRefusedError:
            connected = False
    assert connected == (("IPv6", "::1") in addresses.resolve("localhost"))


def test_a_client_walks_the_list_and_keeps_only_the_last_error():
    tcp = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
    with running_on(addresses.listen_tcp("127.0.0.1"), addresses.serve) as server:
        closed = adversary.closed_port()
        log = Transcript()
        with addresses.connect_in_order([(*tcp, closed), (*tcp, server.address)], log=log) as sock:
            assert sock.getpeername() == server.address
    assert [e.detail for e in log.events()] == ["address 1 (IPv4): ConnectionRefusedError (ECONNREFUSED)",
                                                "address 2 (IPv4): connected"]
    log = Transcript()
    with pytest.raises(ConnectionRefusedError):
        addresses.connect_in_order([(*tcp, adversary.closed_port()), (*tcp, adversary.closed_port())], log=log)
    assert len(log.events()) == 2          # two errors happened; one was raised
    with pytest.raises(OSError, match="no addresses"):
        addresses.connect_in_order([])


# --- Which address to bind. ---

def test_listen_tcp_refuses_an_empty_host_and_takes_a_names_first_address():
    with pytest.raises(ValueError, match="empty host"):
        addresses.listen_tcp("")
    first_family, first_address = addresses.resolve("localhost")[0]
    with addresses.listen_tcp("localhost") as listener:
        assert listener.getsockname()[0] == first_address


@needs_ipv6
def test_what_each_bind_address_lets_in():
    with addresses.listen_tcp("127.0.0.1") as v4:
        outcome = knock(v4)
        assert outcome["127.0.0.1"] == "connected" and "ECONNREFUSED" in outcome["::1"]
    with addresses.listen_tcp("::1") as v6:
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        outcome = knock(v6)
        assert "ECONNREFUSED" in outcome["127.0.0.1"] and outcome["::1"] == "connected"


@needs_dualstack
def test_dual_stack_is_reached_by_both_families():
    with addresses.listen_tcp("::") as both:
        assert both.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert knock(both) == {"127.0.0.1": "connected, seen as ::ffff:127.0.0.1", "::1": "connected"}
    with socket.create_server(("::", 0), family=socket.AF_INET6) as v6only:   # IPV6_V6ONLY on
        outcome = knock(v6only)
        assert "ECONNREFUSED" in outcome["127.0.0.1"] and outcome["::1"] == "connected"


@needs_dualstack
def test_the_dual_stack_server_logs_each_family_and_serves_both():
    log = Transcript()
    serve = lambda listener, stop, log: addresses.serve(listener, stop, log, loopback_only=True)   # noqa: E731
    with running_on(addresses.listen_tcp("::"), serve, log) as server:
        assert echo(("127.0.0.1", server.port), b"four") == b"four"
        assert echo(("::1", server.port), b"six") == b"six"
        assert log.wait_for_event(SERVER, CLOSE, count=2)
    kinds = sorted(e.detail for e in log.events(SERVER) if e.kind == ACCEPT)
    assert kinds == ["over IPv4, mapped into IPv6", "over IPv6"]


def test_what_an_address_says_about_itself():
    assert peer_kind(socket.AF_INET6, ("::ffff:127.0.0.1", 1, 0, 0)) == "IPv4, mapped into IPv6"
    assert peer_kind(socket.AF_INET6, ("fe80::1%lo", 1, 0, 1)) == "IPv6"
    assert from_loopback(socket.AF_INET6, ("::ffff:127.0.0.1", 1, 0, 0))
    assert from_loopback(socket.AF_INET, ("127.0.0.5", 1))
    assert not from_loopback(socket.AF_INET, ("192.0.2.7", 1))
    assert not from_loopback(socket.AF_INET6, ("::ffff:192.0.2.7", 1, 0, 0))
    kinds = {None: "none", "127.0.0.1": "loopback", "::1": "loopback", "169.254.1.1": "link-local",
             "fe80::1%eth0": "link-local", "192.168.1.20": "private", "10.1.2.3": "private",
             "fd00::2": "private", "100.64.0.1": "shared", "8.8.8.8": "public", "2606:4700::1111": "public"}
    assert {address: address_kind(address).split(" ")[0].rstrip(":") for address in kinds} == kinds
    assert "NAT" in address_kind("10.1.2.3") and "NAT" not in address_kind("fd00::2")   # IPv6: no NAT


def test_the_outgoing_address():
    # connect() on UDP sends no packet: it only asks the kernel which route and source it would use.
    assert addresses.outgoing_address(destination=("127.0.0.1", 9)) == "127.0.0.1"
    if have_ipv6():
        assert addresses.outgoing_address(socket.AF_INET6, ("::1", 9)) == "::1"
    if sys.platform.startswith("linux"):   # connect() to broadcast without SO_BROADCAST: EACCES
        assert addresses.outgoing_address(destination=("255.255.255.255", 9)) is None
    found = addresses.outgoing_address()
    assert found is None or not address_kind(found).startswith("loopback")


# --- Unix domain sockets. ---

@needs_unix
def test_a_stale_socket_file_after_a_crash_is_removed_safely(sockdir):
    path = os.path.join(sockdir, "crash.sock")
    assert crash_a_server(path) == -signal.SIGKILL
    assert stat.S_ISSOCK(os.lstat(path).st_mode)            # the file outlived its server
    with pytest.raises(ConnectionRefusedError):
        addresses.unix_echo(path, b"anyone?")
    with socket.socket(socket.AF_UNIX) as naive, pytest.raises(OSError) as taken:
        naive.bind(path)                                     # what a restart without the check meets
    assert "in use" in str(taken.value).lower()
    with addresses.serving_unix(path, mode=0o600):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert addresses.unix_echo(path, b"back") == b"back"
    assert not os.path.exists(path)                          # a clean stop removes its own file


@needs_unix
def test_what_is_never_removed(sockdir):
    path = os.path.join(sockdir, "live.sock")
    with addresses.serving_unix(path):                       # a live server's file
        with pytest.raises(FileExistsError, match="a server is listening there"):
            addresses.listen_unix(path)
        assert addresses.unix_echo(path, b"still mine") == b"still mine"
    notes = os.path.join(sockdir, "notes.txt")                # something that is not a socket
    with open(notes, "w") as f:
        f.write("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        addresses.listen_unix(notes)
    with open(notes) as f:
        assert f.read() == "precious"
    addresses.listen_unix(path).close()                      # a server stops, a second takes the path,
    with addresses.serving_unix(path):
        addresses.release_unix(path)                         # and the first one's late cleanup spares it
        assert addresses.unix_echo(path, b"second") == b"second"


@needs_unix
@linux_only
def test_a_busy_server_is_not_taken_for_a_dead_one(sockdir):
    # With its queue full, connect() fails with EAGAIN, not ECONNREFUSED: a server is there.
    path = os.path.join(sockdir, "busy.sock")
    with socket.socket(socket.AF_UNIX) as busy, contextlib.ExitStack() as waiting:
        busy.bind(path)
        busy.listen(0)
        for _ in range(4):
            client = waiting.enter_context(socket.socket(socket.AF_UNIX))
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(path)
        with pytest.raises(FileExistsError, match="EAGAIN"):
            addresses.clear_stale(path)
    assert os.path.exists(path)


@needs_unix
def test_permissions_refuse_a_client(sockdir):
    outcome = permission_experiment(sockdir)
    if outcome is None:
        pytest.skip(NO_OTHER_USER)
    assert outcome == {"socket writable, directory searchable": "connected",
                       "socket file not writable": "PermissionError (EACCES)",
                       "directory not searchable": "PermissionError (EACCES)"}


@needs_unix
def test_the_kernel_tells_the_server_who_connected(sockdir):
    path = os.path.join(sockdir, "cred.sock")
    with addresses.listen_unix(path) as listener, socket.socket(socket.AF_UNIX) as client:
        listener.settimeout(2)
        client.connect(path)
        conn, _ = listener.accept()
        with conn:
            creds = addresses.peer_credentials(conn)
    os.unlink(path)
    if not HAVE_PEERCRED:
        assert creds is None
        pytest.skip(NO_PEERCRED)
    assert creds == (os.getpid(), os.getuid(), os.getgid())


@needs_abstract
def test_the_abstract_namespace_has_no_file_and_no_stale_problem():
    name = f"@lesson12-test-{os.getpid()}"
    for _ in range(2):                          # the name is free again the moment its socket closes
        with addresses.serving_unix(name) as server:
            assert server.address == b"\0" + name[1:].encode()
            assert addresses.unix_echo(server.address, b"no file") == b"no file"
    assert not os.path.exists(name)


def test_socketpair_between_two_threads_and_with_a_child():
    log = Transcript()
    assert addresses.socketpair_threads(b"pair", log) == b"pair"
    assert [e.kind for e in log.events(SERVER)] == ["recv", "send", "eof"]
    if not HAVE_UNIX:
        pytest.skip(NO_UNIX)
    assert addresses.socketpair_child(b"from the parent") == b"FROM THE PARENT"


# --- The command line. ---

def served(*args: str) -> Child:
    """`python -m lessons.12_addresses serve ARGS` in a child process: its first line, then signals."""
    return Child(["-m", "lessons.12_addresses", "serve", *args], timeout=15)


@needs_ipv6
def test_serve_and_client_on_an_ipv6_literal(capsys):
    with served("--host", "::1", "--port", "0") as server:
        port = server.expect("listening on [::1]:").rsplit(":", 1)[1]
        assert addresses.main(["client", "--host", "::1", "--port", port, "over six"]) == 0
        assert addresses.main(["client", "--host", "[::1]", "--port", port, "brackets too"]) == 0
        assert capsys.readouterr().out == "over six\nbrackets too\n"
        server.signal(signal.SIGTERM)
        assert server.wait() == 0 and "Traceback" not in server.stderr()


@needs_unix
def test_serve_and_client_on_a_unix_path(sockdir, capsys):
    path = os.path.join(sockdir, "cli.sock")
    with served("--unix", path) as server:
        assert server.expect("listening on") == f"listening on unix:{path}"
        assert addresses.main(["client", "--unix", path, "over a path"]) == 0
        assert capsys.readouterr().out == "over a path\n"
        assert addresses.main(["serve", "--unix", path]) == 1     # fails before serving: in-process is fine
        assert "a server is listening there" in capsys.readouterr().err
        server.signal(signal.SIGINT)
        assert server.wait() == 0 and "Traceback" not in server.stderr()
    assert not os.path.exists(path)
    assert addresses.main(["client", "--unix", path, "anyone?"]) == 1
    assert "no such socket file" in capsys.readouterr().err


@needs_unix
def test_serve_in_a_directory_that_does_not_exist_says_so(sockdir, capsys):
    assert addresses.main(["serve", "--unix", os.path.join(sockdir, "no-such-dir", "x.sock")]) == 1
    assert "no such directory" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_serve_in_a_directory_that_cannot_hold_a_socket_says_so_not_that_it_is_missing(capsys):
    assert addresses.main(["serve", "--unix", "/proc/x.sock"]) == 1   # bind() says ENOENT there
    err = capsys.readouterr().err
    assert "/proc cannot hold a socket file" in err and "no such directory" not in err


def test_a_flood_of_connections_is_turned_away_past_the_limit_and_the_rest_are_served(monkeypatch):
    monkeypatch.setattr(addresses, "MAX_CLIENTS", 3)
    log = Transcript()
    with running_on(addresses.listen_tcp("127.0.0.1"), addresses.serve, log) as server, \
            contextlib.ExitStack() as held:
        crowd = [held.enter_context(socket.create_connection(server.address, timeout=5)) for _ in range(5)]
        assert log.wait_for(lambda events: sum(e.kind in ("accept", "error") for e in events) == 5)
        for sock in crowd[3:]:                 # one thread each for the first three; the rest are closed
            assert sock.recv(10) == b""
        with socket.create_connection(server.address, timeout=5) as late:
            assert late.recv(10) == b""         # still full: turned away too
        crowd[0].close()                        # a place frees up...
        assert log.wait_for_event(SERVER, CLOSE)
        assert echo(server.address, b"my turn") == b"my turn"          # ...and the next client gets it


def test_a_handler_that_fails_costs_its_client_only():
    from lessons.kit.threaded import serve_threads

    def fussy(conn, log, who):                  # a bug on the first client's input, not a network error
        if conn.recv(10) == b"boom":
            raise ValueError("cannot parse")
        conn.sendall(b"ok")

    log = Transcript()
    with running_on(addresses.listen_tcp("127.0.0.1"), lambda l, s, g: serve_threads(l, s, g, fussy), log) as srv:
        for message, reply in ((b"boom", b""), (b"fine", b"ok")):
            with socket.create_connection(srv.address, timeout=5) as sock:
                sock.sendall(message)
                assert sock.recv(10) == reply
    errors = [e.detail for e in log.events(SERVER) if e.kind == "error"]
    assert errors == ["the handler failed: ValueError: cannot parse"]


BAD_ARGUMENTS = [
    (["serve", "--host", ""], "empty host"),
    (["client", "--host", " ", "hi"], "empty host"),
    (["serve", "--unix", "/tmp/x.sock", "--port", "1"], "a Unix socket has a path, not a port"),
    (["serve", "--unix", "/tmp/x.sock", "--host", "::1"], "not allowed with argument"),
    (["client", "--timeout", "inf", "hi"], "at most 3600 seconds"),
    (["client", "--timeout", "nan", "hi"], "at most 3600 seconds"),
    (["client", "--port", "0", "hi"], "a client needs the server's port"),
    (["serve", "--port", "70000"], "port must be between 0 and 65535"),
]


def test_bad_arguments_get_one_clear_line(capsys):
    for args, message in BAD_ARGUMENTS:      # argparse's exit, in this process: fast, and the same code
        with pytest.raises(SystemExit) as exited:
            addresses.main(args)
        err = capsys.readouterr().err
        assert exited.value.code == 2 and message in err and "Traceback" not in err, (args, err)


def test_the_demo_passes_and_prints_no_address(capsys):
    assert addresses.demo() == 0             # in this process: tests/test_cli.py runs --help as a learner would
    out = capsys.readouterr().out
    assert "✓" in out and "✗" not in out
    assert "127.0.0.1" not in out and "/tmp" not in out
