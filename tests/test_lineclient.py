"""The kit's line client survives anything a server sends, and every wait has a timeout."""
from __future__ import annotations

import contextlib
import socket
import threading

import pytest

from lessons.kit import adversary
from lessons.kit.lineclient import ChatClient, ConnectionClosed, LineClient, Skipped


@contextlib.contextmanager
def client_and_server(limit: int = 100):
    """A LineClient, and the server's end of its connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        with LineClient(listener.getsockname(), timeout=2, limit=limit) as client:
            server, _ = listener.accept()
            with server:
                yield client, server


def test_an_overlong_line_is_skipped_and_reported_and_the_next_one_read():
    with client_and_server(limit=100) as (client, server):
        server.sendall(b"first\n" + b"x" * 250 + b"\nafter\n")
        assert client.next_line() == "first"
        skipped = client.next_line()
        assert isinstance(skipped, Skipped) and "250 bytes" in skipped
        assert client.next_line() == "after" and client.skipped == 1


def test_a_line_that_never_ends_is_dropped_as_it_comes():
    with client_and_server(limit=100) as (client, server):
        for _ in range(50):                      # 50 kB without a newline, in pieces
            server.sendall(b"y" * 1000)
        server.sendall(b"\nfine\r\n")
        assert isinstance(client.next_line(), Skipped)
        assert client.next_line() == "fine" and client.skipped == 1


def test_invalid_utf8_and_controls_arrive_as_text():
    with client_and_server() as (client, server):
        server.sendall(b"caf\xc3 \xff\x1b[2J\n")
        assert client.next_line() == "caf\ufffd \ufffd\x1b[2J"   # shown cleaned by converse()


def test_a_closed_connection_ends_next_line_at_once():
    with client_and_server() as (client, server):
        server.sendall(b"last words\n")
        server.close()
        assert client.next_line() == "last words"
        with pytest.raises(ConnectionClosed, match="closed"):
            client.next_line(timeout=30)          # no waiting for the timeout
        assert client.closed and client.close_reason == "closed"


def test_a_reset_is_told_apart():
    with client_and_server() as (client, server):
        client.say("unread")                      # the server closes with this unread: RST
        adversary.abort(server)
        assert client.wait_closed(2)
        with pytest.raises(ConnectionClosed, match="reset"):
            client.next_line()


def test_waits_time_out_and_expect_says_what_came():
    with client_and_server() as (client, server):
        server.sendall(b"one\ntwo\n")
        with pytest.raises(TimeoutError, match="'one', 'two'"):
            client.expect("three", timeout=0.2)
        assert client.unread() == []


def test_a_chat_client_reads_the_greeting_and_joins():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        with contextlib.ExitStack() as stack:
            server_side = []

            def accept_and_greet():
                conn, _ = listener.accept()
                server_side.append(conn)
                conn.sendall(b"* hello\n* welcome, x!\n")

            greeter = threading.Thread(target=accept_and_greet)
            greeter.start()
            c = stack.enter_context(ChatClient(listener.getsockname(), "x"))
            greeter.join(5)
            stack.enter_context(server_side[0])
            assert (c.greeting, c.welcome) == ("* hello", "* welcome, x!")
            assert server_side[0].recv(100) == b"x\n"
