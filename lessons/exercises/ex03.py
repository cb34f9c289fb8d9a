"""Lesson 03 exercises: private messages (/msg), and the tutorial's broadcast made safe."""
from __future__ import annotations

import contextlib
import functools
import importlib
import select
import socket
import threading

from lessons.exercises import Exercise
from lessons.kit.adversary import abort, connected_pair
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.lineclient import ChatClient
from lessons.kit.server import running
from lessons.kit.stream import recv_exactly

chat = importlib.import_module("lessons.03_chat")


# --- Exercise 1: /msg NAME TEXT ---

def naive_private_message(room, sender, line: str) -> str:
    """The common first attempt with the tutorial's room: tell everyone."""
    room.broadcast(f"{sender.name}: {line}", sender=sender)
    return f"* sent to {line.split()[1] if len(line.split()) > 1 else ''}"


@contextlib.contextmanager
def _room_with(fn):
    with running(functools.partial(chat.serve, commands={"/msg": fn})) as server:
        people = [ChatClient(server.address, name, timeout=2.0) for name in ("alice", "bob", "carol")]
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
            answer = _next(alice)
            got = [f"alice gets {answer!r}"]
            if to_bob:   # (not worth waiting for if alice's answer is already wrong)
                got.append(f"bob gets {_next(bob)!r}" if answer == to_alice else "bob not checked")
            carol.say("/who")   # whatever carol got before her /who answer leaked to her
            leaked = carol.expect("* online: alice, bob, carol")[:-1]
            got.append("carol nothing" if not leaked else f"carol gets {leaked[0]!r}")
            return Outcome(f"alice: {line}", ", ".join(got), expected, ", ".join(got) == expected)
    return run


def _next(client) -> str:
    try:
        return client.next_line()
    except TimeoutError:
        return "(nothing within 2 s)"


PRIVATE = {
    "to one person": _private("/msg bob psst", "* sent to bob", "alice (private): psst"),
    "name in another case": _private("/msg BOB hi", "* sent to bob", "alice (private): hi"),
    "nobody by that name": _private("/msg dave hi", "! no such user: dave", None),
    "no text": _private("/msg bob", "! usage: /msg NAME TEXT", None),
}


def check_private_message(fn):
    return check("private_message", fn, PRIVATE)


# --- Exercise 2: the tutorial's broadcast, safe with other threads and dead clients ---

def naive_broadcast(clients, lock, message, client):
    """The tutorial's broadcast, line for line; it reads a global list and has no lock."""
    for c in clients:
        if c != client:
            c.send(message)


BIG = 16 * 1024 * 1024
LET_IN = 0.2   # how long the check waits for another thread that wants the lock


class Peer:
    """The server's socket for one client, as the learner's broadcast sees it.

    It calls ``on_send`` (once) when the broadcast first sends to it: the check
    uses that moment to make another client join or leave, as happens in a real room.
    """

    def __init__(self, sock: socket.socket, name: str):
        self.sock, self.name, self.on_send = sock, name, None

    def send(self, data: bytes) -> int:
        self._now()
        return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        self._now()
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _now(self) -> None:
        if self.on_send is not None:
            on_send, self.on_send = self.on_send, None
            on_send()

    def __repr__(self) -> str:
        return self.name


class SharedList(list):
    """The room's list of clients. Reading it lets other threads in after its first item,
    as a list does in a free-threaded Python or in any other language: copying it is no
    safer than looping over it, unless the reader holds the lock that the writers take."""

    between = None   # what other threads do at that moment (set by a scenario)

    def _read(self, i: int):
        if i == 1 and self.between is not None:
            between, self.between = self.between, None
            between()
        return list.__getitem__(self, i)

    def __iter__(self):
        i = 0
        while i < len(self):
            yield self._read(i)
            i += 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return list(iter(self))[index]
        return self._read(index if index >= 0 else len(self) + index)

    def copy(self):
        return list(iter(self))

    def __reversed__(self):
        return reversed(list(iter(self)))

    def now(self) -> list:
        """The list as it is, without letting anyone in."""
        return list(list.__iter__(self))


def _another_thread(lock: threading.Lock, change) -> threading.Thread:
    """Run change() under lock in another thread (a client joining or leaving), and give
    it LET_IN seconds: if the broadcast holds the lock, it waits until the broadcast is done."""
    def locked():
        with lock:
            change()
    thread = threading.Thread(target=locked, name="another-client", daemon=True)
    thread.start()
    thread.join(LET_IN)
    return thread


