"""A chat room with one thread per client, a lock around shared state, and an outbox per client.

    python -m lessons.03_chat                          # demo: three scripted clients talk
    python -m lessons.03_chat serve [--port 9903]      # the room; try it with `nc 127.0.0.1 9903`
    python -m lessons.03_chat client --name NAME       # an interactive client (stdin may be a pipe)

The protocol is plain UTF-8 lines, ending in \\n (\\r\\n works too), so netcat,
telnet and socat are clients as good as ours:

    server: * welcome to the chat room; what is your name?
    you:    alice                    1-32 printable characters, no spaces;
    server: * welcome, alice!        "! ..." if taken or invalid: try another
    you:    hello                    every OTHER client gets "alice: hello"
    you:    /who                     "* online: alice, bob"  (sorted)
    you:    /quit                    "* bye", then the server closes
    you:    /dance                   "! unknown command"
    others see "* alice joined" and "* alice left". A line over 4096 bytes gets
    "! line too long" and the connection is closed. Invalid UTF-8 is replaced;
    control characters, ANSI escape sequences included, are stripped.

Two threads per client, and nobody waits for anybody else:

    reader thread: recv → lines → room.broadcast(line)
                                      │  under room.lock, put the line in every
                                      ▼  other member's outbox (never blocks)
    writer thread: outbox (bounded) → sendall
    An outbox that fills up means that client stopped reading: it is disconnected,
    and the room goes on.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import queue
import re
import socket
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass

from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.server import JOIN_TIMEOUT, accept_until
from lessons.kit.stream import LineTooLong, read_lines
from lessons.kit.transcript import ACCEPT, CLOSE, ERROR, NOTE, SERVER, Transcript

TITLE = "Chat room with threads"
MAX_LINE = 4096       # bytes in one line, without its newline
MAX_NAME = 32         # characters in a name
OUTBOX_LIMIT = 1 << 20  # bytes queued for one client, beyond what its socket buffers hold,
                        # before we call it too slow
MAX_CLIENTS = 500     # one thread pair each: refuse more than the machine should carry
GREETING = "* welcome to the chat room; what is your name?"


# --- The original tutorial's server, kept to be broken in the notebook. ---

def naive_broadcast(clients: list, message: bytes, sender) -> None:
    """The tutorial's broadcast. Fixed below in Room.broadcast()."""
    for client in clients:                      # BUG: other threads add and remove meanwhile
        if client is not sender:
            try:
                client.send(message)            # BUG: blocks while this client isn't reading,
            except:                             #      stalling the sender; partial sends ignored
                client.close()
                clients.remove(client)          # BUG: removing while iterating skips a client


def naive_chat_server(listener, stop, log):
    """The tutorial's chat server. Fixed below by Room, Outbox and handle()."""
    clients = []                                # BUG: shared by every thread, no lock
    broadcast = functools.partial(naive_broadcast, clients)

    def handle(conn):
        while not stop.is_set():                # (only the stop check is ours)
            try:
                message = conn.recv(1024)       # BUG: one recv() is not one line
                if message:
                    broadcast(message, conn)
                else:
                    clients.remove(conn)        # BUG: ...and keeps looping on a dead socket
            except:                             # BUG: bare except swallows everything, even
                log.record(SERVER, ERROR, detail="exception swallowed")   # its own bugs
                continue

    threads = []
    for conn, _ in accept_until(listener, stop):
        clients.append(conn)
        threads.append(threading.Thread(target=handle, args=(conn,), daemon=True))
        threads[-1].start()
    for t in threads:                           # (ours: leave no threads behind)
        t.join(JOIN_TIMEOUT)


# --- Cleaning what people send. ---

ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
INVISIBLE = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e",   # bidi embeddings and overrides
             "\u2066", "\u2067", "\u2068", "\u2069"}             # bidi isolates


def clean(raw: bytes) -> str:
    """Decode a line and strip what could attack someone else's terminal."""
    text = raw.decode("utf-8", errors="replace")
    text = ANSI_ESCAPE.sub("", text).replace("\t", " ")
    return "".join(ch for ch in text
                   if unicodedata.category(ch) != "Cc" and ch not in INVISIBLE)


def name_problem(name: str) -> str | None:
    if not 1 <= len(name) <= MAX_NAME:
        return f"! a name has 1 to {MAX_NAME} characters; try again"
    if not name.isprintable() or any(ch.isspace() for ch in name):
        return "! a name has no spaces or invisible characters; try again"
    return None


