"""Lesson 03: the chat room's protocol, its robustness, and the naive server's failures."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from lessons.kit import adversary, running
from tests.conftest import lesson

chat = lesson("03_chat")
ChatClient = chat.ChatClient


@pytest.fixture
def room():
    with running(chat.serve) as server:
        yield server


def test_greeting_name_and_welcome(room):
    with ChatClient(room.address) as c:
        assert c.greeting == chat.GREETING
        c.say("alice")
        assert c.next_line().startswith("* welcome, alice!")


@pytest.mark.parametrize("bad", ["", "two words", "x" * 33, "tab\there"])
def test_invalid_names_are_refused_and_may_be_retried(room, bad):
    with ChatClient(room.address) as c:
        c.say(bad)
        assert c.next_line().startswith("! ")
        c.say("fine")
        assert c.next_line().startswith("* welcome, fine!")


def test_a_taken_name_is_refused_case_insensitively(room):
    with ChatClient(room.address, "alice"), ChatClient(room.address) as second:
        second.say("ALICE")
        assert second.next_line() == "! that name is taken; try another"
        second.say("alice2")
        assert second.next_line().startswith("* welcome")


def test_messages_go_to_everyone_else_with_joins_and_leaves(room):
    with ChatClient(room.address, "alice") as a, ChatClient(room.address, "bob") as b:
        assert a.next_line() == "* bob joined"
        a.say("hello")
        assert b.next_line() == "alice: hello"
        b.say("hi\r")                       # \r\n line ends are accepted
        assert a.next_line() == "bob: hi"
        b.say("/quit")
        assert b.next_line() == "* bye"
        assert b.wait_closed(2)
        assert a.next_line() == "* bob left"
        assert a.received.empty()           # nobody gets their own message back
        assert b.received.empty()


def test_who_and_unknown_commands(room):
    with ChatClient(room.address, "zed") as z, ChatClient(room.address, "Amy") as a, \
            ChatClient(room.address, "bob"):
        z.say("/who")
        assert z.expect("* online: Amy, bob, zed")
        a.say("/dance")
        assert a.expect("! unknown command")[:-1] == ["* bob joined"]


def test_a_line_too_long_is_refused_and_the_connection_closed(room):
    with ChatClient(room.address, "alice") as a, ChatClient(room.address, "spammer") as s:
        a.expect("* spammer joined")
        s.send_raw(b"x" * 4096 + b"\n")     # exactly the limit is fine
        assert a.next_line() == "spammer: " + "x" * 4096
        s.send_raw(b"y" * 5000 + b"\n")
        assert s.expect("! line too long")
        assert s.wait_closed(2)
        assert a.next_line() == "* spammer left"


def test_a_line_that_never_ends_is_cut_off(room):
    with ChatClient(room.address, "endless") as e:
        e.send_raw(b"z" * 10_000)           # no newline at all
        assert e.expect("! line too long")
        assert e.wait_closed(2)


def test_invalid_utf8_is_replaced_and_escapes_are_stripped(room):
    with ChatClient(room.address, "alice") as a, ChatClient(room.address) as m:
        m.send_raw(b"mal\x1b[31mlory\x07\n")
        assert m.next_line().startswith("* welcome, mallory!")
        assert a.next_line() == "* mallory joined"
        m.send_raw(b"caf\xc3 \xff\n")
        assert a.next_line() == "mallory: caf\ufffd \ufffd"
        m.send_raw(b"\x1b]0;owned\x07\x1b[2J\x1b[1;1Hclear\x00\x08 \xe2\x80\xaeevil\r\n")
        line = a.next_line()
        assert line == "mallory: clear evil"
        assert not any(ord(ch) < 32 or ch == "\x7f" for ch in line)


def test_a_client_that_never_reads_does_not_stall_the_room(room):
    payload = "p" * 4000
    most = 16_000           # 64 MB at most: far more than a silent client's buffers and outbox hold
    noticed = threading.Event()
    sent = []
    with ChatClient(room.address, "talker") as t, ChatClient(room.address, "listener") as listener, \
            socket.create_connection(room.address, timeout=5) as sleepy:
        sleepy.sendall(b"sleepy\n")          # joins, then never reads again
        t.expect("* sleepy joined")
        listener.expect("* sleepy joined")

        def talk():
            for i in range(most):
                if noticed.is_set():
                    break
                t.say(f"{i} {payload}")
                sent.append(i)

        talker = threading.Thread(target=talk)
        talker.start()
        try:
            got = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (noticed.is_set() and not talker.is_alive() and got == len(sent)):
                line = listener.next_line()
                if line == "* sleepy left (too slow to keep up)":
                    noticed.set()
                else:
                    assert line == f"talker: {got} {payload}", "lost or out of order"
                    got += 1
        finally:
            noticed.set()
            talker.join(10)
        assert noticed.is_set() and got == len(sent) > 0
    assert room.errors == []


def test_resets_in_the_middle_of_a_broadcast(room):
    with ChatClient(room.address, "talker") as t, ChatClient(room.address, "witness") as w:
        t.expect("* witness joined")
        stop = threading.Event()

        def talk():
            i = 0
            while not stop.is_set():
                t.say(f"message {i}")
                i += 1
                time.sleep(0.001)

        talker = threading.Thread(target=talk)
        talker.start()
        try:
            for n in range(30):    # clients join and vanish with RST while messages fly
                sock = socket.create_connection(room.address, timeout=5)
                sock.sendall(f"ghost{n}\n".encode())
                time.sleep(0.005)
                adversary.abort(sock)
        finally:
            stop.set()
            talker.join(5)
        # The witness saw the talker's messages in order, none missing.
        t.say("/who")
        assert t.expect("* online: talker, witness")
        numbers = []
        while True:
            line = w.next_line()
            if line.startswith("talker: message "):
                numbers.append(int(line.rsplit(" ", 1)[1]))
            if numbers and line == "talker: message " + str(numbers[-1]) and w.received.empty():
                try:
                    line = w.next_line(timeout=0.5)
                    if line.startswith("talker: message "):
                        numbers.append(int(line.rsplit(" ", 1)[1]))
                        continue
                except TimeoutError:
                    break
        assert numbers == list(range(len(numbers))) and len(numbers) > 10
        assert room.errors == []


def test_two_hundred_clients_fifty_messages_each():
    clients_n, messages = 200, 50
    with running(chat.serve) as server:
        clients = [ChatClient(server.address, f"c{i}", timeout=20) for i in range(clients_n)]
        try:
            # Let every join announcement arrive first, so only messages follow.
            for i, c in enumerate(clients):
                c.expect(f"* c{clients_n - 1} joined") if i < clients_n - 1 else None
            senders = [threading.Thread(target=lambda c=c: [c.say(f"m{j}") for j in range(messages)])
                       for c in clients]
            for s in senders:
                s.start()
            for s in senders:
                s.join(30)
            expected_each = (clients_n - 1) * messages
            for i, c in enumerate(clients):
                last_seen = {}
                for _ in range(expected_each):
                    line = c.next_line()
                    name, _, text = line.partition(": ")
                    assert name != f"c{i}", "a client got its own message back"
                    number = int(text[1:])
                    assert number == last_seen.get(name, -1) + 1, f"{line!r} out of order at c{i}"
                    last_seen[name] = number
                assert len(last_seen) == clients_n - 1
                assert all(v == messages - 1 for v in last_seen.values())
                assert c.received.empty()
        finally:
            for c in clients:
                c.close()


def test_shutdown_joins_every_thread():
    before = threading.active_count()
    with running(chat.serve) as server:
        clients = [ChatClient(server.address, f"p{i}") for i in range(20)]
        clients[0].say("hello")
        clients[-1].expect("p0: hello")
        assert threading.active_count() >= before + 40
    for c in clients:
        assert c.wait_closed(5)   # the server closed every connection
        c.close()
    assert threading.active_count() == before


def test_the_naive_server_stalls_behind_a_slow_reader():
    with running(chat.naive_chat_server) as server:
        result = chat.talk_past_a_sleeper(server.address)
    assert result == {"listener got every message": False, "talker was blocked": True,
                      "sleepy was dropped": False}


def test_the_fixed_server_drops_the_slow_reader_and_carries_on(room):
    result = chat.talk_past_a_sleeper(room.address)
    assert result == {"listener got every message": True, "talker was blocked": False,
                      "sleepy was dropped": True}


def test_the_naive_server_spins_on_a_vanished_client():
    with running(chat.naive_chat_server) as server:
        gone = socket.create_connection(server.address, timeout=5)
        time.sleep(0.1)
        adversary.abort(gone)
        time.sleep(0.3)
        swallowed = [e for e in server.log.events() if e.kind == "error"]
        assert len(swallowed) > 100     # the bare except loops on the dead socket
