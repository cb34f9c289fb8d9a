"""Lesson 01 exercises: fetch_greeting (handle the three errors) and make_listener."""
from __future__ import annotations

import importlib
import socket

from lessons.kit.adversary import closed_port, silent_server
from lessons.exercises import Exercise
from lessons.kit.check import Outcome, check, describe, expect_value, scenario
from lessons.kit.server import running

basics = importlib.import_module("lessons.01_basics")
HELLO = basics.GREETING.decode().strip()


# The tutorial's way: no timeout, no error handling.
# (Only the `with` blocks are ours, so that the checks leak no sockets.)
def naive_fetch_greeting(host: str, port: int, timeout: float = 1.0) -> str:
    with socket.socket() as sock:
        sock.connect((host, port))
        return sock.recv(1024).decode().strip()


def naive_make_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((host, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


@scenario("fetch_greeting(host, port, timeout=0.5)", repr(HELLO))
def _greeting(fn, guard):
    with running(basics.serve) as server:
        return expect_value("fetch_greeting(host, port, timeout=0.5)", HELLO,
                            lambda: fn(*server.address, timeout=0.5))


@scenario("fetch_greeting(host, closed_port, timeout=0.5)", "'refused'")
def _refused(fn, guard):
    host, port = closed_port()
    return expect_value("fetch_greeting(host, closed_port, timeout=0.5)", "refused",
                        lambda: fn(host, port, timeout=0.5))


@scenario("fetch_greeting(host, silent_port, timeout=0.5)", "'timeout'")
def _silent(fn, guard):
    # The silent server hangs up after 2 s, so code with no timeout ends too.
    with silent_server(hold=2.0) as (host, port):
        return expect_value("fetch_greeting(host, silent_port, timeout=0.5)", "timeout",
                            lambda: fn(host, port, timeout=0.5))


def check_fetch_greeting(fn):
    return check("fetch_greeting", fn, {
        "a server that greets": _greeting,
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


def check_make_listener(fn):
    return check("make_listener", fn, {
        "port 0": _port_zero,
        "restart on the same port": _restart,
    })


EXERCISES = [
    Exercise('01_basics', 'fetch_greeting', check=check_fetch_greeting, naive=naive_fetch_greeting,
             todo='connect with a timeout, read up to the newline, and catch the two errors.'),
    Exercise('01_basics', 'make_listener', check=check_make_listener, naive=naive_make_listener,
             todo='create, set the right option, bind, listen. Close the socket if bind fails.'),
]