# --- The room: shared state, guarded by one lock. ---

class Outbox:
    """Bytes waiting to be written to one client. Bounded, and put() never blocks."""

    def __init__(self, limit: int = OUTBOX_LIMIT):
        self._lines: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._ready = threading.Condition()
        self._closed = False

    def put(self, line: str) -> bool:
        """Queue a line; False if the outbox is full (the client is too slow)."""
        data = line.encode("utf-8") + b"\n"
        with self._ready:
            if self._closed:
                return True
            if self._size + len(data) > self._limit:
                return False
            self._lines.append(data)
            self._size += len(data)
            self._ready.notify()
            return True

    def take_all(self) -> bytes | None:
        """Everything queued, as one write (b'' never); None once closed and drained."""
        with self._ready:
            self._ready.wait_for(lambda: self._lines or self._closed)
            if not self._lines:
                return None
            data = b"".join(self._lines)
            self._lines.clear()
            self._size = 0
            return data

    def close(self, drop: bool = False) -> None:
        with self._ready:
            self._closed = True
            if drop:
                self._lines.clear()
                self._size = 0
            self._ready.notify()


@dataclass(eq=False)
class Member:
    name: str
    conn: socket.socket
    outbox: Outbox


class Room:
    """Who is here, and the one place that talks to everyone."""

    def __init__(self, log: Transcript):
        self._members: dict[str, Member] = {}   # casefolded name → member
        self._lock = threading.Lock()
        self.log = log

    def join(self, member: Member) -> str | None:
        """Add member; returns a problem line if the name is taken."""
        key = member.name.casefold()
        with self._lock:   # check and insert in one step, or two clients could both get "alice"
            if key in self._members:
                return "! that name is taken; try another"
            self._members[key] = member
        self.log.record(SERVER, NOTE, detail=f"{member.name} joined")
        self.broadcast(f"* {member.name} joined", sender=member)
        return None

    def leave(self, member: Member, how: str = "left") -> None:
        with self._lock:
            if self._members.get(member.name.casefold()) is not member:
                return     # already gone: leaving twice announces once
            del self._members[member.name.casefold()]
        self.log.record(SERVER, NOTE, detail=f"{member.name} {how}")
        self.broadcast(f"* {member.name} {how}")

    def find(self, name: str) -> Member | None:
        with self._lock:
            return self._members.get(name.casefold())

    def who(self) -> str:
        with self._lock:
            names = sorted((m.name for m in self._members.values()), key=str.casefold)
        return "* online: " + ", ".join(names)

    def broadcast(self, line: str, sender: Member | None = None) -> None:
        """Queue line for everyone but the sender. Never waits on a client."""
        too_slow = []
        with self._lock:   # one line at a time into every outbox: everyone sees the same order
            for member in self._members.values():
                if member is not sender and not member.outbox.put(line):
                    too_slow.append(member)
        for member in too_slow:   # outside the lock: leave() takes it again
            self.leave(member, "left (too slow to keep up)")   # first, so this is the notice
            member.outbox.close(drop=True)
            with contextlib.suppress(OSError):
                member.conn.shutdown(socket.SHUT_RDWR)   # wakes its reader and writer


# --- One client: a reader (this thread) and a writer. ---

def write_lines(conn: socket.socket, outbox: Outbox) -> None:
    try:
        # Take everything queued at once: one sendall for many lines, not one each.
        while (data := outbox.take_all()) is not None:
            conn.sendall(data)
    except OSError:
        outbox.close(drop=True)   # the client is gone; the reader will notice too


