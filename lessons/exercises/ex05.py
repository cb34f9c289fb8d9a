"""Lesson 05 exercises: interest(conn) and loop_once(sel, echoer), the selector's half of an echo server.

The learner's loop_once runs as the whole server loop, on lesson 05's Echoer,
with a selector that notes what it is asked: wake-ups, and whether a socket
was closed before it was unregistered.
"""
from __future__ import annotations

import contextlib
import importlib
import re
import selectors
import socket
import threading
import time

from lessons.exercises import Exercise
from lessons.kit import adversary
from lessons.kit.check import Outcome, check, describe, describe_error, scenario
from lessons.kit.echo import echo
from lessons.kit.nonblocking import Connection
from lessons.kit.server import JOIN_TIMEOUT, running

lesson = importlib.import_module("lessons.05_select")   # its Echoer does the per-socket work
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
MIB = 1 << 20


def events_name(mask) -> str:
    """EVENT_READ | EVENT_WRITE, as a learner writes it."""
    if not isinstance(mask, int):
        return describe(mask)
    names = [name for bit, name in ((READ, "EVENT_READ"), (WRITE, "EVENT_WRITE")) if mask & bit]
    return " | ".join(names) if names and mask & ~(READ | WRITE) == 0 else ("0" if not mask else repr(mask))


# --- The common first attempts. ---

def naive_interest(conn, limit: int = 1 << 20) -> int:
    return selectors.EVENT_READ | selectors.EVENT_WRITE   # always both: "in case"


def naive_loop_once(sel, echoer, timeout: float = 0.05) -> None:
    for key, mask in sel.select(timeout):
        if key.data is None:
            conn = echoer.accept(key.fileobj)
            if conn is not None:   # always both, never modified
                sel.register(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, data=conn)
            continue
        conn = key.data
        if mask & selectors.EVENT_READ:
            echoer.readable(conn)
        if mask & selectors.EVENT_WRITE and conn.output:
            echoer.writable(conn)
        if echoer.finished(conn):
            echoer.close(conn)     # and the selector still holds it


# --- interest(conn) ---

def _conn(output: bytes = b"", done: bool = False) -> Connection:
    return Connection(None, "client 1", bytearray(output), done)


def _interest(call: str, conn: Connection, expected: int, **kwargs):
    @scenario(call, events_name(expected))
    def run(fn, guard):
        try:
            got = fn(conn, **kwargs)
        except Exception as exc:
            return Outcome(call, describe(exc), events_name(expected), False)
        return Outcome(call, events_name(got), events_name(expected), got == expected)
    return run


INTEREST = {
    "a new connection": _interest("interest(conn) with nothing to send", _conn(), READ),
    "output waiting": _interest("interest(conn) with b'hello' to send", _conn(b"hello"), READ | WRITE),
    "the output is full": _interest("interest(conn, limit=5) with b'hello' to send",
                                    _conn(b"hello"), WRITE, limit=5),
    "a whole mebibyte waits": _interest("interest(conn) with 1 MiB to send", _conn(b"x" * MIB), WRITE),
    "the client is done, the echo is not": _interest("interest(conn) after EOF, b'bye' to send",
                                                     _conn(b"bye", done=True), WRITE),
    "all done": _interest("interest(conn) after EOF, all sent", _conn(done=True), 0),
}


def check_interest(fn):
    return check("interest", fn, INTEREST)


# --- loop_once(sel, echoer) ---

class WatchedSelector:
    """A selector that does what it is asked, and notes how: the learner's loop runs on it."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self.wakeups = 0             # select() calls that returned something
        self.closed_first: list[str] = []   # sockets unregistered after they were closed

    def register(self, fileobj, events, data=None):
        return self._sel.register(fileobj, events, data)

    def modify(self, fileobj, events, data=None):
        return self._sel.modify(fileobj, events, data)

    def unregister(self, fileobj):
        key = self._sel.get_key(fileobj)
        if isinstance(fileobj, socket.socket) and fileobj.fileno() == -1:
            self.closed_first.append(getattr(key.data, "who", "a socket"))
        return self._sel.unregister(fileobj)

    def select(self, timeout=None):
        events = self._sel.select(timeout)
        self.wakeups += bool(events)
        return events

    def get_key(self, fileobj):
        return self._sel.get_key(fileobj)

    def get_map(self):
        return self._sel.get_map()

    def watched(self) -> int:
        """How many connections (not counting the listener) are registered."""
        return sum(key.data is not None for key in list(self._sel.get_map().values()))

    def close(self):
        self._sel.close()


@contextlib.contextmanager
def _serving(loop_once):
    """The learner's loop_once as a whole server; yields (server, selector, echoer)."""
    parts, ready = {}, threading.Event()

    def serve(listener, stop, log):
        listener.setblocking(False)
        sel, echoer = parts["sel"], parts["echoer"] = WatchedSelector(), lesson.Echoer(log)
        sel.register(listener, selectors.EVENT_READ)
        ready.set()
        try:
            while not stop.is_set():
                loop_once(sel, echoer, 0.05)
        finally:
            echoer.close_all()
            sel.close()

    server = running(serve).start()
    try:
        ready.wait(JOIN_TIMEOUT)   # the server thread may not have run yet on a busy machine
        time.sleep(0.05)           # time for a loop_once that raises to do so
        _raise_if_dead(server)
        try:
            yield server, parts["sel"], parts["echoer"]
        except Exception:   # a client failed: say why, if it is because the server died
            _raise_if_dead(server)
            raise
        _raise_if_dead(server)
    finally:
        server.shutdown(reraise=False)


