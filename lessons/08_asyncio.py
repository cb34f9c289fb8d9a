"""asyncio: one thread runs an event loop, and each client is a coroutine that awaits, never blocks.

    python -m lessons.08_asyncio                          # demo: the room and the echo, one thread
    python -m lessons.08_asyncio serve [--port 9908]      # lesson 03's room: `nc 127.0.0.1 9908`
    python -m lessons.08_asyncio serve --echo             # lesson 02's echo server
    python -m lessons.08_asyncio client [--name NAME]     # chat from a terminal (or a pipe)
    python -m lessons.08_asyncio client --echo 'hello'    # one echo, from an asyncio client

Lesson 05 wrote an event loop by hand: a selector, a buffer per socket, a function
per readiness event. asyncio is that loop, shipped with Python. A coroutine
(``async def``) runs until it awaits something that is not ready (a line, a timer,
room in a buffer); the loop then runs another one, and comes back when it is ready.

    handle(alice): await readline() ─┐          ┌─ handle(bob): await readline()
                                     ▼          ▼
                        event loop (one thread): wait for whatever is ready
                                     │ alice's line has arrived
    handle(alice) ◄──────────────────┘ room.broadcast(): writer.write() to each member

One thread serves everyone, so the room's state needs no lock: nothing else runs
between two awaits, and the room's methods never await.

Backpressure (背压). ``writer.write()`` never blocks: it appends to the transport's
buffer. ``await writer.drain()`` waits until that buffer is small again. A
broadcast that awaited drain() for each member would go at the pace of the slowest
reader (``naive_broadcast``, the common first attempt). So the room never waits
for a member: it writes, and a member whose buffer would pass OUTBOX_LIMIT is
dropped as too slow. The transport's buffer is the bounded outbox that lesson 03
built by hand, with a writer thread per client.

The protocol is lesson 03's, from its tested copy in lessons/kit/chat.py. The
chat room's timeouts count from the last whole line a client sent.
"""
from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional

from rich.console import Console
from rich.table import Table

from lessons.kit import adversary
from lessons.kit.aio import (AsyncChatClient, Serving, close_writer, serve_in_foreground,
                             serve_in_thread, within)
from lessons.kit.chat import (BYE, CROWDED, GREETING, IDLE_BYE, IDLE_TIMEOUT, LEFT, LEFT_IDLE,
                              LEFT_SLOW, MAX_LINE, NAMING_TIMEOUT, NAMING_TOO_SLOW, ROOM_FULL,
                              TAKEN, TOO_LONG, UNKNOWN, clean, encode, name_key, name_problem,
                              room_limits, welcome, who_line)
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, seconds,
                             serve_command, whole_number)
from lessons.kit.lineclient import ChatClient, chat_session
from lessons.kit.server import fd_limit, raise_fd_limit
from lessons.kit.stream import LineTooLong
from lessons.kit.transcript import EOF, ERROR, NOTE, RECV, SEND, SERVER, Transcript

TITLE = "asyncio: the chat room and the echo server in coroutines"
RECV_SIZE = 65536
OUTBOX_LIMIT = 1 << 20     # bytes waiting for one member before we call it too slow
READ_LIMIT = MAX_LINE + 1  # the StreamReader's limit: a longest line, and the \r of \r\n
NAMING_GRACE = 1.0         # seconds a new connection has before it counts as crowding others


# --- Echo (lesson 02's contract), with streams and with a Protocol ---

async def echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str,
                      log: Transcript, idle_timeout: Optional[float] = None) -> None:
    """Echo one client until it half-closes: read, write, and drain before reading more.
    A client that sends nothing, or takes nothing, for idle_timeout seconds is let go."""
    try:
        while data := await within(idle_timeout, reader.read(RECV_SIZE)):   # b'' at EOF
            log.record(SERVER, RECV, who, len(data))
            log.record(SERVER, SEND, who, len(data))
            writer.write(data)
            await within(idle_timeout, writer.drain())   # not reading? wait, and read no more
    except TimeoutError:
        log.record(SERVER, ERROR, who, detail=f"idle for {idle_timeout:g} s")
        return
    log.record(SERVER, EOF, who)


