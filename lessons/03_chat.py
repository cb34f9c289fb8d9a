"""A chat room: one thread per client, a lock around what they share, and an outbox per client.

    python -m lessons.03_chat                       # demo: three people talk
    python -m lessons.03_chat serve [--port 9903]   # the room; try it with `nc 127.0.0.1 9903`
    python -m lessons.03_chat client [--name NAME]  # an interactive client (stdin may be a pipe)

The protocol is UTF-8 lines ending in \\n (\\r\\n works too), so netcat is a client too:

    server: * welcome to the chat room; what is your name?
    you:    alice                  "! ..." if taken or invalid: try another name
    server: * welcome, alice! /who lists who is here, /quit leaves
    you:    hello                  every OTHER member gets "alice: hello"
    you:    /who                   "* online: alice, bob" (sorted, one line)
    you:    /quit                  "* bye", then the server closes
    Others see "* alice joined", "* alice left", or "* alice left (idle)" after
    --idle-timeout seconds of silence (an empty line counts as speaking).
    A line over 4096 bytes gets "! line too long", and the server hangs up.

Two threads per client, and nobody waits for anybody else:

    reader thread: recv -> lines -> room.broadcast(line): under room's lock, put
                                    the line in every other member's outbox
    writer thread: outbox (bounded) -> sendall   (a full outbox: too slow, dropped)

The protocol's limits, texts and name rules come from lessons/kit/chat.py, its
tested copy, which later rooms use too.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import socket
import threading
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

# The protocol's limits and texts, and its name rules (name_key, name_problem): the kit's
# tested copy, the one every room uses. (MAX_SEND: the notebook shows it as chat.MAX_SEND.)
from lessons.kit.chat import (ANSI_ESCAPE, AS_SPACE, BYE, CROWDED, FLAG, GREETING, IDLE_BYE,
                              IDLE_TIMEOUT, LEFT, LEFT_IDLE, LEFT_SLOW, MAX_LINE,
                              MAX_SEND, MAX_TEXT, MAX_WAITING, NAME_MIXED, NAMING_TIMEOUT,
                              NAMING_TOO_SLOW, RESERVED_FDS, ROOM_FULL, TAKEN, TOO_LONG, UNKNOWN,
                              encode, fit, name_key, name_problem, room_limits, shows_safely,
                              welcome, who_line)
from lessons.kit.cli import (client_command, lesson_parser, main_guard, need_open_files,
                             run_client, seconds, serve_command, serve_forever, whole_number)
from lessons.kit.lineclient import ChatClient, chat_session
from lessons.kit.server import JOIN_TIMEOUT, accept_until, fd_limit, running
from lessons.kit.stream import LineTooLong, read_lines
from lessons.kit.threaded import recorded
from lessons.kit.transcript import ACCEPT, CLOSE, ERROR, NOTE, SERVER, Transcript

TITLE = "Chat room with threads"
OUTBOX_LIMIT = 1 << 20   # bytes queued for one client before we call it too slow
BATCH = 1 << 16          # bytes worth one send: a writer wakes for this much, or for one line
LINGER = 0.05            # seconds a busy room's writer waits for a batch to gather


# --- The original tutorial's server, kept to be broken in the notebook. ---

def naive_chat_server(listener, stop, log, clients=None):   # (ours) its receive(), run by the kit
    clients = [] if clients is None else clients   # (ours) a fresh list per run, or the caller's

    def broadcast(message, client):
        for c in clients:
            if c != client:
                c.send(message)

    def handle(client):
        while not stop.is_set():                    # (ours) while True:, until stopped
            try:
                message = client.recv(1024)
                broadcast(message, client)
            except:
                index = clients.index(client)
                clients.remove(client)
                client.close()
                break

    server_socket = listener                        # (ours) the kit made it: port 0, listening
    threads = []                                    # (ours) to join them when stopped
    for client, addr in accept_until(server_socket, stop, log):   # (ours) while True: accept()
        log.record(SERVER, ACCEPT, f"client {len(threads) + 1}")  # (ours) instead of print()

        clients.append(client)
        thread = threading.Thread(target=recorded(handle, log), args=(client,))   # (ours)
        thread.daemon = True                        # (ours) and recorded(): no crash printed
        thread.start()
        threads.append(thread)                      # (ours)
    for thread in threads:                          # (ours) leave no thread behind
        thread.join(JOIN_TIMEOUT)                   # (ours)


# --- Cleaning what people send (names are checked by the kit's name_problem). ---

def clean(raw: bytes) -> str:
    """Decode a line, drop what could attack or fool someone else's screen, cap its size."""
    text = ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace")).translate(AS_SPACE)
    if not text.isprintable():     # something to look at, one character at a time
        parts = FLAG.split(text)   # odd-numbered parts are whole flag sequences: keep them
        text = "".join(part if i % 2 else "".join(filter(shows_safely, part))
                       for i, part in enumerate(parts))
    return fit(text, MAX_TEXT)