def handle(conn: socket.socket, room: Room, log: Transcript, who: str, commands=None) -> None:
    outbox = Outbox()
    writer = threading.Thread(target=write_lines, args=(conn, outbox), name=f"{who}-writer", daemon=True)
    writer.start()
    member = None
    outbox.put(GREETING)
    try:
        for raw in read_lines(conn, MAX_LINE):
            text = clean(raw)
            if member is None:                                  # the first line is a name
                problem = name_problem(text)
                if problem is None:
                    candidate = Member(text, conn, outbox)
                    problem = room.join(candidate)
                    member = candidate if problem is None else None
                outbox.put(problem or f"* welcome, {text}! /who lists who is here, /quit leaves")
            elif text.startswith("/"):
                command = text.split()[0]
                if command == "/quit":
                    outbox.put("* bye")
                    break
                elif command == "/who":
                    outbox.put(room.who())
                elif command in (commands or {}):   # commands added on top (the exercises)
                    outbox.put(run_command(commands[command], room, member, text, log, who))
                else:
                    outbox.put("! unknown command")
            elif text.strip():
                room.broadcast(f"{member.name}: {text}", sender=member)
    except LineTooLong:
        outbox.put("! line too long")
    except OSError as exc:   # reset, or shut down by a stop or as too slow
        log.record(SERVER, ERROR, who, detail=type(exc).__name__)
    finally:
        if member is not None:
            room.leave(member)
        outbox.close()           # the writer sends what is queued, then ends
        writer.join(2.0)
        if writer.is_alive():    # stuck sending to a client that stopped reading
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            writer.join(JOIN_TIMEOUT)
        conn.close()
        log.record(SERVER, CLOSE, who)


def run_command(command, room: Room, member: Member, text: str, log: Transcript, who: str) -> str:
    """Run an added command; a bug in it costs that command, not the connection."""
    try:
        return command(room, member, text)
    except Exception as exc:
        log.record(SERVER, ERROR, who, detail=f"{text.split()[0]}: {type(exc).__name__}")
        return f"! {text.split()[0]} failed on the server ({type(exc).__name__})"


def make_serve(commands: dict | None = None):
    """The room's serve() function, with extra /commands: name → f(room, member, line) → reply."""
    return functools.partial(serve, commands=commands)