class EchoProtocol(asyncio.Protocol):
    """The same echo as callbacks: the loop calls these methods, nobody awaits anything."""

    def __init__(self, who: str, log: Transcript):
        self.who, self.log = who, log

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.log.record(SERVER, RECV, self.who, len(data))
        self.log.record(SERVER, SEND, self.who, len(data))
        self.transport.write(data)

    def pause_writing(self) -> None:     # its buffer passed the high-water mark:
        self.transport.pause_reading()   # read no more until the client catches up

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.log.record(SERVER, EOF, self.who)
        return False                     # close, once what we wrote has been sent

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.log.record(SERVER, "close" if exc is None else "error", self.who,
                        detail="" if exc is None else type(exc).__name__)


# --- The chat room: the common first attempt at a broadcast ---

async def naive_broadcast(writers: list, line: bytes, sender) -> None:
    """Write to everyone and wait for each: the slowest reader sets everyone's pace."""
    for writer in writers:
        if writer is not sender:
            writer.write(line)
            await writer.drain()   # BUG: blocks the sender while this one does not read


# --- The chat room, done right ---

class Outbox:
    """Lines waiting for one client. put() never waits: lines gather in a list that is
    written in one go when the loop next comes round (one system call for every line of
    that pass, not one per line), and the transport sends what the socket takes."""

    def __init__(self, writer: asyncio.StreamWriter, limit: int = OUTBOX_LIMIT):
        self.writer, self.limit = writer, limit
        self.lines: list[bytes] = []
        self.size = 0   # bytes in self.lines

    def put(self, line) -> bool:
        """Queue a line (str, or bytes from encode()); False if this client is too slow: what
        waits for it, here and in the transport's buffer, would pass the limit."""
        data = line if isinstance(line, bytes) else encode(line)
        transport = self.writer.transport
        if transport.is_closing():   # leaving already: it just misses the line
            return True
        if transport.get_write_buffer_size() + self.size + len(data) > self.limit:
            return False
        if not self.lines:
            asyncio.get_running_loop().call_soon(self.flush)
        self.lines.append(data)
        self.size += len(data)
        return True

    def flush(self) -> None:
        """Hand what is queued to the transport: sent at once if the socket has room."""
        if self.lines and not self.writer.transport.is_closing():
            self.writer.write(b"".join(self.lines))
        self.lines.clear()
        self.size = 0


@dataclass(eq=False)
class Member:
    name: str
    outbox: Outbox


class Room:
    """Who is here, and who is still choosing a name. No lock: one thread runs all of this,
    and no method here awaits, so each one runs from start to end with nobody in between."""

    def __init__(self, log: Transcript, max_members: int, max_waiting: int):
        self.members: dict[str, Member] = {}       # name_key(name) -> member
        self.waiting: dict[Outbox, float] = {}     # not named yet: since when, oldest first
        self.crowd_check: Optional[asyncio.TimerHandle] = None
        self.log, self.max_members, self.max_waiting = log, max_members, max_waiting

    def arrive(self, outbox: Outbox) -> bool:
        """A new connection; False if the room is full. When too many are choosing a name,
        those waiting longest are dropped, so silent connections cannot lock people out."""
        if len(self.members) >= self.max_members:
            return False
        self.waiting[outbox] = time.monotonic()
        if len(self.waiting) > self.max_waiting and self.crowd_check is None:
            self.crowd_out()
        return True

    def crowd_out(self) -> None:
        """Drop those waiting longest, until no more than max_waiting are left. Each one has
        NAMING_GRACE seconds first: the loop accepts a burst of connections in one pass,
        and reads the names they sent at once only in a later pass, or later still if busy."""
        self.crowd_check = None
        while len(self.waiting) > self.max_waiting:
            oldest, since = next(iter(self.waiting.items()))
            wait = since + NAMING_GRACE - time.monotonic()
            if wait > 0:   # look again when it has had its grace
                self.crowd_check = asyncio.get_running_loop().call_later(wait, self.crowd_out)
                return
            del self.waiting[oldest]
            oldest.put(CROWDED)
            oldest.flush()
            oldest.writer.close()   # once that is sent; its task then reads EOF and ends

    def join(self, member: Member) -> Optional[str]:
        """Add a member and welcome it; returns the problem line if it cannot join."""
        key = name_key(member.name)
        if key in self.members:
            return TAKEN
        if len(self.members) >= self.max_members:
            return ROOM_FULL
        self.waiting.pop(member.outbox, None)
        member.outbox.put(welcome(member.name))
        self.members[key] = member
        self.log.record(SERVER, NOTE, detail=f"{member.name} joined")
        self.broadcast(f"* {member.name} joined", sender=member)
        return None

    def leave(self, member: Member, how: str = LEFT) -> None:
        """Remove a member and tell the others; leaving twice announces once."""
        if self.members.get(name_key(member.name)) is not member:
            return
        del self.members[name_key(member.name)]
        self.log.record(SERVER, NOTE, detail=f"{member.name} {how}")
        self.broadcast(f"* {member.name} {how}")

    def depart(self, outbox: Outbox) -> None:
        """A connection that never took a name has gone."""
        self.waiting.pop(outbox, None)

    def who(self) -> str:
        names = sorted((m.name for m in self.members.values()), key=name_key)
        return who_line(names)   # one line of at most MAX_SEND bytes: "... and N more"

    def broadcast(self, line: str, sender: Optional[Member] = None) -> None:
        """Queue line for everyone but the sender. Never waits on anyone."""
        data = encode(line)   # once, however many members
        too_slow = [m for m in self.members.values() if m is not sender and not m.outbox.put(data)]
        for member in too_slow:   # after the loop: leave() changes self.members
            self.leave(member, LEFT_SLOW)
            member.outbox.writer.transport.abort()   # drop what waits; its task reads EOF


