"""The load generator: it counts and verifies every reply, and catches servers that cheat."""
from __future__ import annotations

import pytest

from lessons.kit import accept_until, running
from lessons.kit.loadgen import run_load
from tests.conftest import lesson

multiplexed = lesson("05_select")


def test_counts_and_verifies_replies_from_a_correct_server():
    with running(multiplexed.serve) as server:
        result = run_load(server.address, connections=5, size=1024, duration=5, requests_per_connection=20)
    assert result.correct and result.opened == 5
    assert result.requests == 100 and result.wrong_replies == 0
    assert 0 < result.latency(0.5) <= result.latency(0.99)


def corrupting_server(bad_request: int):
    """Echoes, but flips a byte in its Nth reply overall."""
    def serve(listener, stop, log):
        count = 0
        for conn, _ in accept_until(listener, stop):
            with conn:
                while data := conn.recv(1024):
                    count += 1
                    if count == bad_request:
                        data = bytes([data[0] ^ 0xFF]) + data[1:]
                    conn.sendall(data)
    return serve


def test_a_corrupted_reply_is_counted_wrong():
    with running(corrupting_server(7)) as server:
        result = run_load(server.address, connections=1, size=1024, duration=5, requests_per_connection=10)
    assert result.requests == 10 and result.wrong_replies == 1 and not result.correct


def test_a_dropped_reply_ends_in_a_failure_not_a_hang():
    def drops_the_third(listener, stop, log):
        for conn, _ in accept_until(listener, stop):
            with conn:
                for n in range(3):
                    data = conn.recv(1024)
                    if n < 2:
                        conn.sendall(data)
                stop.wait(30)

    with running(drops_the_third) as server:
        result = run_load(server.address, connections=1, size=1024, duration=0.5, requests_per_connection=5,
                          stall_timeout=1.0)
        server.stop.set()
    assert result.requests == 2 and not result.correct
    assert result.failure == "server stopped answering"


def test_a_refusing_server_is_reported():
    from lessons.kit.adversary import closed_port
    result = run_load(closed_port(), connections=3, size=64, duration=1)
    assert not result.correct and "ECONNREFUSED" in result.failure


def test_only_loopback():
    with pytest.raises(ValueError, match="only to loopback"):
        run_load(("192.0.2.1", 7), connections=1, duration=1)


def test_idle_connections_are_held_and_a_server_that_drops_them_is_caught():
    with running(multiplexed.serve) as server:
        calls = []
        result = run_load(server.address, connections=2, size=256, duration=0.2, idle=30,
                          on_opened=lambda: calls.append("opened"), on_done=lambda: calls.append("done"))
    assert result.correct and result.idle_opened == 30 and result.idle_closed == 0
    assert calls == ["opened", "done"] and result.answered == 2

    def drops_the_quiet_ones(listener, stop, log):
        """Echoes the first two clients; closes every other connection at once."""
        for number, (conn, _) in enumerate(accept_until(listener, stop)):
            if number < 5:   # the idle ones come first: close them
                conn.close()
                continue
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(data)

    with running(drops_the_quiet_ones) as server:
        result = run_load(server.address, connections=1, size=64, duration=0.2, idle=5, stall_timeout=1.0)
        server.stop.set()
    assert result.requests > 0 and result.idle_closed == 5 and not result.correct


@pytest.mark.parametrize("prefer_c", [True, False])
def test_both_generators_agree_on_what_they_report(prefer_c):
    from lessons.kit.generators import load_generator
    generator = load_generator(prefer_c=prefer_c)
    with running(multiplexed.serve) as server:
        seen = []
        result = generator.run(server.address, 3, size=512, duration=0.3, idle=20,
                               on_opened=lambda: seen.append("opened"), on_done=lambda: seen.append("done"))
    assert result.correct and result.answered == 3 and result.idle_opened == 20 and result.idle_closed == 0
    assert result.requests > 0 and 0 < result.latency(0.5) <= result.latency(0.99)
    assert result.generator_cpu_seconds > 0 and seen == ["opened", "done"]
