"""Lesson 06 exercise: a reliable request/response over UDP (stop-and-wait with sequence numbers)."""
from __future__ import annotations

import contextlib
import importlib
import socket
import struct
import time

from lessons.exercises import Exercise
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.server import POLL_INTERVAL, bind_udp, running

udp = importlib.import_module("lessons.06_udp")
SEQ = struct.Struct("!I")


def naive_reliable_request(sock, message: bytes, seq: int, timeout: float = 0.1, retries: int = 20) -> bytes:
    """The common first attempt: send once, take the first datagram back."""
    sock.send(SEQ.pack(seq) + message)
    return sock.recv(65536)[SEQ.size:]


def stale_first_server(sock, stop, log):
    """Echoes, but before each reply re-sends the previous reply (a late duplicate)."""
    previous = None
    sock.settimeout(POLL_INTERVAL)
    while not stop.is_set():
        try:
            data, peer = sock.recvfrom(65536)
        except socket.timeout:
            continue
        if previous is not None:
            sock.sendto(previous, peer)
        sock.sendto(data, peer)
        previous = data


@contextlib.contextmanager
def _connected(guard, serve):
    with running(serve, transport="udp") as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server.address)
        guard.add(sock)
        yield sock


def _exchanges(call: str, serve, count: int):
    expected = f"{count} correct replies"

    @scenario(call, expected)
    def run(fn, guard):
        with _connected(guard, serve) as sock:
            try:
                got = [fn(sock, b"message %d" % i, i, timeout=0.05) for i in range(count)]
            except Exception as exc:
                return Outcome(call, describe(exc), expected, False)
        right = sum(g == b"message %d" % i for i, g in enumerate(got))
        return Outcome(call, f"{right} correct replies" + ("" if right == count else f", {count - right} wrong"),
                       expected, right == count)
    return run


@scenario("reliable_request(sock, b'anyone?', 0, timeout=0.05, retries=3) to a server that never answers",
          "raised TimeoutError, within a second")
def _silent(fn, guard):
    call, expected = _silent.call, _silent.expected
    with bind_udp() as mute, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(mute.getsockname())
        guard.add(sock)
        started = time.monotonic()
        try:
            got = fn(sock, b"anyone?", 0, timeout=0.05, retries=3)
        except TimeoutError as exc:
            quick = time.monotonic() - started < 1.0
            return Outcome(call, describe(exc) + ("" if quick else ", but slowly"), expected, quick)
        except Exception as exc:
            return Outcome(call, describe(exc), expected, False)
        return Outcome(call, describe(got), expected, False)


SCENARIOS = {
    "a perfect link": _exchanges("5 requests, seq 0 to 4", udp.serve, 5),
    "30% of datagrams lost": _exchanges("20 requests over 30% loss", udp.make_serve(loss=0.3, seed=30), 20),
    "a late duplicate arrives first": _exchanges("5 requests; before each reply, the previous one again",
                                                 stale_first_server, 5),
    "nobody answers": _silent,
}


def check_reliable_request(fn):
    return check("reliable_request", fn, SCENARIOS, deadline=3.0)   # the answer needs about 1 s


EXERCISES = [
    Exercise('06_udp', 'reliable_request', check=check_reliable_request, naive=naive_reliable_request,
             todo='send, wait with sock.settimeout(), compare sequence numbers, resend, give up.'),
]
