"""Lesson 02: the transcript, the tutorial's failures, and what only the iterative server does.

The echo contract itself (10 MiB, dribblers, resets, 100 clients in a row) is
tested for every server at once in test_echo_servers.py.
"""
from __future__ import annotations

import socket

import pytest

from lessons.kit import adversary, running
from lessons.kit.transcript import CLIENT, CLOSE, ERROR, SERVER
from tests.conftest import lesson

echo = lesson("02_echo")


@pytest.fixture
def server():
    with running(echo.serve) as srv:
        yield srv


def test_hello_round_trip_and_transcript(server):
    assert echo.echo(server.address, b"hello", log=server.log) == b"hello"
    assert server.log.wait_for_event(SERVER, CLOSE)
    kinds = [(e.side, e.kind) for e in server.log.ordered()]
    assert kinds[-2:] == [(CLIENT, "eof"), (CLIENT, "close")]


def test_a_reset_in_the_middle_of_an_echo_is_logged_not_fatal(server):
    sock = adversary.connect(server.address)
    sock.sendall(b"y" * 1_000_000)   # the server is busy echoing into our unread buffer
    adversary.abort(sock)
    assert echo.echo(server.address, b"next") == b"next"
    # Served in turn, so by now the server has met the reset and logged it.
    errors = [e for e in server.log.events(SERVER) if e.kind == ERROR]
    assert [e.who for e in errors] == ["client 1"]
    assert errors[0].detail in ("ConnectionResetError", "BrokenPipeError")
    assert server.errors == []


def test_a_silent_client_holds_the_iterative_server_until_it_leaves(server):
    # Served one after another, as in the tutorial: the next client waits its turn.
    with adversary.silent(server.address):
        with socket.create_connection(server.address, timeout=2) as waiting:
            waiting.sendall(b"queued")
            waiting.shutdown(socket.SHUT_WR)
            waiting.settimeout(0.3)
            with pytest.raises(socket.timeout):
                waiting.recv(10)
            waiting.settimeout(3)
        # the silent client left and the queued one was answered
    assert echo.echo(server.address, b"after") == b"after"


def test_the_naive_server_truncates_a_dribbled_message():
    with running(echo.naive_echo_server) as srv:
        reply = adversary.dribble(srv.address, b"one byte at a time", delay=0.02)
    assert 0 < len(reply) < len(b"one byte at a time")


def test_the_naive_server_dies_on_a_reset():
    with pytest.raises(ConnectionResetError):
        with running(echo.naive_echo_server) as srv:
            adversary.reset(srv.address)
            srv.thread.join(2)
            assert not srv.thread.is_alive()


def test_the_naive_client_gets_at_most_1024_bytes(server):
    message = b"z" * 5000
    reply = echo.naive_echo_client(server.address, message)
    assert len(reply) <= 1024 and reply != message


def test_send_may_send_only_part():
    # What the tutorial's unchecked send() misses: with a timeout set, one send()
    # returns after handing the kernel only what fits in its buffers.
    with adversary.connected_pair() as (ours, theirs):
        payload = b"p" * (64 * 1024 * 1024)
        sent = ours.send(payload)
        assert 0 < sent < len(payload)
