"""Lesson 08 exercises: an asyncio client with a deadline and retries, and a broadcast that never waits."""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time

from lessons.exercises import Exercise
from lessons.kit.aio import Serving, within
from lessons.kit.check import Outcome, check, describe, scenario
from lessons.kit.transcript import Transcript

CUT_OFF = 2.5   # seconds a learner's coroutine may run in one scenario before it is cancelled


class CutOff(Exception):
    """The learner's coroutine ran past CUT_OFF seconds and was cancelled."""

    def __str__(self) -> str:
        return f"no result within {CUT_OFF:g} s (waiting for ever?)"


async def _learner(fn, *args, on_cutoff=None, **kwargs):
    """Call the learner's function (a coroutine function, or not); cut it off after CUT_OFF s
    (after ``await on_cutoff()``: the scenario's own cleaning up, such as closing its server's
    connections, so that what the learner's code left open is closed too)."""
    result = fn(*args, **kwargs)
    if not inspect.isawaitable(result):
        return result
    task = asyncio.ensure_future(result)   # a task of its own: its TimeoutError is not ours
    done, _ = await asyncio.wait({task}, timeout=CUT_OFF)
    if not done:
        if on_cutoff is not None:
            await on_cutoff()
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
        raise CutOff()
    return task.result()


def _shown(exc: BaseException) -> str:
    """An exception as a check line shows it."""
    if isinstance(exc, CutOff):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):   # 3.10's is not the built-in one: same to us
        return "raised TimeoutError"
    return describe(exc)


# --- Exercise 1: ask(), with a deadline per try and retries ---

async def naive_ask(address, line: str, timeout: float = 1.0, tries: int = 3) -> str:
    """The common first attempt: connect, send, and wait for the reply, however long."""
    reader, writer = await asyncio.open_connection(*address[:2])
    writer.write(line.encode() + b"\n")
    reply = await reader.readline()   # no deadline, and one try only
    writer.close()
    return reply.decode().rstrip("\n")


HANG_UP = "hang up"


class Server:
    """A line server for one scenario: ``answer(n)`` says what the n-th connection (from 1)
    gets: a reply, None (nothing, ever) or HANG_UP. Counts connections opened and closed."""

    def __init__(self, answer, listen_after: float = 0.0):
        self.answer, self.listen_after = answer, listen_after
        self.opened = self.closed = 0

    async def handle(self, reader, writer, who) -> None:
        self.opened += 1
        what = self.answer(self.opened)
        try:
            line = await reader.readline()
            if what == HANG_UP:
                return
            if what is not None and line:
                writer.write(what.encode() + b"\n")
            await reader.read()             # until the client closes
        finally:
            self.closed += 1

    @contextlib.asynccontextmanager
    async def running(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))         # bound, and not listening yet: connecting is refused
        address = sock.getsockname()
        self.serving, self.opened, self.closed = None, 0, 0   # a fresh count for each run

        async def start():
            await asyncio.sleep(self.listen_after)
            sock.listen()
            self.serving = await Serving.streams(self.handle, sock, Transcript())

        starting = asyncio.ensure_future(start())
        if not self.listen_after:
            await starting
        try:
            yield address
        finally:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await self.hang_up()
            sock.close()

    async def hang_up(self) -> None:
        """Close every connection (a reset), and give the clients a moment to notice it."""
        if self.serving is not None:
            await self.serving.close()
            self.serving = None
        await asyncio.sleep(0.05)


def _ask(call: str, server: Server, expected, timeout: float = 0.3, tries: int = 3,
         all_closed: bool = False):
    """A scenario for ask(): ``expected`` is the reply (a str) or the error class it raises."""
    wanted = f"raised {expected.__name__}" if isinstance(expected, type) else describe(expected)

    @scenario(call, wanted)
    def run(fn, guard):
        async def go() -> str:
            async with server.running() as address:
                started = time.monotonic()
                try:
                    got = describe(await _learner(fn, address, "hello", timeout=timeout,
                                                  tries=tries, on_cutoff=server.hang_up))
                except Exception as exc:   # an error of the class expected shows as just that
                    error = TimeoutError if isinstance(exc, asyncio.TimeoutError) else type(exc)
                    good = isinstance(expected, type) and issubclass(error, expected)
                    got = wanted if good else _shown(exc)
                if all_closed and got == wanted:   # and every connection it made is closed
                    deadline = time.monotonic() + 1.0
                    while server.closed < server.opened and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    if server.closed < server.opened:
                        got = f"{got}, with {server.opened - server.closed} connection(s) left open"
                if got == wanted and time.monotonic() - started > 2.0:
                    got = f"{got}, after {time.monotonic() - started:.1f} s"
                return got
        got = asyncio.run(go())
        return Outcome(call, got, wanted, got == wanted)
    return run


