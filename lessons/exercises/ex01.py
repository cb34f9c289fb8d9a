"""Lesson 01 exercises: fetch_greeting (read the whole line, handle the errors) and make_listener.

Besides the tutorial's way (``naive_*``), each check is proven to fail on a
tempting wrong answer (``WRONG_ANSWERS``): one recv() taken as the whole
greeting, and SO_REUSEPORT where SO_REUSEADDR belongs.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import socket

from lessons.exercises import Exercise
from lessons.kit.adversary import closed_port, silent_server
from lessons.kit.check import Outcome, check, describe, expect_value, scenario
from lessons.kit.server import accept_until, running

basics = importlib.import_module("lessons.01_basics")
HELLO = basics.GREETING.decode().strip()
PIECES = (basics.GREETING[:5], basics.GREETING[5:16], basics.GREETING[16:])   # b'hello', ...


# The tutorial's client (客户端代码示例) with nothing to send: connect, one recv(1024).
# (Only the `with` is ours, so that the checks leak no sockets; and the address.)
def naive_fetch_greeting(host: str, port: int, timeout: float = 1.0) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client_socket:
        client_socket.connect((host, port))
        response = client_socket.recv(1024)
        return response.decode().strip()


# The tutorial's server's first lines (服务器端代码示例): socket, bind, listen(5).
def naive_make_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server_socket.bind((host, port))
        server_socket.listen(5)
    except OSError:   # (ours) close it, so that the checks leak no sockets
        server_socket.close()
        raise
    return server_socket


# Tempting wrong answers, each of which one scenario must catch.
def one_recv_fetch_greeting(host: str, port: int, timeout: float = 1.0) -> str:
    """Timeout and errors handled, but one recv() taken as the whole greeting."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.recv(1024).decode().strip()
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"


def reuseport_make_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    """SO_REUSEPORT where SO_REUSEADDR belongs: restarts work, and so does a second live server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


WRONG_ANSWERS = [("fetch_greeting", one_recv_fetch_greeting)]
if hasattr(socket, "SO_REUSEPORT"):   # Linux, macOS, the BSDs; not Windows
    WRONG_ANSWERS.append(("make_listener", reuseport_make_listener))


def greet_in_pieces(listener, stop, log):
    """A server that sends its greeting in three pieces, 50 ms apart, as a slow link would."""
    for conn, _ in accept_until(listener, stop):
        with conn, contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # each piece leaves at once
            for piece in PIECES:
                conn.sendall(piece)
                stop.wait(0.05)


@scenario("fetch_greeting(host, port, timeout=0.5)", repr(HELLO))
def _greeting(fn, guard):
    with running(basics.serve) as server:
        return expect_value("fetch_greeting(host, port, timeout=0.5)", HELLO,
                            lambda: fn(*server.address, timeout=0.5))


@scenario("fetch_greeting(host, port, timeout=0.5)", repr(HELLO))
def _pieces(fn, guard):
    with running(greet_in_pieces) as server:
        return expect_value(_pieces.call, HELLO, lambda: fn(*server.address, timeout=0.5))


@scenario("fetch_greeting(host, closed_port, timeout=0.5)", "'refused'")
def _refused(fn, guard):
    host, port = closed_port()
    return expect_value("fetch_greeting(host, closed_port, timeout=0.5)", "refused",
                        lambda: fn(host, port, timeout=0.5))


@scenario("fetch_greeting(host, silent_port, timeout=0.5)", "'timeout'")
def _silent(fn, guard):
    # The silent server hangs up after 1 s, so code with no timeout ends too.
    with silent_server(hold=1.0) as (host, port):
        return expect_value("fetch_greeting(host, silent_port, timeout=0.5)", "timeout",
                            lambda: fn(host, port, timeout=0.5))


def check_fetch_greeting(fn):
    return check("fetch_greeting", fn, {
        "a server that greets": _greeting,
        "a greeting that arrives in pieces": _pieces,
        "nobody listening": _refused,
        "a server that never speaks": _silent,
    })


def _accepts_a_client(listener: socket.socket) -> bool:
    with socket.create_connection(listener.getsockname()[:2], timeout=2):
        listener.settimeout(2.0)
        conn, _ = listener.accept()
        conn.close()
    return True


@scenario("make_listener(0)", "a listening socket on a port the OS picked")
def _port_zero(fn, guard):
    call, expected = _port_zero.call, _port_zero.expected
    try:
        listener = fn(0)
    except Exception as exc:
        return Outcome(call, describe(exc), expected, False)
    with listener:
        port = listener.getsockname()[1]
        if port == 0:
            return Outcome(call, "a socket still on port 0 (not bound?)", expected, False)
        try:
            _accepts_a_client(listener)
        except OSError as exc:
            return Outcome(call, f"a socket that does not accept: {describe(exc)}", expected, False)
    return Outcome(call, "a listening socket on a port the OS picked", expected, True)


@scenario("make_listener(port) again, right after a server on that port closed",
          "a listening socket on the same port")
def _restart(fn, guard):
    call, expected = _restart.call, _restart.expected
    try:
        with fn(0) as first:
            port = first.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
                first.settimeout(2.0)
                conn, _ = first.accept()
                conn.close()       # server closes first: its side of the port sits in TIME_WAIT
                client.recv(1)     # wait for that FIN
        with fn(port) as second:
            same = second.getsockname()[1] == port and _accepts_a_client(second)
    except Exception as exc:
        return Outcome(call, describe(exc), expected, False)
    return Outcome(call, "a listening socket on the same port" if same else "a different port", expected, same)


@scenario("make_listener(port) while a listener made by make_listener(0) still listens there",
          "raised OSError (EADDRINUSE)")
def _second_live(fn, guard):
    call, expected = _second_live.call, _second_live.expected
    try:
        first = fn(0)
    except Exception as exc:
        return Outcome(call, describe(exc), expected, False)
    with first:
        try:
            second = fn(first.getsockname()[1])
        except OSError as exc:
            return Outcome(call, describe(exc), expected, getattr(exc, "errno", None) == errno.EADDRINUSE)
        except Exception as exc:
            return Outcome(call, describe(exc), expected, False)
        second.close()
    return Outcome(call, "a second listener on the same port: two servers would share it", expected, False)


def check_make_listener(fn):
    return check("make_listener", fn, {
        "port 0": _port_zero,
        "restart on the same port": _restart,
        "a second server while the first runs": _second_live,
    })


EXERCISES = [
    Exercise('01_basics', 'fetch_greeting', check=check_fetch_greeting, naive=naive_fetch_greeting,
             todo='connect with a timeout, read up to the newline, and catch the two errors.'),
    Exercise('01_basics', 'make_listener', check=check_make_listener, naive=naive_make_listener,
             todo='create, set the right option, bind, listen. Close the socket if bind fails.'),
]
