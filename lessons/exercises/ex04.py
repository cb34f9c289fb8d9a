"""Lesson 04 exercises: flush(sock, output) and read_available(sock) on non-blocking sockets."""
from __future__ import annotations

import contextlib
import time

from lessons.kit.adversary import connected_pair
from lessons.exercises import Exercise
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.stream import recv_exactly

BIG = 32 * 1024 * 1024   # more than any socket buffers hold


# The common first attempts (the tutorial has no such code): as if the socket were blocking.
def naive_flush(sock, output: bytearray) -> bool:
    sock.send(output)
    return True


def naive_read_available(sock) -> tuple[bytes, bool]:
    data = sock.recv(1024)
    return data, data == b""


@contextlib.contextmanager
def _nonblocking_pair(guard):
    with connected_pair() as (ours, theirs):
        guard.add(ours)
        guard.add(theirs)      # cut off the peer's reads too if the learner's code overruns
        ours.setblocking(False)
        yield ours, theirs


@scenario("flush(sock, bytearray(b'hello'))", "True, output empty, the peer gets b'hello'")
def _small(fn, guard):
    with _nonblocking_pair(guard) as (ours, theirs):
        output = bytearray(b"hello")
        try:
            done = fn(ours, output)
        except Exception as exc:
            return Outcome(_small.call, describe(exc), _small.expected, False)
        got = recv_exactly(theirs, 5) if not output else b""
        text = f"{done!r}, output {'empty' if not output else 'still ' + repr(bytes(output))}, the peer gets {got!r}"
        return Outcome(_small.call, text, _small.expected, done is True and not output and got == b"hello")


@scenario("flush(sock, 32 MB) to a peer that is not reading", "False at once, output keeps exactly what was not sent")
def _full(fn, guard):
    with _nonblocking_pair(guard) as (ours, theirs):
        message = bytes(range(256)) * (BIG // 256)
        output = bytearray(message)
        started = time.monotonic()
        try:
            done = fn(ours, output)
        except Exception as exc:
            return Outcome(_full.call, describe(exc), _full.expected, False)
        quick = time.monotonic() - started < 1.0
        taken = len(message) - len(output)
        ours.setblocking(True)
        ours.settimeout(5)
        prefix_ok = bytes(output) == message[taken:]
        arrived = recv_exactly(theirs, taken) if 0 < taken < len(message) else b""
        ok = done is False and quick and 0 < taken < len(message) and prefix_ok and arrived == message[:taken]
        text = (f"{done!r}{' at once' if quick else ' after waiting'}, "
                + ("output keeps exactly what was not sent" if prefix_ok and 0 < taken < len(message)
                   else "output is wrong: " + ("nothing was sent" if taken == 0 else "it does not match what the peer got")))
        return Outcome(_full.call, text, _full.expected, ok)


@scenario("flush() called again after the peer read some", "more is sent; nothing lost or repeated")
def _resume(fn, guard):
    with _nonblocking_pair(guard) as (ours, theirs):
        message = bytes(range(256)) * (BIG // 256)
        output = bytearray(message)
        received = bytearray()
        try:
            for _ in range(2000):
                if fn(ours, output):
                    break
                received += theirs.recv(1 << 20)      # the peer reads a little
            else:
                raise AssertionError("never finished")
            ours.setblocking(True)
            theirs.settimeout(5)
            while len(received) < len(message):
                received += theirs.recv(1 << 20)
        except Exception as exc:
            return Outcome(_resume.call, describe(exc), _resume.expected, False)
        ok = bytes(received) == message
        return Outcome(_resume.call, "all 32 MB arrived intact" if ok else "what arrived does not match",
                       _resume.expected, ok)


def check_flush(fn):
    return check("flush", fn, {
        "a small message": _small,
        "buffers full": _full,
        "resume later": _resume,
    })


def _read(script_sends: list, close: bool, expected: tuple, call: str):
    @scenario(call, describe(expected))
    def run(fn, guard):
        with _nonblocking_pair(guard) as (ours, theirs):
            for data in script_sends:
                theirs.sendall(data)
            if close:
                theirs.shutdown(1)
            time.sleep(0.05)        # let it all arrive
            try:
                got = fn(ours)
            except Exception as exc:
                return Outcome(call, describe(exc), describe(expected), False)
            return Outcome(call, describe(got), describe(expected), got == expected)
    return run


MEGABYTE = bytes(range(256)) * 4096

READ = {
    "nothing has arrived": _read([], False, (b"", False), "read_available(sock)"),
    "a little has arrived": _read([b"hello"], False, (b"hello", False), "read_available(sock)"),
    "a megabyte has arrived": _read([MEGABYTE], False, (MEGABYTE, False), "read_available(sock)"),
    "data, then the peer closed": _read([b"bye"], True, (b"bye", True), "read_available(sock)"),
    "the peer closed": _read([], True, (b"", True), "read_available(sock)"),
}


def check_read_available(fn):
    return check("read_available", fn, READ)


EXERCISES = [
    Exercise('04_nonblocking', 'flush', check=check_flush, naive=naive_flush,
             todo='loop on sock.send(output), trim output by the count, stop at BlockingIOError.'),
    Exercise('04_nonblocking', 'read_available', check=check_read_available, naive=naive_read_available,
             todo='loop on sock.recv(); BlockingIOError means "no more for now".'),
]
