"""Lesson 03 exercises: private messages (/msg), and a broadcast that survives a dead client."""
from __future__ import annotations

import contextlib
import importlib
import select
import socket
import threading

from lessons.kit.adversary import abort, connected_pair
from lessons.exercises import Exercise
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.server import running
from lessons.kit.stream import recv_exactly

chat = importlib.import_module("lessons.03_chat")


# --- Exercise 1: /msg NAME TEXT ---

def naive_private_message(room, sender, line: str) -> str:
    """What the tutorial's room can do: tell everyone."""
    room.broadcast(f"{sender.name}: {line}", sender=sender)
    return f"* sent to {line.split()[1] if len(line.split()) > 1 else ''}"


@contextlib.contextmanager
def _room_with(fn):
    with running(chat.make_serve({"/msg": fn})) as server:
        people = [chat.ChatClient(server.address, name, timeout=1.0) for name in ("alice", "bob", "carol")]
        try:
            people[0].expect("* carol joined")
            people[1].expect("* carol joined")
            yield people
        finally:
            for person in people:
                person.close()


def _private(line: str, to_alice: str, to_bob: str | None):
    """alice sends ``line``; she should get ``to_alice``, bob ``to_bob``, carol nothing."""
    expected = f"alice gets {to_alice!r}" + (f", bob gets {to_bob!r}" if to_bob else "") + ", carol nothing"

    @scenario(f"alice: {line}", expected)
    def run(fn, guard):
        with _room_with(fn) as (alice, bob, carol):
            alice.say(line)
            got = [f"alice gets {_next(alice)!r}"]
            if to_bob:
                got.append(f"bob gets {_next(bob)!r}")
            carol.say("/who")   # whatever carol got before her /who answer leaked to her
            leaked = carol.expect("* online: alice, bob, carol")[:-1]
            got.append("carol nothing" if not leaked else f"carol gets {leaked[0]!r}")
            return Outcome(f"alice: {line}", ", ".join(got), expected, ", ".join(got) == expected)
    return run


def _next(client) -> str:
    try:
        return client.next_line()
    except TimeoutError:
        return "(nothing within 1 s)"


PRIVATE = {
    "to one person": _private("/msg bob psst", "* sent to bob", "alice (private): psst"),
    "name in another case": _private("/msg BOB hi", "* sent to bob", "alice (private): hi"),
    "nobody by that name": _private("/msg dave hi", "! no such user: dave", None),
    "no text": _private("/msg bob", "! usage: /msg NAME TEXT", None),
}


def check_private_message(fn):
    return check("private_message", fn, PRIVATE)


# --- Exercise 2: the tutorial's broadcast, surviving a dead client ---

BIG = 16 * 1024 * 1024


@contextlib.contextmanager
def _clients(guard, n: int):
    """n server-side sockets (the list a chat server keeps) and their far ends."""
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(connected_pair()) for _ in range(n)]
        far = [p[0] for p in pairs]
        near = [guard.add(p[1]) for p in pairs]
        yield near, far


def _arrived(sock, size: int) -> bytes:
    sock.settimeout(0.3)
    try:
        return recv_exactly(sock, size)
    except (TimeoutError, EOFError, OSError):
        return b""


@scenario("broadcast([a, b, c], b'hi\\n', sender=a)", "b and c get it, a does not")
def _all_alive(fn, guard):
    with _clients(guard, 3) as (near, far):
        try:
            fn(near, b"hi\n", near[0])
        except Exception as exc:
            return Outcome(_all_alive.call, describe(exc), _all_alive.expected, False)
        got = [_arrived(s, 3) == b"hi\n" for s in far]
        text = ", ".join(f"{n} {'got it' if g else 'did not'}" for n, g in zip("abc", got))
        return Outcome(_all_alive.call, text, _all_alive.expected, got == [False, True, True])


@scenario("broadcast([dead, a, b], b'hi\\n', sender=None)", "a and b get it; dead is closed and removed")
def _dead_first(fn, guard):
    with _clients(guard, 3) as (near, far):
        abort(far[0])                         # the first client vanished with a reset
        select.select([near[0]], [], [], 2)   # wait until the reset has arrived
        clients = list(near)
        try:
            fn(clients, b"hi\n", None)
        except Exception as exc:
            return Outcome(_dead_first.call, describe(exc), _dead_first.expected, False)
        got = [_arrived(s, 3) == b"hi\n" for s in far[1:]]
        removed = clients == near[1:]
        closed = near[0].fileno() == -1
        text = (", ".join(f"{n} {'got it' if g else 'did not'}" for n, g in zip("ab", got))
                + f"; dead {'removed' if removed else 'still listed' if near[0] in clients else 'others removed too'}"
                + f" and {'closed' if closed else 'left open'}")
        return Outcome(_dead_first.call, text, _dead_first.expected, all(got) and removed and closed)


@scenario("broadcast([a], 16 MB, sender=None)", "a gets all 16 MB")
def _big(fn, guard):
    message = bytes(range(256)) * (BIG // 256)
    with _clients(guard, 1) as (near, far):
        box = {}
        reader = threading.Thread(target=lambda: box.setdefault("data", _arrived_big(far[0])), daemon=True)
        reader.start()
        try:
            fn(near, message, None)
        except Exception as exc:
            return Outcome(_big.call, describe(exc), _big.expected, False)
        finally:
            with contextlib.suppress(OSError):
                near[0].shutdown(socket.SHUT_WR)   # end of message: the reader stops at EOF
            reader.join(5)
        data = box.get("data", b"")
        text = "a gets all 16 MB" if data == message else "a gets only part of it"
        return Outcome(_big.call, text, _big.expected, data == message)


def _arrived_big(sock) -> bytes:
    sock.settimeout(2.0)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    return b"".join(chunks)


BROADCAST = {
    "everyone alive": _all_alive,
    "a dead client first in the list": _dead_first,
    "a message bigger than the socket buffers": _big,
}


def check_broadcast(fn):
    return check("broadcast", fn, BROADCAST)


EXERCISES = [
    Exercise('03_chat', 'private_message', check=check_private_message, naive=naive_private_message,
             todo='split the line, find the member, put the message in their outbox only.'),
    Exercise('03_chat', 'broadcast', check=check_broadcast, naive=chat.naive_broadcast,
             todo='start from naive_broadcast above and fix its three bugs.'),
]