# --- The room: shared state, guarded by one lock. ---

class Outbox:
    """Lines waiting to be written to one client. Bounded, and put() never blocks.

    Its writer is woken by the first line, or once a batch's worth is waiting, not by
    every line: with hundreds of clients, threads woken for each line spend their time
    handing the GIL to each other (200 clients sending 50 lines each: 100 s of server
    time that way, 5 s this way, on a 2-core machine)."""

    def __init__(self, limit: int = OUTBOX_LIMIT):
        self._lines: collections.deque[bytes] = collections.deque()
        self._size, self._limit = 0, limit
        self._lock = threading.Lock()   # a plain Lock: put() runs once per member per line
        self._ready = threading.Condition(self._lock)
        self.closed = False

    def put(self, line: str | bytes) -> bool:
        """Queue a line (or bytes from encode()); False if full (too slow) or closed (leaving)."""
        data = line if isinstance(line, bytes) else encode(line)
        with self._lock:
            if self.closed or self._size + len(data) > self._limit:
                return False
            self._lines.append(data)
            self._size += len(data)
            if self._size == len(data) or self._size >= BATCH:   # the first line, or a batch
                self._ready.notify()
            return True

    def take_all(self, linger: float = 0.0) -> bytes | None:
        """Everything queued, as one write; None once closed and drained. With linger, after
        the first line, wait up to that long for a batch's worth (a busy room's writer)."""
        with self._lock:
            self._ready.wait_for(lambda: self._lines or self.closed)
            if linger:
                self._ready.wait_for(lambda: self._size >= BATCH or self.closed, linger)
            data = b"".join(self._lines)
            self._lines.clear()
            self._size = 0
            return data or None

    def close(self, drop: bool = False) -> None:
        """No more lines: the writer sends what is queued (nothing, with drop) and ends."""
        with self._lock:
            self.closed = True
            if drop:
                self._lines.clear()
            self._ready.notify()


@dataclass(eq=False)
class Member:
    """Someone in the room: the name it took, its socket, and its outbox."""
    name: str
    conn: socket.socket
    outbox: Outbox


class Room:
    """Who is here, and who is still choosing a name, under one lock; the one place that
    talks to everyone."""

    def __init__(self, log: Transcript, max_members: int, max_waiting: int):
        self._members: dict[str, Member] = {}             # name_key(name) -> member
        self._waiting: dict[socket.socket, Outbox] = {}   # not named yet, oldest first
        self._lock = threading.Lock()
        self.log, self.max_members, self.max_waiting = log, max_members, max_waiting

    def arrive(self, conn: socket.socket, outbox: Outbox) -> bool:
        """Greet a new connection; False if the room is full. When too many are choosing a
        name, the one waiting longest is dropped, so silent connections cannot lock people out."""
        with self._lock:
            if len(self._members) >= self.max_members:
                return False
            outbox.put(GREETING)
            self._waiting[conn] = outbox
            if len(self._waiting) <= self.max_waiting:
                return True
            oldest = next(iter(self._waiting))
            dropped = self._waiting.pop(oldest)
        dropped.put(CROWDED)
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RD)   # its reader sees EOF; its writer still says why
        return True

    def join(self, member: Member) -> str | None:
        """Add a member and welcome it; returns the problem line if it cannot join."""
        key = name_key(member.name)
        with self._lock:   # check and insert in one step, or two clients could both get "alice"
            if key in self._members:
                return TAKEN
            if len(self._members) >= self.max_members:
                return ROOM_FULL
            self._waiting.pop(member.conn, None)
            self.log.record(SERVER, NOTE, detail=f"{member.name} joined")
            member.outbox.put(welcome(member.name))   # first: no message can overtake it
            self._members[key] = member
            too_slow = self._queue(f"* {member.name} joined", sender=member)
        self._drop(too_slow)
        return None

    def leave(self, member: Member, how: str = LEFT) -> None:
        """Remove a member and tell the others; leaving twice announces once."""
        with self._lock:
            if self._members.get(name_key(member.name)) is not member:
                return
            del self._members[name_key(member.name)]
            self.log.record(SERVER, NOTE, detail=f"{member.name} {how}")
            too_slow = self._queue(f"* {member.name} {how}")
        self._drop(too_slow)

    def depart(self, conn: socket.socket) -> None:
        """A connection that never took a name has gone."""
        with self._lock:
            self._waiting.pop(conn, None)

    def find(self, name: str) -> Member | None:
        """The member with this name (compared by name_key), or None."""
        with self._lock:
            return self._members.get(name_key(name))

    def who(self) -> str:
        """The answer to /who: every member's name, sorted."""
        with self._lock:
            names = sorted((m.name for m in self._members.values()), key=name_key)
        return who_line(names)   # one line of at most MAX_SEND bytes: "... and N more"

    def broadcast(self, line: str, sender: Member | None = None) -> None:
        """Queue line for everyone but the sender. Never waits on a client."""
        with self._lock:   # one line at a time into every outbox: everyone sees the same order
            too_slow = self._queue(line, sender)
        self._drop(too_slow)

    def _queue(self, line: str, sender: Member | None = None) -> list[Member]:
        """(Under the lock.) Put line in every outbox but the sender's; return who is too slow."""
        data = encode(line)   # once, however many members
        return [m for m in self._members.values() if m is not sender and not m.outbox.put(data)]

    def _drop(self, too_slow: list[Member]) -> None:
        """(Outside the lock: leave() takes it again.) Disconnect members who fell behind."""
        for member in too_slow:
            self.leave(member, LEFT_SLOW)
            member.outbox.close(drop=True)
            with contextlib.suppress(OSError):
                member.conn.shutdown(socket.SHUT_RDWR)   # wakes its reader and writer