async def read_line(reader: asyncio.StreamReader) -> Optional[bytes]:
    """The next line without its \\n or \\r\\n; None at EOF. LineTooLong past MAX_LINE bytes."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as eof:   # the end: a last line without \n, or nothing
        line = eof.partial
        if not line:
            return None
    except asyncio.LimitOverrunError:   # over READ_LIMIT bytes, newline or not
        raise LineTooLong(f"over {MAX_LINE:,} bytes") from None
    line = line.removesuffix(b"\n").removesuffix(b"\r")
    if len(line) > MAX_LINE:   # READ_LIMIT leaves room for a \r that was not there
        raise LineTooLong(f"line of {len(line):,} bytes")
    return line


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, who: str,
                 room: Room, idle_timeout: Optional[float], naming_timeout: Optional[float]):
    """Serve one client: its name first, then its lines, until it leaves."""
    outbox = Outbox(writer)
    member, how = None, LEFT
    try:
        if not room.arrive(outbox):
            outbox.put(ROOM_FULL)
            return
        outbox.put(GREETING)
        member = await choose_name(reader, outbox, room, naming_timeout)
        if member is not None:
            await dispatch(reader, member, room, idle_timeout)
    except LineTooLong:
        outbox.put(TOO_LONG)
    except TimeoutError:   # silent for too long: while naming, or as a member
        outbox.put(NAMING_TOO_SLOW if member is None else IDLE_BYE)
        how = LEFT_IDLE
    finally:   # also when cancelled (the server stopping): leave, and the kit closes the stream
        if member is not None:
            room.leave(member, how)
        else:
            room.depart(outbox)
        outbox.flush()   # the last words go out before the close


async def choose_name(reader, outbox: Outbox, room: Room,
                      timeout: Optional[float]) -> Optional[Member]:
    """Read lines until one is a name the room takes; None if the client leaves first."""
    while (raw := await within(timeout, read_line(reader))) is not None:
        name = clean(raw)
        problem = name_problem(name)
        if problem is None:
            member = Member(name, outbox)
            problem = room.join(member)
            if problem is None:
                return member
        outbox.put(problem)
    return None


async def dispatch(reader, member: Member, room: Room, timeout: Optional[float]) -> None:
    """Every line after the name: a /command, or a message for everyone else."""
    while (raw := await within(timeout, read_line(reader))) is not None:
        text = clean(raw)
        command = text.split()[0] if text.startswith("/") else None
        if command is None:
            if text.strip():   # an empty line only says "still here" (for the idle timeout)
                room.broadcast(f"{member.name}: {text}", sender=member)
        elif command == "/quit":
            member.outbox.put(BYE)
            return
        elif command == "/who":
            member.outbox.put(room.who())
        else:
            member.outbox.put(UNKNOWN)


# --- A blocking call inside a coroutine stops every client ---

LOOKUP = 0.5   # seconds a slow lookup takes


async def answer(reader, writer, who: str, blocking: bool) -> None:
    """Answer each line; a line starting with "slow" needs a lookup of LOOKUP seconds (as
    a database driver, requests.get() or socket.gethostbyname() would: a blocking call)."""
    while line := await reader.readline():
        if line.startswith(b"slow"):
            if blocking:
                time.sleep(LOOKUP)                          # BUG: the whole loop stops here
            else:
                await asyncio.to_thread(time.sleep, LOOKUP)  # a worker thread waits instead
        writer.write(b"answer to " + line)
        await writer.drain()


# --- Starting and stopping: on a running loop (a notebook), in a thread, in the foreground ---

async def start_room(listener: socket.socket, log: Transcript, *,
                     idle_timeout: float = IDLE_TIMEOUT, naming_timeout: float = NAMING_TIMEOUT,
                     max_members: Optional[int] = None,
                     max_waiting: Optional[int] = None) -> Serving:
    """Start the room on the running loop (a timeout of 0 means none); returns the Serving."""
    members, waiting = room_limits(fd_limit())
    room = Room(log, max_members or members, max_waiting or waiting)
    handler = functools.partial(handle, room=room, idle_timeout=idle_timeout or None,
                                naming_timeout=naming_timeout or None)
    return await Serving.streams(handler, listener, log, limit=READ_LIMIT)


async def start_echo(listener: socket.socket, log: Transcript,
                     idle_timeout: Optional[float] = None) -> Serving:
    """Start the streams echo server on the running loop (idle_timeout: see echo_stream)."""
    handler = functools.partial(echo_stream, log=log, idle_timeout=idle_timeout or None)
    return await Serving.streams(handler, listener, log)


async def start_echo_protocol(listener: socket.socket, log: Transcript) -> Serving:
    """Start the Protocol echo server on the running loop."""
    return await Serving.protocols(functools.partial(EchoProtocol, log=log), listener, log)


def serve(listener, stop, log, **options) -> None:
    """The room as every server in the workbook runs: serve(listener, stop, log), in a thread
    of its own (kit.running), with an event loop of its own, until stop is set."""
    serve_in_thread(functools.partial(start_room, **options), listener, stop, log)


def serve_echo(listener, stop, log, idle_timeout: Optional[float] = None) -> None:
    """The streams echo server, as serve(listener, stop, log)."""
    serve_in_thread(functools.partial(start_echo, idle_timeout=idle_timeout), listener, stop, log)


def serve_echo_protocol(listener, stop, log) -> None:
    """The Protocol echo server, as serve(listener, stop, log)."""
    serve_in_thread(start_echo_protocol, listener, stop, log)


# --- Clients as coroutines ---

async def echo_client(address, message: bytes, timeout: float = 5.0) -> bytes:
    """Send message, half-close, and return the whole reply. Sending and reading run as
    two tasks, so a large message cannot deadlock against the echo (lesson 02)."""
    async def send() -> None:
        writer.write(message)
        await writer.drain()
        writer.write_eof()   # "I have no more to say": the server reads EOF

    async def receive() -> bytes:   # until EOF; never more than we sent, whatever the server is
        reply = bytearray()
        while chunk := await reader.read(RECV_SIZE):
            reply += chunk
            if len(reply) > len(message):
                raise ConnectionError(f"the server sent more than the {len(message):,} bytes sent:"
                                      " not an echo")
        return bytes(reply)

    reader, writer = await within(timeout, asyncio.open_connection(*address[:2]))
    sending = asyncio.ensure_future(send())
    try:
        reply = await within(timeout, receive())
        await sending
        return reply
    finally:
        sending.cancel()              # the reply went wrong while we were still sending
        await close_writer(writer)    # (a server that reads nothing cannot hold us either)


# --- The demo and the command line ---

async def conversation() -> list[tuple]:
    """Three people talk in a room that runs, with them, in this one thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    async with await start_room(listener, Transcript()) as room:
        alice = await AsyncChatClient.join(room.address, "alice")
        bob = await AsyncChatClient.join(room.address, "bob")
        rows = [("bob joins", await alice.next_line(), "", "")]
        carol = await AsyncChatClient.join(room.address, "carol")
        rows.append(("carol joins", await alice.next_line(), await bob.next_line(), ""))
        await alice.say("hi everyone")
        rows.append(("alice: hi everyone", "", await bob.next_line(), await carol.next_line()))
        await carol.say("/who")
        rows.append(("carol: /who", "", "", await carol.next_line()))
        await bob.say("/quit")
        rows.append(("bob: /quit", await alice.next_line(), await bob.next_line(),
                     await carol.next_line()))
        rows.append(("threads in use", "", "", str(threading.active_count())))
        for person in (alice, bob, carol):
            await person.close()
    return rows


