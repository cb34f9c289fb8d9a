"""Lesson 05 exercise: lesson 03's chat, ported to a single-threaded selectors server."""
from __future__ import annotations

import contextlib
import socket
import threading

from lessons.exercises import Exercise
from lessons.kit import chat
from lessons.kit.adversary import abort
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.lineclient import ChatClient
from lessons.kit.lineserver import serve_lines
from lessons.kit.server import running
from lessons.kit.transcript import ERROR


class NaiveSelectorChat:
    """The tutorial's idea of a chat, on the event loop: every line to everyone, no names."""

    def __init__(self):
        self.clients = []

    def connected(self, client) -> None:
        self.clients.append(client)

    def line(self, client, text: str) -> None:
        for other in self.clients:
            other.send(text)

    def disconnected(self, client) -> None:
        self.clients.remove(client)


@contextlib.contextmanager
def _room(handler_class):
    """Run the learner's handler on the line server; explain a crash in its words."""
    handler = handler_class()

    def serve(listener, stop, log):
        serve_lines(listener, stop, log, handler, clean=chat.clean, line_limit=chat.MAX_LINE)

    with running(serve) as server:
        try:
            yield server
        except Exception:
            raised = [e.detail for e in server.log.events() if e.kind == ERROR and "handler raised" in e.detail]
            if raised:
                raise RuntimeError(raised[0]) from None
            raise


def _client(server, name=None):
    return ChatClient(server.address, name, timeout=1.0)


def _compare(call, expected, got) -> Outcome:
    return Outcome(call, describe(got), describe(expected), got == expected)


@scenario("connect, then send 'alice'", "(greeting, welcome)")
def _join(handler_class, guard):
    expected = (chat.GREETING, "* welcome, alice! /who lists who is here, /quit leaves")
    with _room(handler_class) as server, _client(server) as alice:
        got = (alice.greeting, (alice.say("alice"), alice.next_line())[1])
    return _compare(_join.call, expected, got)


@scenario("bob connects as 'ALICE' while alice is here", "'! that name is taken; try another'")
def _taken(handler_class, guard):
    with _room(handler_class) as server, _client(server, "alice"), _client(server) as bob:
        bob.say("ALICE")
        return _compare(_taken.call, "! that name is taken; try another", bob.next_line())


@scenario("alice says 'hi'", "bob gets 'alice: hi', alice gets nothing back")
def _message(fn_class, guard):
    with _room(fn_class) as server, _client(server, "alice") as alice, _client(server, "bob") as bob:
        alice.expect("* bob joined")
        alice.say("hi")
        to_bob = bob.next_line()
        alice.say("/who")
        to_alice = alice.next_line()
    got = (f"bob gets {to_bob!r}", f"alice next gets {to_alice!r}")
    expected = ("bob gets 'alice: hi'", "alice next gets '* online: alice, bob'")
    return _compare(_message.call, expected, got)


@scenario("bob sends /quit", "bob gets '* bye' and is closed; alice gets '* bob left'")
def _quit(handler_class, guard):
    with _room(handler_class) as server, _client(server, "alice") as alice, _client(server, "bob") as bob:
        alice.expect("* bob joined")
        bob.say("/quit")
        got = (bob.next_line(), bob.wait_closed(1.0), alice.next_line())
    return _compare(_quit.call, ("* bye", True, "* bob left"), got)


@scenario("bob vanishes with a reset", "alice gets '* bob left'; the room goes on")
def _reset(handler_class, guard):
    with _room(handler_class) as server, _client(server, "alice") as alice:
        bob = socket.create_connection(server.address, timeout=1.0)   # raw: nothing else reads it
        bob.sendall(b"bob\n")
        alice.expect("* bob joined")
        abort(bob)
        left = alice.next_line()
        alice.say("/who")
        got = (left, alice.next_line())
    return _compare(_reset.call, ("* bob left", "* online: alice"), got)


@scenario("five clients chat", "no new threads: one thread serves them all")
def _one_thread(handler_class, guard):
    with _room(handler_class) as server:
        before = threading.active_count()
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(_client(server, f"p{i}")) for i in range(5)]
            clients[0].say("hello")
            clients[-1].expect("p0: hello")
            # Each ChatClient has one reader thread of its own; the server should add none.
            extra = threading.active_count() - before - len(clients)
    return Outcome(_one_thread.call, f"{extra} new server threads", "0 new server threads", extra == 0)


SCENARIOS = {
    "greeting and name": _join,
    "a name already taken": _taken,
    "a message": _message,
    "/quit": _quit,
    "a vanished client": _reset,
    "single-threaded": _one_thread,
}


def check_selector_chat(handler_class):
    return check("SelectorChat", handler_class, SCENARIOS, deadline=6.0)


EXERCISES = [
    Exercise('05_select', 'SelectorChat', check=check_selector_chat, naive=NaiveSelectorChat,
             todo=('send the greeting.', 'name (taken? invalid?), then /who, /quit, unknown commands, and messages to the others.', 'forget the client and announce "* NAME left".', 'add helper methods here if you like.')),
]