# --- One client: a reader (its own thread) and a writer. ---

def handle(conn: socket.socket, outbox: Outbox, room: Room, who: str,
           idle_timeout: float | None, commands: dict) -> None:
    """Serve one client: its name first, then its lines, until it leaves."""
    writer = threading.Thread(target=write_lines, args=(conn, outbox), name=f"{who} writer",
                              daemon=True)
    writer.start()
    member, how = None, LEFT
    try:
        lines = read_lines(conn, MAX_LINE)
        member = choose_name(lines, conn, outbox, room)   # within the naming timeout
        if member is not None:
            conn.settimeout(idle_timeout)
            dispatch(lines, member, room, commands)
    except LineTooLong:
        outbox.put(TOO_LONG)
    except TimeoutError:     # silent for too long: while naming, or as a member
        outbox.put(NAMING_TOO_SLOW if member is None else IDLE_BYE)
        how = LEFT_IDLE
    except OSError as exc:   # reset, or shut down by a stop or as too slow
        room.log.record(SERVER, ERROR, who, detail=type(exc).__name__)
    finally:
        if member is not None:
            room.leave(member, how)
        else:
            room.depart(conn)
        outbox.close()           # the writer sends what is queued, then ends
        writer.join(2.0)
        if writer.is_alive():    # stuck sending to a client that stopped reading
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            writer.join(JOIN_TIMEOUT)
        conn.close()
        room.log.record(SERVER, CLOSE, who)


def choose_name(lines, conn: socket.socket, outbox: Outbox, room: Room) -> Member | None:
    """Read lines until one is a name the room takes; None if the client leaves first."""
    for raw in lines:
        name = clean(raw)
        problem = name_problem(name)
        if problem is None:
            member = Member(name, conn, outbox)
            problem = room.join(member)
            if problem is None:
                return member
        outbox.put(problem)
    return None


def dispatch(lines, member: Member, room: Room, commands: dict) -> None:
    """Every line after the name: a /command, or a message for everyone else."""
    for raw in lines:
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
        elif command in commands:   # added on top (the exercises): a bug costs the command only
            try:
                member.outbox.put(commands[command](room, member, text))
            except Exception as exc:
                failure = f"{command} failed on the server ({type(exc).__name__})"
                room.log.record(SERVER, ERROR, member.name, detail=failure)
                member.outbox.put(f"! {failure}")
        else:
            member.outbox.put(UNKNOWN)


def write_lines(conn: socket.socket, outbox: Outbox) -> None:
    """The writer thread: send what is queued, many lines in one sendall, until closed."""
    linger = 0.0
    try:
        while (data := outbox.take_all(linger)) is not None:
            conn.sendall(data)
            # Lines came faster than one at a time: a busy room. Let the next ones gather.
            linger = LINGER if data.count(b"\n") > 1 else 0.0
    except OSError:   # the client is gone: wake its reader, which cleans up
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