async def slow_reader() -> dict:
    """Lesson 03's sleeper experiment, run in a worker thread while the room serves in this one."""
    listener = socket.create_server(("127.0.0.1", 0))
    async with await start_room(listener, Transcript()) as room:
        return await asyncio.to_thread(adversary.talk_past_a_sleeper, room.address)


async def echoes(size: int = 1 << 20) -> dict:
    """A mebibyte through each echo server: streams and Protocol."""
    results = {}
    for name, start in (("streams", start_echo), ("Protocol", start_echo_protocol)):
        async with await start(socket.create_server(("127.0.0.1", 0)), Transcript()) as server:
            reply = await echo_client(server.address, adversary.flood_pattern(size))
        results[name] = reply == adversary.flood_pattern(size)
    return results


def demo() -> int:
    """The room and both echoes, each in one event loop; exits 0 if all went as shown."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 08: asyncio")
    rows = asyncio.run(conversation())
    table = Table(title="who did what, and what each one received", title_justify="left")
    for column in ("action", "alice", "bob", "carol"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    sleeper = asyncio.run(slow_reader())
    console.print(f"a member who stops reading, while another talks: {sleeper}")
    echoed = asyncio.run(echoes())
    console.print(f"1 MiB echoed byte for byte: {echoed}")
    expected = [("bob joins", "* bob joined", "", ""),
                ("carol joins", "* carol joined", "* carol joined", ""),
                ("alice: hi everyone", "", "alice: hi everyone", "alice: hi everyone"),
                ("carol: /who", "", "", "* online: alice, bob, carol"),
                ("bob: /quit", "* bob left", BYE, "* bob left"),
                ("threads in use", "", "", "1")]
    good_sleeper = {"listener got every message": True, "talker was blocked": False,
                    "sleepy was dropped": True}
    return 0 if rows == expected and sleeper == good_sleeper and all(echoed.values()) else 1


def client(args) -> int:
    """Chat from a terminal or a pipe (lesson 03's client); with --echo, one asyncio echo."""
    if args.echo is not None:
        message = args.echo.encode("utf-8", "surrogateescape")   # argv bytes, as they came
        reply = asyncio.run(echo_client((args.host, args.port), message, args.timeout))
        print(reply.decode("utf-8", errors="replace"))
        return 0
    with ChatClient((args.host, args.port), timeout=args.timeout) as room:
        return chat_session(room, args.name)


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "08_asyncio")
    serve_cmd = serve_command(commands, port=9908)
    serve_cmd.add_argument("--echo", action="store_true",
                           help="serve lesson 02's echo instead of the chat room")
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="drop a member silent this long; with --echo, a client that "
                                "sends or takes nothing this long (default %(default)g; 0: never)")
    serve_cmd.add_argument("--naming-timeout", type=seconds(0, 3600), default=NAMING_TIMEOUT,
                           metavar="SECONDS", help="drop a connection that gives no name within "
                                                   "this (default %(default)g)")
    serve_cmd.add_argument("--max-members", type=whole_number(1, 100_000, "--max-members"),
                           metavar="N", help="named members at most (default: what this "
                                             "process has file descriptors for, up to 500)")
    client_cmd = client_command(commands, port=9908)
    client_cmd.add_argument("--name", help="your name in the room (else type it when asked)")
    client_cmd.add_argument("--echo", metavar="TEXT", help="send TEXT to an echo server, print "
                                                           "the reply")
    args = parser.parse_args(argv)
    if args.command == "serve":
        raise_fd_limit()   # a socket is a file: the default 1,024 (macOS: 256) is few for a room
        start = functools.partial(start_echo, idle_timeout=args.idle_timeout) if args.echo \
            else functools.partial(start_room, idle_timeout=args.idle_timeout,
                                   naming_timeout=args.naming_timeout, max_members=args.max_members)
        return serve_in_foreground(start, args, quiet=args.quiet)
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