ASK = {
    "a server that answers": _ask(
        "ask(address, 'hello')", Server(lambda n: "HELLO"), "HELLO"),
    "a server that never answers": _ask(
        "ask(address, 'hello', timeout=0.3, tries=3)", Server(lambda n: None),
        TimeoutError, all_closed=True),
    "a server that answers the second try": _ask(
        "ask(address, 'hello', timeout=0.3, tries=3)",
        Server(lambda n: "HELLO" if n >= 2 else None), "HELLO"),
    "a server that starts listening late": _ask(
        "ask(address, 'hello', timeout=0.3, tries=3), listening after 0.2 s",
        Server(lambda n: "HELLO", listen_after=0.2), "HELLO"),
    "a server that hangs up at once": _ask(
        "ask(address, 'hello', timeout=0.3, tries=2)", Server(lambda n: HANG_UP),
        ConnectionError, tries=2),
}


def check_ask(fn):
    """Five servers: polite, silent, slow to start, silent once, and one that hangs up."""
    return check("ask", fn, ASK, deadline=CUT_OFF + 2.0)


# --- Exercise 2: broadcast() without ever waiting ---

async def naive_broadcast(writers: dict, line: bytes, sender=None, limit: int = 1048576) -> list:
    """The common first attempt: write to each, and wait until each has taken it."""
    for name, writer in writers.items():
        if name != sender:
            writer.write(line)
            await writer.drain()   # waits for as long as this member does not read
    return []


@contextlib.asynccontextmanager
async def _room(names: str, sleepy: str = "", leaving: str = ""):
    """Members by one-letter name: the server's writers (a dict), and each member's reader.
    ``sleepy`` members never read, and their buffers are already past 64 KiB;
    ``leaving`` members' writers have just been closed."""
    arrived: asyncio.Queue = asyncio.Queue()

    async def handle(reader, writer, who):
        await arrived.put(writer)
        await reader.read()                 # until the member goes

    listener = socket.create_server(("127.0.0.1", 0))
    async with await Serving.streams(handle, listener, Transcript()) as serving:
        writers, readers, clients = {}, {}, []
        for name in names:
            reader, client = await asyncio.open_connection(*serving.address)
            clients.append(client)
            writers[name], readers[name] = await within(2.0, arrived.get()), reader
        for name in sleepy:                 # fill its buffers: the kernel's first, then ours
            while writers[name].transport.get_write_buffer_size() <= 65536:
                writers[name].write(b"z" * 65536)
                await asyncio.sleep(0)
        for name in leaving:
            writers[name].close()
        try:
            yield writers, readers
        finally:
            for client in clients:
                client.close()


async def _heard(reader, size: int) -> bytes:
    """What a member received within 0.3 s (at most ``size`` bytes)."""
    try:
        return await within(0.3, reader.readexactly(size))
    except TimeoutError:
        return b""
    except asyncio.IncompleteReadError as partial:
        return partial.partial


def _broadcast(call: str, expected: str, names: str, sender, lines: int = 1, sleepy: str = "",
               leaving: str = "", limit: int = 65536):
    @scenario(call, expected)
    def run(fn, guard):
        async def go():
            async with _room(names, sleepy, leaving) as (writers, readers):
                sent = [b"line %d\n" % i for i in range(lines)]
                slow: set = set()
                for line in sent:
                    try:
                        result = await _learner(fn, writers, line, sender, limit=limit)
                    except Exception as exc:
                        return _shown(exc)
                    slow |= set(result or [])
                heard = []
                for name in names:
                    if name in sleepy or name in leaving:
                        continue
                    got = await _heard(readers[name], len(b"".join(sent)))
                    heard.append(f"{name} {'got it' if got == b''.join(sent) else 'did not'}")
                return ", ".join(heard) + f"; too slow: {sorted(slow)}"
        got = asyncio.run(go())
        return Outcome(call, got, expected, got == expected)
    return run


BROADCAST = {
    "everyone reads": _broadcast(
        "broadcast({a, b, c}, b'line 0\\n', sender='a')",
        "a did not, b got it, c got it; too slow: []", "abc", "a"),
    "a notice from the room": _broadcast(
        "broadcast({a, b}, b'line 0\\n', sender=None)",
        "a got it, b got it; too slow: []", "ab", None),
    "a member who stopped reading": _broadcast(
        "broadcast({a, b, s}, line, sender='a', limit=65536), s's buffer full",
        "a did not, b got it; too slow: ['s']", "abs", "a", sleepy="s"),
    "a member who is leaving": _broadcast(
        "broadcast({a, b, x}, line, sender='a'), x's writer just closed",
        "a did not, b got it; too slow: []", "abx", "a", leaving="x"),
    "a hundred lines in a row": _broadcast(
        "100 x broadcast({a, b}, b'line N\\n', sender='a')",
        "a did not, b got it; too slow: []", "ab", "a", lines=100),
}


def check_broadcast(fn):
    """Members who read, one who stopped reading, one who is leaving."""
    return check("broadcast", fn, BROADCAST, deadline=CUT_OFF + 2.0)


EXERCISES = [
    Exercise("08_asyncio", "ask", check=check_ask, naive=naive_ask,
             todo="one deadline per try (connect included); retry after a pause that doubles."),
    Exercise("08_asyncio", "broadcast", check=check_broadcast, naive=naive_broadcast,
             todo="write() to each member whose buffer has room; never await drain()."),
]