def _raise_if_dead(server) -> None:
    if server.errors:   # (a socket's repr holds its ports: not in a check's output)
        error = re.sub(r"<socket\.socket [^>]*>( \(FD \d+\))?", "<socket>", describe_error(server.errors[0]))
        raise RuntimeError(f"loop_once raised {error}")


def _wait(condition, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _outcome(run, call: str, expected: str, fn, guard) -> Outcome:
    try:
        got, ok = run(fn)
    except Exception as exc:
        return Outcome(call, describe(exc) if not isinstance(exc, RuntimeError) else str(exc),
                       expected, False)
    return Outcome(call, got, expected, ok)


@scenario("one client echoes b'hello' and leaves", "b'hello' back; the selector lets go of it")
def _one(fn, guard):
    def run(fn):
        with _serving(fn) as (server, sel, echoer):
            reply = echo(server.address, b"hello", timeout=3)
            _wait(lambda: not echoer.connections)
            left = sel.watched()
        return (f"{reply!r} back; the selector still watches {left} connection(s)" if left
                else f"{reply!r} back; the selector lets go of it"), reply == b"hello" and not left
    return _outcome(run, _one.call, _one.expected, fn, guard)


@scenario("20 clients, one after another", "20 echoes; each one unregistered before it is closed")
def _twenty(fn, guard):
    def run(fn):
        with _serving(fn) as (server, sel, echoer):
            good = sum(echo(server.address, b"n%d" % i, timeout=3) == b"n%d" % i for i in range(20))
            _wait(lambda: not echoer.connections)
        wrong = sel.closed_first
        got = f"{good} echoes" + (f"; {len(wrong)} closed before they were unregistered" if wrong else
                                  "; each one unregistered before it is closed")
        return got, good == 20 and not wrong
    return _outcome(run, _twenty.call, _twenty.expected, fn, guard)


@scenario("a client sends 8 MiB and reads as it goes", "all 8 MiB back, intact")
def _flood(fn, guard):
    def run(fn):
        with _serving(fn) as (server, sel, echoer):
            reply = adversary.flood(server.address, 8 * MIB, timeout=4)
        ok = reply == adversary.flood_pattern(8 * MIB)
        return ("all 8 MiB back, intact" if ok else f"{len(reply):,} bytes back, not the same"), ok
    return _outcome(run, _flood.call, _flood.expected, fn, guard)


@scenario("two clients connect and say nothing for 0.2 s", "no wake-ups: nothing to do")
def _idle(fn, guard):
    def run(fn):
        with _serving(fn) as (server, sel, echoer), adversary.silent(server.address), \
                adversary.silent(server.address):
            _wait(lambda: len(echoer.connections) == 2)
            time.sleep(0.05)
            before = sel.wakeups
            time.sleep(0.2)
            woken = sel.wakeups - before
        return ("no wake-ups" if not woken else f"{woken} wake-ups with nothing to do"), woken == 0
    return _outcome(run, _idle.call, _idle.expected, fn, guard)


@scenario("a client sends 64 MiB and never reads", "the server stops reading: it holds at most 1 MiB")
def _hog(fn, guard):
    def run(fn):
        with _serving(fn) as (server, sel, echoer), adversary.connect(server.address) as hog:
            hog.setblocking(False)
            chunk, sent, deadline = b"h" * MIB, 0, time.monotonic() + 0.5
            while sent < 64 * MIB and time.monotonic() < deadline:
                try:
                    sent += hog.send(chunk)
                except BlockingIOError:   # full for now: give the server time to read more
                    time.sleep(0.005)
            time.sleep(0.05)
            held = max((len(c.output) for c in list(echoer.connections.values())), default=0)
        ok = held <= MIB + lesson.RECV_SIZE
        return (f"the server holds {held / MIB:.1f} MiB" if not ok
                else "the server stops reading: it holds at most 1 MiB"), ok
    return _outcome(run, _hog.call, _hog.expected, fn, guard)


LOOP = {
    "an echo": _one,
    "clients come and go": _twenty,
    "a flood": _flood,
    "idle clients": _idle,
    "a client that never reads": _hog,
}


def check_loop_once(fn):
    return check("loop_once", fn, LOOP, deadline=5.0)


EXERCISES = [
    Exercise("05_select", "interest", check=check_interest, naive=naive_interest,
             todo="EVENT_READ while it may read, below limit; EVENT_WRITE while output waits."),
    Exercise("05_select", "loop_once", check=check_loop_once, naive=naive_loop_once,
             todo="serve what sel.select(timeout) returns; register, modify, unregister."),
]
