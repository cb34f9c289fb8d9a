"""Lesson 12 exercises: a client that tries every address, and a Unix-socket server start
that removes a stale socket file but never a live server's (nor anything that is not a socket)."""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile

from lessons.exercises import Exercise
from lessons.kit.check import Outcome, check, describe, scenario

TCP = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")


# --- The common first attempts. ---

def naive_connect_any(addresses, timeout: float = 1.0) -> socket.socket:
    """The common first attempt: take getaddrinfo's first answer and hope."""
    family, type_, proto, _, sockaddr = addresses[0]
    sock = socket.socket(family, type_, proto)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def naive_bind_unix(path: str, timeout: float = 1.0) -> socket.socket:
    """The common first attempt: 'Address already in use'? Delete whatever is there."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock


# --- Places to connect to, all on loopback. ---

@contextlib.contextmanager
def _listener():
    """A listening socket: an address that accepts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


@contextlib.contextmanager
def _closed():
    """A bound port with no listener: connecting is refused (kept bound so nobody else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@contextlib.contextmanager
def _silent():
    """A listener whose queue is full: the kernel drops new SYNs, so connect() just waits.

    (Where a full queue refuses instead, as on some systems, the address
    merely refuses: a correct answer passes either way.)
    """
    with socket.socket() as sock, contextlib.ExitStack() as fillers:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        for _ in range(8):           # fill the queue, however long the kernel makes it
            filler = socket.socket()
            fillers.enter_context(filler)
            filler.settimeout(0.2)
            try:
                filler.connect(sock.getsockname())
            except OSError:          # timed out (full) or refused: either way, full
                break
        yield sock


def _entry(sock: socket.socket) -> tuple:
    return (*TCP, sock.getsockname())


def _connects(call: str, places: tuple, expected_place: int, timeout: float = 0.3):
    """Scenario: fn(addresses) must connect to places[expected_place] and keep the timeout."""
    expected = f"a socket connected to address {expected_place + 1}, timeout {timeout:g} s"

    @scenario(call, expected)
    def run(fn, guard):
        with contextlib.ExitStack() as stack:
            socks = [guard.add(stack.enter_context(place())) for place in places]
            try:
                sock = fn([_entry(s) for s in socks], timeout=timeout)
            except Exception as exc:
                return Outcome(call, describe(exc), expected, False)
            with sock:
                peer = sock.getpeername() if sock.fileno() != -1 else None
                names = [s.getsockname() for s in socks]
                where = f"address {names.index(peer) + 1}" if peer in names else "somewhere else"
                got = f"a socket connected to {where}, timeout {sock.gettimeout():g} s" \
                    if sock.gettimeout() is not None else f"a socket connected to {where}, no timeout"
        return Outcome(call, got, expected, got == expected)
    return run


def _all_fail(call: str, places: tuple):
    """Scenario: every address fails; the OSError must name each one's port."""
    expected = f"raised OSError naming each of the {len(places)} addresses" if places else "raised OSError"

    @scenario(call, expected)
    def run(fn, guard):
        with contextlib.ExitStack() as stack:
            socks = [guard.add(stack.enter_context(place())) for place in places]
            entries = [_entry(s) for s in socks]
            try:
                got = fn(entries, timeout=0.3)
            except OSError as exc:
                named = sum(str(port) in str(exc) for *_, (_, port) in entries)
                if not places:
                    return Outcome(call, f"raised {type(exc).__name__}", expected, True)
                text = f"raised {type(exc).__name__} naming {named} of {len(places)} addresses"
                return Outcome(call, text, expected, named == len(places))
            except Exception as exc:
                return Outcome(call, describe(exc), expected, False)
            with contextlib.suppress(Exception):
                got.close()
            return Outcome(call, "returned a socket", expected, False)
    return run


CONNECT_ANY = {
    "one address, a server there": _connects("connect_any([server], timeout=0.3)", (_listener,), 0),
    "the first refuses": _connects("connect_any([refusing, server], timeout=0.3)", (_closed, _listener), 1),
    "the first never answers": _connects("connect_any([silent, server], timeout=0.3)",
                                         (_silent, _listener), 1),
    "all refuse": _all_fail("connect_any([refusing, refusing], timeout=0.3)", (_closed, _closed)),
    "one refuses, one never answers": _all_fail("connect_any([refusing, silent], timeout=0.3)",
                                                (_closed, _silent)),
    "nothing to try": _all_fail("connect_any([], timeout=0.3)", ()),
}


def check_connect_any(fn):
    """Check a connect_any() against every scenario above; print a line each, return the result."""
    return check("connect_any", fn, CONNECT_ANY)


# --- bind_unix: what is at the path before, and what must be true after. ---

def _knock(path: str, listener: socket.socket) -> bool:
    """Whether a client connecting to path is accepted by this listener."""
    listener.settimeout(1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1.0)
        try:
            client.connect(path)
            conn, _ = listener.accept()
        except OSError:
            return False
        conn.close()
        return True


def _binds(call: str, before):
    """Scenario: after `before` prepares the path, fn(path) must return a listening socket there."""
    expected = "a socket listening at the path"

    @scenario(call, expected)
    def run(fn, guard):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "server.sock")
            before(path)
            try:
                sock = fn(path)
            except Exception as exc:
                return Outcome(call, describe(exc), expected, False)
            with sock:
                reached = _knock(path, sock)
                got = expected if reached else "a socket, but a client at the path does not reach it"
        return Outcome(call, got, expected, got == expected)
    return run


def _stale(path: str) -> None:
    """What a crashed server leaves: a socket file, nobody behind it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()


def _contents(path: str):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _refuses(call: str, what: str):
    """Scenario: something precious is at the path; fn(path) must raise FileExistsError and leave it be."""
    expected = f"raised FileExistsError, and the {what} is untouched"

    @scenario(call, expected)
    def run(fn, guard):
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            path = os.path.join(tmp, "server.sock")
            if what == "live server":
                live = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                live.bind(path)
                live.listen()
                intact = lambda: _knock(path, live)   # noqa: E731
            else:
                with open(path, "w") as f:
                    f.write("precious")
                intact = lambda: _contents(path) == "precious"   # noqa: E731
            try:
                got = fn(path)
            except FileExistsError as exc:
                text = describe(exc).split(":")[0]
            except Exception as exc:
                text = describe(exc)
            else:
                got.close()
                text = "returned a socket"
            ok = text.startswith("raised FileExistsError") and intact()
            state = "untouched" if intact() else ("unreachable" if what == "live server" else "gone")
            return Outcome(call, f"{text}, and the {what} is {state}", expected, ok)
    return run


BIND_UNIX = {
    "nothing at the path": _binds("bind_unix(path)", lambda path: None),
    "a stale file from a crash": _binds("bind_unix(path) where a dead server's socket file is", _stale),
    "a live server": _refuses("bind_unix(path) where a server is listening", "live server"),
    "a regular file": _refuses("bind_unix(path) where a regular file is", "file"),
}


def check_bind_unix(fn):
    """Check a bind_unix() against every scenario above; print a line each, return the result."""
    return check("bind_unix", fn, BIND_UNIX)


EXERCISES = [
    Exercise("12_addresses", "connect_any", check=check_connect_any, naive=naive_connect_any,
             todo="each address: a socket, settimeout, connect; keep every error; raise one naming them all."),
    Exercise("12_addresses", "bind_unix", check=check_bind_unix, naive=naive_bind_unix,
             todo="lstat: not a socket? refuse. A socket? probe with connect(): only 'refused' means stale."),
]