def serve(listener: socket.socket, stop, log: Transcript, commands: dict | None = None) -> None:
    room = Room(log)
    threads: list[threading.Thread] = []
    for number, (conn, _) in enumerate(accept_until(listener, stop), 1):
        who = f"client {number}"
        threads = [t for t in threads if t.is_alive()]
        if len(threads) >= MAX_CLIENTS:
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"! the room is full; try later\n")
            continue
        log.record(SERVER, ACCEPT, who)
        thread = threading.Thread(target=handle, args=(conn, room, log, who, commands), name=who, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:   # stopping shut every connection down, so each ends soon
        thread.join(JOIN_TIMEOUT)


# --- A client for programs: the demo, the notebook and the tests. ---

class ChatClient:
    """Connect, take a name, and collect every line the room sends."""

    def __init__(self, address, name: str | None = None, timeout: float = 5.0):
        self.timeout = timeout
        self.sock = socket.create_connection(address[:2], timeout=timeout)
        self.sock.settimeout(None)       # the reader waits for as long as the room is quiet...
        self.received: queue.Queue = queue.Queue()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="chat-client-reader", daemon=True)
        self._reader.start()
        try:
            self.greeting = self.next_line()  # ...and every wait here has a timeout
            if name is not None:
                self.say(name)
                self.welcome = self.next_line()
        except BaseException:
            self.close()                      # a failed join leaves no socket or thread behind
            raise

    def _read(self) -> None:
        try:
            for raw in read_lines(self.sock, MAX_LINE * 2):
                self.received.put(raw.decode("utf-8", errors="replace"))
        except OSError:
            pass
        finally:
            self.closed.set()

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode("utf-8") + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_line(self, timeout: float | None = None) -> str:
        try:
            return self.received.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError("no line from the chat server in time") from None

    def expect(self, line: str, timeout: float | None = None) -> list[str]:
        """Wait for ``line``; return it with the lines that came before it."""
        seen = []
        while True:
            seen.append(self.next_line(timeout))
            if seen[-1] == line:
                return seen

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self.closed.wait(self.timeout if timeout is None else timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(self.timeout)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- An experiment for the notebook and the tests: one client stops reading. ---

def talk_past_a_sleeper(address, messages: int = 4000, size: int = 4000) -> dict:
    """'sleepy' joins and never reads; 'talker' sends; 'listener' counts what arrives.

    Raw sockets, so it runs against the tutorial's server too (which has no names:
    there, the name lines are just more messages).
    """
    body = b"p" * size
    received, notices = [], []

    def listen(sock):
        with contextlib.suppress(OSError):
            for raw in read_lines(sock, size * 2):
                if raw.endswith(body):
                    received.append(raw)
                elif raw.startswith(b"* sleepy"):
                    notices.append(raw.decode())

    with contextlib.ExitStack() as stack:
        sleepy, talker, listener = (stack.enter_context(socket.create_connection(address[:2], timeout=5))
                                    for _ in range(3))
        for sock, name in ((sleepy, b"sleepy\n"), (talker, b"talker\n"), (listener, b"listener\n")):
            sock.sendall(name)
        listener.settimeout(1.0)   # the listener stops after 1 s of silence
        reader = threading.Thread(target=listen, args=(listener,), daemon=True)
        reader.start()
        time.sleep(0.2)
        talker.settimeout(2.0)
        sent, blocked = 0, False
        try:
            for _ in range(messages):
                talker.sendall(body + b"\n")
                sent += 1
        except socket.timeout:     # the server stopped reading what we send
            blocked = True
        reader.join(30)
    return {"listener got every message": len(received) == sent,
            "talker was blocked": blocked,
            "sleepy was dropped": "* sleepy left (too slow to keep up)" in notices}


# --- The demo and the command line. ---

def demo() -> int:
    from rich.console import Console
    from rich.table import Table
    from lessons.kit import running

    console = Console(highlight=False)
    console.rule("[bold]Lesson 03: a chat room")
    table = Table(title="who did what, and what each client received", title_justify="left")
    for column in ("action", "alice", "bob", "carol"):
        table.add_column(column)
    people: dict[str, ChatClient] = {}

    def step(action: str, do, arrives: dict[str, str]) -> None:
        """Do something, then wait until each client has received its line."""
        do()
        got = {name: "\n".join(people[name].expect(line)) for name, line in arrives.items()}
        table.add_row(action, *(got.get(name, "") for name in ("alice", "bob", "carol")))

    def enter(name: str):
        return lambda: people.__setitem__(name, ChatClient(server.address, name))

    with running(serve) as server:
        step("alice connects", enter("alice"), {})
        step("bob connects", enter("bob"), {"alice": "* bob joined"})
        step("carol connects", enter("carol"), {"alice": "* carol joined", "bob": "* carol joined"})
        step("alice: hi everyone", lambda: people["alice"].say("hi everyone"),
             {"bob": "alice: hi everyone", "carol": "alice: hi everyone"})
        step("bob: hello alice", lambda: people["bob"].say("hello alice"),
             {"alice": "bob: hello alice", "carol": "bob: hello alice"})
        step("carol: /who", lambda: people["carol"].say("/who"), {"carol": "* online: alice, bob, carol"})
        step("bob: /quit", lambda: people["bob"].say("/quit"),
             {"alice": "* bob left", "bob": "* bye", "carol": "* bob left"})
        step("carol: bye all", lambda: people["carol"].say("bye all"), {"alice": "carol: bye all"})
        for person in people.values():
            person.close()
    console.print(table)
    return 0


def client(args) -> int:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False)

    def show(line: str) -> None:
        line = clean(line.encode())           # trust no server with our terminal either
        if line.startswith("* "):
            console.print(Text(line, style="dim italic"))
        elif line.startswith("! "):
            console.print(Text(line, style="bold red"))
        else:
            name, _, text = line.partition(": ")
            console.print(Text.assemble((name, "bold cyan"), ": ", text))

    with ChatClient((args.host, args.port), timeout=args.timeout) as chat:
        show(chat.greeting)
        chat.say(args.name)
        answer = chat.next_line()
        show(answer)
        if answer.startswith("!"):
            return 1
        printer = threading.Thread(target=lambda: _print_until_closed(chat, show), daemon=True)
        printer.start()
        for line in sys.stdin:
            if chat.closed.is_set():
                break
            line = line.rstrip("\r\n")
            chat.say(line)
            if not sys.stdin.isatty():
                console.print(Text.assemble(("you", "bold green"), ": ", line))
        with contextlib.suppress(OSError):
            chat.sock.shutdown(socket.SHUT_WR)   # stdin ended: we have nothing more to say
        chat.wait_closed()
        printer.join(args.timeout)
    return 0


def _print_until_closed(chat: ChatClient, show) -> None:
    while not (chat.closed.is_set() and chat.received.empty()):
        with contextlib.suppress(TimeoutError):
            show(chat.next_line(timeout=0.1))


def add_client_args(parser) -> None:
    parser.add_argument("--name", required=True, help="your name in the room (1-32 characters, no spaces)")


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="03_chat", demo=demo, serve=serve,
                      add_client_args=add_client_args, client=client, port=9903)


if __name__ == "__main__":
    main_guard(main)