def serve(listener: socket.socket, stop, log: Transcript, *,
          idle_timeout: float = IDLE_TIMEOUT, naming_timeout: float = NAMING_TIMEOUT,
          max_members: int | None = None, max_waiting: int | None = None,
          commands: dict | None = None) -> None:
    """The room, a thread per client, until stopped. A timeout of 0 means none; the
    room's size defaults to what this process has file descriptors for."""
    members, waiting = room_limits(fd_limit())
    room = Room(log, max_members or members, max_waiting or waiting)
    idle_timeout, commands = idle_timeout or None, commands or {}
    threads: list[threading.Thread] = []
    arrivals = accept_until(listener, stop, log, idle_timeout=naming_timeout or None)
    for number, (conn, _) in enumerate(arrivals, 1):
        who, outbox = f"client {number}", Outbox()
        log.record(SERVER, ACCEPT, who)
        if not room.arrive(conn, outbox):   # here, in the order they came: oldest first
            with conn, contextlib.suppress(OSError):
                conn.sendall(encode(ROOM_FULL))   # a fresh socket takes one line at once
            log.record(SERVER, CLOSE, who, detail="the room is full")
            continue
        thread = threading.Thread(target=handle, name=who, daemon=True,
                                  args=(conn, outbox, room, who, idle_timeout, commands))
        thread.start()
        threads = [t for t in threads if t.is_alive()] + [thread]
    for thread in threads:   # stopping shut every connection down, so each ends soon
        thread.join(JOIN_TIMEOUT)


# --- The client for people, the demo, and the command line. ---

def client(args) -> int:
    """Chat from a terminal or a pipe; ends when the server closes, and says why."""
    with ChatClient((args.host, args.port), timeout=args.timeout) as room:
        return chat_session(room, args.name)


def demo() -> int:
    """Three people talk, an impostor tries a look-alike name; exits 0 if all went as shown."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 03: a chat room")
    with running(serve) as room:
        alice, bob = ChatClient(room.address, "alice"), ChatClient(room.address, "bob")
        rows = [("bob joins", alice.next_line(), "", "")]
        carol = ChatClient(room.address, "carol")
        rows.append(("carol joins", alice.next_line(), bob.next_line(), ""))
        alice.say("hi everyone")
        rows.append(("alice: hi everyone", "", bob.next_line(), carol.next_line()))
        carol.say("/who")
        rows.append(("carol: /who", "", "", carol.next_line()))
        impostor = ChatClient(room.address, "аlice")   # a Cyrillic а, then Latin lice
        bob.say("/quit")
        rows.append(("bob: /quit", alice.next_line(), bob.next_line(), carol.next_line()))
        for person in (alice, bob, carol, impostor):
            person.close()
    table = Table("action", "alice", "bob", "carol", title_justify="left",
                  title="who did what, and what each one received")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"'аlice' with a Cyrillic а was told: {impostor.welcome}")
    expected = [("bob joins", "* bob joined", "", ""),
                ("carol joins", "* carol joined", "* carol joined", ""),
                ("alice: hi everyone", "", "alice: hi everyone", "alice: hi everyone"),
                ("carol: /who", "", "", "* online: alice, bob, carol"),
                ("bob: /quit", "* bob left", BYE, "* bob left")]
    return 0 if rows == expected and impostor.welcome == NAME_MIXED else 1


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "03_chat")
    serve_cmd = serve_command(commands, port=9903)
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="drop a member silent this long (default %(default)g; 0: never)")
    serve_cmd.add_argument("--naming-timeout", type=seconds(0, 3600), default=NAMING_TIMEOUT,
                           metavar="SECONDS", help="drop a connection that gives no name within "
                                                   "this (default %(default)g)")
    serve_cmd.add_argument("--max-members", type=whole_number(1, 10_000, "--max-members"),
                           metavar="N", help="named members at most, up to 10,000: two threads "
                                             "each (default: what this process has file "
                                             "descriptors for, up to 500)")
    client_cmd = client_command(commands, port=9903)
    client_cmd.add_argument("--name", help="your name in the room (else type it when asked)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.max_members:   # a socket is a file: N members need N descriptors, and a few more
            need_open_files(serve_cmd, args.max_members + MAX_WAITING + RESERVED_FDS,
                            f"--max-members {args.max_members:,}")
        room = functools.partial(serve, idle_timeout=args.idle_timeout,
                                 naming_timeout=args.naming_timeout, max_members=args.max_members)
        return serve_forever(room, args, "03_chat")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
