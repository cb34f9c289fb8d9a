"""Lesson 02 exercises: recv_exactly(sock, n) and a length-prefixed recv_message(sock)."""
from __future__ import annotations

import struct

from lessons.kit.adversary import connected_pair, play
from lessons.exercises import Exercise
from lessons.kit.check import check, describe, expect_error, expect_value, scenario

HEADER = struct.Struct("!I")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


# The tutorial's way: one recv() taken as the whole message.
def naive_recv_exactly(sock, n: int) -> bytes:
    return sock.recv(n)


def naive_recv_message(sock):
    return sock.recv(1024)


def _with_peer(script, delay=0.02):
    """Run ``script`` on the far end of a fresh connection; yield our end."""
    import contextlib

    @contextlib.contextmanager
    def arranged(guard):
        with connected_pair() as (ours, theirs):
            guard.add(ours)
            peer = play(theirs, script, delay)
            try:
                yield ours
            finally:
                peer.join(2.0)
    return arranged


def _returns(call, expected, script, run, delay=0.02):
    @scenario(call, describe(expected))
    def scenario_fn(fn, guard):
        with _with_peer(script, delay)(guard) as sock:
            return expect_value(call, expected, lambda: run(fn, sock))
    return scenario_fn


def _raises(call, error, hint, script, run):
    @scenario(call, f"raised {error.__name__}")
    def scenario_fn(fn, guard):
        with _with_peer(script)(guard) as sock:
            return expect_error(call, error, lambda: run(fn, sock), hint)
    return scenario_fn


MEGABYTE = bytes(range(256)) * 4096

RECV_EXACTLY = {
    "all at once": _returns("recv_exactly(sock, 5)", b"hello", [b"hello"],
                            lambda fn, s: fn(s, 5)),
    "one byte at a time": _returns("recv_exactly(sock, 5)", b"hello", [b"h", b"e", b"l", b"l", b"o"],
                                   lambda fn, s: fn(s, 5)),
    "more waiting than asked for": _returns("two calls of recv_exactly(sock, 5)", (b"hello", b"world"),
                                            [b"helloworld"], lambda fn, s: (fn(s, 5), fn(s, 5))),
    "a megabyte": _returns("len(recv_exactly(sock, 1_048_576))", len(MEGABYTE), [MEGABYTE],
                           lambda fn, s: len(fn(s, len(MEGABYTE)))),
    "peer closes early": _raises("recv_exactly(sock, 5)", EOFError, "only 3 bytes came",
                                 [b"hel", "close"], lambda fn, s: fn(s, 5)),
}

RECV_MESSAGE = {
    "one message": _returns("recv_message(sock)", b"hello", [frame(b"hello")],
                            lambda fn, s: fn(s)),
    "two messages in one send": _returns("recv_message(sock) twice", (b"first", b"second"),
                                         [frame(b"first") + frame(b"second")],
                                         lambda fn, s: (fn(s), fn(s))),
    "header and body one byte at a time": _returns(
        "recv_message(sock)", b"abc", [bytes([b]) for b in frame(b"abc")], lambda fn, s: fn(s), delay=0.01),
    "an empty message": _returns("recv_message(sock)", b"", [frame(b""), b"tail"], lambda fn, s: fn(s)),
    "peer closes between messages": _returns("recv_message(sock)", None, ["close"], lambda fn, s: fn(s)),
    "peer closes mid-message": _raises("recv_message(sock)", EOFError, "3 of 10 bytes came",
                                       [HEADER.pack(10) + b"abc", "close"], lambda fn, s: fn(s)),
    "a hostile length prefix": _raises("recv_message(sock)", ValueError, "4 GiB is over the limit",
                                       [HEADER.pack(0xFFFFFFFF) + b"x"], lambda fn, s: fn(s)),
}


def check_recv_exactly(fn):
    return check("recv_exactly", fn, RECV_EXACTLY)


def check_recv_message(fn):
    return check("recv_message", fn, RECV_MESSAGE)


EXERCISES = [
    Exercise('02_echo', 'recv_exactly', check=check_recv_exactly, naive=naive_recv_exactly,
             todo="loop on sock.recv() until you have n bytes; b'' means the peer closed."),
    Exercise('02_echo', 'recv_message', check=check_recv_message, naive=naive_recv_message,
             todo='read the 4-byte header (it may arrive in pieces too), check the length, read the body.'),
]