@contextlib.contextmanager
def _room(guard, names: str):
    """A SharedList of Peers (the server's sockets), their far ends, and the lock."""
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(connected_pair()) for _ in names]
        peers = [Peer(guard.add(near), name) for (_, near), name in zip(pairs, names)]
        far = {name: pair[0] for name, pair in zip(names, pairs)}
        yield SharedList(peers), far, threading.Lock()


def _arrived(sock, size: int) -> bool:
    sock.settimeout(0.2)
    try:
        return bool(recv_exactly(sock, size))
    except (TimeoutError, EOFError, OSError):
        return False


def _got(far: dict, names: str, size: int = 3) -> str:
    return ", ".join(f"{n} {'got it' if _arrived(far[n], size) else 'did not'}" for n in names)


def _call(fn, *args) -> str | None:
    try:
        fn(*args)
    except Exception as exc:
        return describe(exc)
    return None


@scenario("broadcast([a, b, c], lock, b'hi\\n', sender=a)", "a did not, b got it, c got it")
def _all_alive(fn, guard):
    with _room(guard, "abc") as (clients, far, lock):
        failure = _call(fn, clients, lock, b"hi\n", clients[0])
        got = failure or _got(far, "abc")
        return Outcome(_all_alive.call, got, _all_alive.expected, got == _all_alive.expected)


@scenario("broadcast([dead, a, b], lock, b'hi\\n', sender=None)",
          "a got it, b got it; dead removed and closed")
def _dead_first(fn, guard):
    with _room(guard, "xab") as (clients, far, lock):
        dead = clients[0]
        abort(far["x"])                       # the first client vanished with a reset
        select.select([dead.sock], [], [], 2)   # wait until the reset has arrived
        failure = _call(fn, clients, lock, b"hi\n", None)
        if failure:
            return Outcome(_dead_first.call, failure, _dead_first.expected, False)
        listed = "removed" if dead not in clients else "still listed"
        closed = "closed" if dead.fileno() == -1 else "left open"
        got = f"{_got(far, 'ab')}; dead {listed} and {closed}"
        return Outcome(_dead_first.call, got, _dead_first.expected, got == _dead_first.expected)


@scenario("broadcast([a, b, c, d], lock, b'hi\\n', sender=d) while a leaves and e joins",
          "b got it, c got it, e did not; then the list is [b, c, d, e]")
def _joins_and_leaves(fn, guard):
    with _room(guard, "abcde") as (clients, far, lock):
        a, e = clients[0], list.pop(clients)
        others = []

        def change():   # a's own thread removes a, and a new client's thread adds e
            list.remove(clients, a)
            list.append(clients, e)

        def meanwhile():
            others.append(_another_thread(lock, change))

        clients.between = meanwhile
        failure = _call(fn, clients, lock, b"hi\n", clients.now()[3])
        for thread in others:
            thread.join(2.0)
        got = failure or f"{_got(far, 'bce')}; then the list is [{', '.join(map(repr, clients.now()))}]"
        return Outcome(_joins_and_leaves.call, got, _joins_and_leaves.expected,
                       got == _joins_and_leaves.expected)


@scenario("broadcast([a], lock, 16 MB, sender=None)", "a gets all 16 MB")
def _big(fn, guard):
    message = bytes(range(256)) * (BIG // 256)
    with _room(guard, "a") as (clients, far, lock):
        box: dict = {}
        reader = threading.Thread(target=_read_all, args=(far["a"], box), name="big-reader",
                                  daemon=True)
        reader.start()
        failure = _call(fn, clients, lock, message, None)
        with contextlib.suppress(OSError):
            clients[0].sock.shutdown(socket.SHUT_WR)   # end of message: the reader stops at EOF
        reader.join(5)
        data = box.get("data", b"")
        got = failure or ("a gets all 16 MB" if data == message else
                          f"a gets only {len(data):,} of {len(message):,} bytes")
        return Outcome(_big.call, got, _big.expected, got == _big.expected)


def _read_all(sock, box: dict) -> None:
    sock.settimeout(2.0)
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    box["data"] = b"".join(chunks)


BROADCAST = {
    "everyone alive": _all_alive,
    "a dead client first in the list": _dead_first,
    "clients joining and leaving meanwhile": _joins_and_leaves,
    "a message bigger than the socket buffers": _big,
}


def check_broadcast(fn):
    return check("broadcast", fn, BROADCAST)


EXERCISES = [
    Exercise('03_chat', 'private_message', check=check_private_message, naive=naive_private_message,
             todo='split the line, find the member, put the message in their outbox only.'),
    Exercise('03_chat', 'broadcast', check=check_broadcast, naive=naive_broadcast,
             todo="start from the tutorial's broadcast and fix its four bugs."),
]
