"""Chat fan-out, measured from outside: how fast a room delivers, and what an idle member costs.

    with ServerProcess.lesson("08_asyncio", "--quiet", "--max-members", "1000") as room:
        result = measure(room.address, members=1000, duration=2.0)
        result.per_second            # lines delivered per second, to all members together
        result.complete              # every line reached every other member, in each sender's order
        idle_member_kib(room.address, 1000, room.rss_kib)   # KiB of server memory per idle member

For any room that speaks lesson 03's protocol (lessons 03 and 08 do), best run in a
process of its own (kit.processes.ServerProcess), so that its memory is its own
and its threads do not share a GIL with these clients. Start it with --quiet: a
room that logs every arrival to a pipe nobody reads stops when the pipe is full. Here one thread reads
every member's socket through a selector: 1,000 members need no 1,000 threads.

Fan-out: each line a member says goes to every other member, so with N members
one message becomes N - 1 deliveries. ``measure`` makes ``senders`` members talk in
rounds for ``duration`` seconds, never more than ``window`` rounds ahead of the
slowest listener (so no room drops anyone as too slow), then waits for every line.
"""
from __future__ import annotations

import contextlib
import selectors
import socket
import time
from dataclasses import dataclass
from typing import Callable

from . import chat
from .server import raise_fd_limit
from .stream import LineBuffer


@dataclass
class Fanout:
    """One measurement: the room's size, what was said, what was delivered, how fast."""
    members: int
    senders: int
    sent: int = 0            # lines said
    delivered: int = 0       # lines received, all members together
    seconds: float = 0.0     # from the first line said to the last line received
    complete: bool = False   # every line reached every other member, in order
    error: str = ""          # why it could not be measured ("" if it was)

    @property
    def per_second(self) -> float:
        """Lines delivered per second."""
        return self.delivered / self.seconds if self.seconds else 0.0


class Members:
    """``n`` members of the room at ``address``, joined and read by one selector.

    ``lines[i]`` holds the lines member i received (bytes, without newlines) since
    the last ``forget()``. A context manager: leaving closes every socket.
    """

    def __init__(self, address, n: int, prefix: str = "m", timeout: float = 30.0):
        raise_fd_limit(n + 1024)
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.lines: list[list[bytes]] = []
        self.buffers: list[LineBuffer] = []
        self.gone: set[int] = set()          # members whose connection the room closed
        try:
            for i in range(n):
                sock = socket.create_connection(address[:2], timeout=timeout)
                self.socks.append(sock)
                self.lines.append([])
                self.buffers.append(LineBuffer(chat.MAX_SEND))
                self.sel.register(sock, selectors.EVENT_READ, i)
                sock.sendall(f"{prefix}{i}\n".encode())
                self.read(0)                    # keep up with the joins as they come
            # Each hears the greeting, its welcome, and the joins of everyone after it.
            self.read_until(lambda lines: sum(map(len, lines)) >= 2 * n + n * (n - 1) // 2
                            or self.refused(), timeout)
        except BaseException:
            self.close()
            raise

    def refused(self) -> str:
        """Why the room did not take everyone ("" if it did): its refusal, as it said it."""
        for i in sorted(self.gone):
            if len(self.lines[i]) < 2 or not self.lines[i][1].startswith(b"* welcome"):
                return (self.lines[i] or [b"(closed without a word)"])[-1].decode(errors="replace")
        for lines in self.lines:
            if lines and lines[0] != chat.GREETING.encode():
                return lines[0].decode("utf-8", errors="replace")
            if len(lines) > 1 and not lines[1].startswith(b"* welcome"):
                return lines[1].decode("utf-8", errors="replace")
        return ""

    def read(self, wait: float = 0.0) -> None:
        """Read every socket that has something, waiting at most ``wait`` for the first."""
        for key, _ in self.sel.select(wait):
            data = key.fileobj.recv(1 << 16)
            if not data:                        # the room hung up: refused, or dropped it
                self.sel.unregister(key.fileobj)
                self.gone.add(key.data)
                continue
            self.lines[key.data] += self.buffers[key.data].feed(data)

    def read_until(self, done: Callable[[list], bool], timeout: float) -> None:
        """Read until ``done(lines)``; ConnectionError if the room closes a member's connection."""
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            if self.gone:
                raise ConnectionError(f"the room closed member {min(self.gone)}'s connection")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the room fell behind: {sum(map(len, self.lines)):,} lines "
                                   f"received in {timeout:g} s")
            self.read(0.2)

    def forget(self) -> None:
        self.lines = [[] for _ in self.socks]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.sel.close()

    def __enter__(self) -> "Members":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def measure(address, members: int, senders: int = 10, duration: float = 2.0, window: int = 20,
            timeout: float = 60.0, on_talk: Callable[[], None] | None = None,
            on_done: Callable[[], None] | None = None) -> Fanout:
    """Lines delivered per second by the room at ``address`` with ``members`` in it, while
    ``senders`` of them talk in rounds for ``duration`` seconds. ``on_talk`` is called when
    everyone has joined, just before the first line, and ``on_done`` when the last line has
    arrived: the moments to read CPU clocks (joining costs the room work of its own)."""
    senders = max(1, min(senders, members))
    result = Fanout(members, senders)
    try:
        with Members(address, members, timeout=timeout) as room:
            if room.refused():
                result.error = room.refused()
                return result
            room.forget()
            talkers = room.socks[:senders]
            per_round = [senders - (i < senders) for i in range(members)]   # not one's own
            listeners = [i for i in range(members) if per_round[i]]
            if on_talk:
                on_talk()
            rounds, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration:
                slowest = min(len(room.lines[i]) // per_round[i] for i in listeners)
                ahead = rounds - slowest < window
                if ahead:
                    for sock in talkers:
                        sock.sendall(b"f%d\n" % rounds)
                    rounds += 1
                room.read(0 if ahead else 0.01)
            expected = [rounds * n for n in per_round]
            room.read_until(lambda lines: all(len(got) >= want for got, want in zip(lines, expected)),
                            timeout)
            result.seconds = time.perf_counter() - start
            if on_done:
                on_done()
            result.sent = rounds * senders
            result.delivered = sum(map(len, room.lines))
            result.complete = all(in_order(lines, senders, rounds, own=i)
                                  for i, lines in enumerate(room.lines))
    except (OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def in_order(lines: list[bytes], senders: int, rounds: int, own: int) -> bool:
    """Whether a member heard every other sender's rounds once each, in order."""
    heard: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, text = line.partition(b": ")
        heard.setdefault(name, []).append(text)
    expected = [b"f%d" % r for r in range(rounds)]
    others = {b"m%d" % i for i in range(senders) if i != own}
    return set(heard) == others and all(texts == expected for texts in heard.values())


def idle_member_kib(address, members: int, rss_kib: Callable[[], float],
                    settle: float = 0.3) -> float:
    """KiB of the room's memory per idle member: its resident size (``rss_kib()``, read from
    the server's process) with ``members`` joined and silent, less before they came. Measure
    in a fresh server process: memory a room used before is seldom given back to the system."""
    before = rss_kib()
    with Members(address, members, prefix="idle") as room:
        if room.refused():
            raise ConnectionError(room.refused())
        time.sleep(settle)   # let the room finish what each join started
        with contextlib.suppress(OSError):
            room.read(0)
        after = rss_kib()
    return (after - before) / members
