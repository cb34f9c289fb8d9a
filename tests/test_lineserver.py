"""The kit's single-threaded line server: handler isolation, slow clients, long lines."""
from __future__ import annotations

import socket
import time

from lessons.kit import chat, running
from lessons.kit.lineclient import ChatClient
from lessons.kit.lineserver import serve_lines
from lessons.kit.transcript import ERROR
from tests.conftest import solution

SelectorChat = solution("05_select").SelectorChat


def room(handler):
    def serve(listener, stop, log):
        serve_lines(listener, stop, log, handler, clean=chat.clean, line_limit=chat.MAX_LINE)
    return running(serve)


def test_a_handler_bug_costs_one_client_not_the_server():
    class Fragile(SelectorChat):
        def line(self, client, text):
            if text == "boom":
                raise KeyError("bug")
            super().line(client, text)

    with room(Fragile()) as server, ChatClient(server.address, "alice") as alice, \
            ChatClient(server.address, "bob") as bob:
        alice.expect("* bob joined")
        bob.say("boom")
        assert bob.wait_closed(2)
        assert alice.next_line() == "* bob left"
        alice.say("/who")
        assert alice.next_line() == "* online: alice"
    assert any(e.kind == ERROR and "KeyError" in e.detail for e in server.log.events())
    assert server.errors == []


def test_a_client_that_never_reads_is_disconnected_and_the_room_goes_on():
    with room(SelectorChat()) as server, ChatClient(server.address, "talker") as talker, \
            ChatClient(server.address, "listener") as listener, \
            socket.create_connection(server.address, timeout=5) as sleepy:
        sleepy.sendall(b"sleepy\n")
        talker.expect("* sleepy joined")
        listener.expect("* sleepy joined")
        body = "p" * 4000
        deadline = time.monotonic() + 30
        i = 0
        while time.monotonic() < deadline:
            talker.say(f"{i} {body}")
            line = listener.next_line()
            if line == "* sleepy left":
                break
            assert line == f"talker: {i} {body}"
            i += 1
        assert line == "* sleepy left"
    assert any(e.kind == ERROR and e.detail == "too slow" for e in server.log.events())


def test_a_long_line_is_refused_and_closed():
    with room(SelectorChat()) as server, ChatClient(server.address, "x") as x:
        x.send_raw(b"y" * 5000 + b"\n")
        assert x.next_line() == "! line too long"
        assert x.wait_closed(2)
