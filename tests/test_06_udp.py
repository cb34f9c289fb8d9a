"""Lesson 06: the UDP echo server and the retrying client."""
from __future__ import annotations

import errno
import os
import random
import socket
import time

import pytest

from lessons.kit import running
from lessons.kit.adversary import closed_port
from lessons.kit.transcript import NOTE, SERVER, Transcript
from lessons.exercises.ex06 import stale_first_server
from tests.conftest import lesson

udp = lesson("06_udp")


@pytest.fixture
def server():
    with running(udp.serve, transport="udp") as srv:
        yield srv


def raw_echo(address, payload: bytes, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, address)
        data, peer = sock.recvfrom(udp.RECV_BUFFER)
        assert peer == address
        return data


SIZES = sorted({0, 1, 2, 100, 508, 1472, 1473, 9000, 32768, 65000, 65506, 65507}
               | set(random.Random(62).sample(range(65508), 20)))


@pytest.mark.parametrize("size", SIZES)
def test_every_size_up_to_the_maximum_echoes_byte_for_byte(server, size):
    payload = os.urandom(size)
    assert raw_echo(server.address, payload) == payload


def test_above_the_maximum_the_sender_is_refused(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(OSError) as caught:
            sock.sendto(b"x" * (udp.MAX_DATAGRAM + 1), server.address)
        assert caught.value.errno == errno.EMSGSIZE
    with pytest.raises(ValueError, match="do not fit in one datagram"):
        udp.ask(server.address, b"x" * udp.MAX_DATAGRAM)


def test_message_boundaries_are_kept(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for payload in (b"a", b"bb", b"ccc"):
            sock.sendto(payload, server.address)
        assert [sock.recvfrom(100)[0] for _ in range(3)] == [b"a", b"bb", b"ccc"]


def test_a_burst_and_garbage_never_stop_it(server):
    rng = random.Random(10)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(10_000):
            sock.sendto(rng.randbytes(rng.randrange(0, 1500)), server.address)
    time.sleep(0.2)
    assert udp.ask(server.address, b"still there?") == b"still there?"
    assert server.thread.is_alive() and server.errors == []


def test_the_client_succeeds_over_thirty_percent_loss():
    with running(udp.make_serve(loss=0.3, seed=99), transport="udp") as server:
        for i in range(20):
            assert udp.ask(server.address, b"%d" % i, timeout=0.05, retries=10) == b"%d" % i
        dropped = [e for e in server.log.events(SERVER) if e.kind == NOTE and "dropped" in e.detail]
    assert dropped, "the simulator should have dropped some"


def test_a_reply_to_a_stale_request_is_ignored():
    log = Transcript()
    with running(stale_first_server, transport="udp") as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server.address)
        assert udp.request(sock, b"first", log=log) == b"first"
        assert udp.request(sock, b"second", log=log) == b"second"   # the first reply comes again first
    assert [e.detail for e in log.events() if e.kind == NOTE] == ["ignored a reply to an earlier request"]


def test_reordered_replies_still_match():
    with running(udp.make_serve(reorder=0.5, seed=5), transport="udp") as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(server.address)
        for i in range(20):
            assert udp.request(sock, b"r%d" % i, timeout=0.3) == b"r%d" % i


def test_seeded_loss_repeats_exactly():
    def pattern():
        with running(udp.make_serve(loss=0.3, reorder=0.1, seed=7), transport="udp") as server, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.3)
            for i in range(30):
                sock.sendto(b"%d" % i, server.address)
            got = []
            with pytest.raises(socket.timeout):
                while True:
                    got.append(sock.recvfrom(100)[0])
        return got

    first = pattern()
    assert first == pattern() and 0 < len(first) < 30


def test_nobody_answering_ends_in_a_clear_error_not_a_hang():
    from lessons.kit.server import bind_udp
    with bind_udp() as mute:
        started = time.monotonic()
        with pytest.raises(udp.NoReply, match="no reply after 3 tries"):
            udp.ask(mute.getsockname(), b"hello?", timeout=0.05, retries=2)
    assert time.monotonic() - started < 1.0


def test_a_closed_port_is_reported_as_refused():
    with pytest.raises(ConnectionRefusedError):
        udp.ask(closed_port(), b"anyone?", timeout=0.2, retries=1)


def test_the_naive_client_truncates_long_replies(server):
    big = bytes(range(256)) * 10
    assert udp.naive_udp_client(server.address, big) == big[:1024]


def test_known_senders_keep_their_names_past_the_limit():
    names = udp.SenderNames(limit=3)
    assert [names.of(("h", p)) for p in (1, 2, 3)] == ["client 1", "client 2", "client 3"]
    assert names.of(("h", 1)) == "client 1"          # heard again: the freshest now
    assert names.of(("h", 4)) == "client 4"          # forgets the quietest, ("h", 2)
    assert names.of(("h", 1)) == "client 1" and names.of(("h", 3)) == "client 3"
    assert names.of(("h", 2)) == "client 5"          # forgotten, so a new number


def test_backoff_never_waits_longer_than_max_wait(monkeypatch):
    from lessons.kit.server import bind_udp
    monkeypatch.setattr(udp, "MAX_WAIT", 0.02)
    with bind_udp() as mute, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(mute.getsockname())
        with pytest.raises(udp.NoReply, match="no reply after 8 tries") as raised:
            udp.request(sock, b"anyone?", timeout=0.01, retries=7)
    waited = float(str(raised.value).split("over ")[1].split(" s")[0])
    assert waited < 0.5                              # 0.01 + 7 * 0.02; uncapped, 0.01 * (2**8 - 1) = 2.55


def test_a_datagram_from_its_own_port_is_not_echoed_so_no_loop_can_start():
    """The classic UDP echo loop (CVE-1999-0103): a datagram forged to come from an echo
    server's own port (here: sent by its own socket, to itself; or by a second echo server on
    the same port) would be echoed back and forth for ever, at full speed."""
    with running(udp.serve, transport="udp") as one:
        one.listener.sendto(b"loop", one.address)                 # from its own address and port
        with running(udp.serve, host="127.0.0.2", port=one.port, transport="udp") as two:
            one.listener.sendto(b"ping-pong", two.address)        # two echo servers, one port
            time.sleep(0.3)
            assert udp.ask(one.address, b"still there?") == b"still there?"
            assert udp.ask(two.address, b"and here?") == b"and here?"
        echoed = [e for s in (one, two) for e in s.log.events(SERVER) if e.kind == "send"]
    assert len(echoed) == 2   # the two asks, nothing else
    ignored = [e.detail for s in (one, two) for e in s.log.events(SERVER) if e.kind == NOTE]
    assert len(ignored) == 2 and all("own port" in note for note in ignored)
