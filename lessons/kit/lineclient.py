"""A client for line protocols, for programs: the chat rooms' demos, notebooks, checks and tests.

    with ChatClient(room.address, "alice") as alice:     # greeting read, name sent, welcome read
        alice.say("hello")
        alice.expect("* bob joined")                      # the lines up to and including that one
        line = alice.next_line(timeout=1.0)       # TimeoutError; ConnectionClosed at the end

``converse(client, console)`` is a person's side of it, for the chat lessons'
``client`` command: what is typed goes out, what arrives is shown, until the server closes;
``chat_session(room, name)`` adds the greeting and the name.

A reader thread collects every line the server sends, so the program never
blocks on the socket and every wait has a timeout. It survives anything a
server sends: invalid UTF-8 is replaced, and a line over ``limit`` bytes is
skipped and reported (``skipped`` counts them, and a :class:`Skipped` marker
takes its place among the lines), never fatal. Lines wait for the program in a
bounded backlog (``QUEUE_LIMIT``): a server that sends faster than the program
takes them finds the reader waiting, and TCP slows the server down, instead of
the client's memory growing without end.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import socket
import threading
import time
from typing import Callable, Optional

from rich.console import Console
from rich.text import Text

from . import chat
from .tlsstream import TLSStream

RECV_SIZE = 65536
QUEUE_LIMIT = 1 << 20   # characters received and not taken yet; past this the reader stops reading


class ConnectionClosed(EOFError):
    """The server closed the connection, and every line it sent has been taken."""


class Skipped(str):
    """Stands in the line queue where a line over the client's limit was skipped."""


class LineClient:
    """Connect (with a timeout), and collect the server's lines in a background thread.

    With ``ssl_context``, the connection is TLS (lesson 11), verified against
    ``server_hostname`` (default: the address's host); the handshake happens here.
    """

    def __init__(self, address, timeout: float = 5.0, limit: int = 65536,
                 ssl_context=None, server_hostname: Optional[str] = None):
        self.timeout, self.limit = timeout, limit
        self.skipped = 0                 # lines over the limit, dropped
        self.close_reason: Optional[str] = None   # "closed" (EOF), "reset", or an error's name
        self.sock = socket.create_connection(address[:2], timeout=timeout)
        if ssl_context is not None:
            # Not an SSLSocket: its reader thread and our say() would be in one SSL object at once.
            try:
                self.sock = TLSStream(self.sock, ssl_context, server_hostname or address[0])
            except BaseException:
                self.sock.close()
                raise
        self._lines: collections.deque[str] = collections.deque()
        self._queued = 0                 # characters in self._lines
        self._arrived = threading.Condition()
        self._closed = threading.Event()
        self._closing = False
        self._pending, self._skipping = b"", False
        self.heard = time.monotonic()    # when the server last sent something
        self._reader = threading.Thread(target=self._read, name="line-client-reader", daemon=True)
        self._reader.start()

    # --- the reader thread ---

    def _read(self) -> None:
        try:
            while True:
                try:
                    data = self.sock.recv(RECV_SIZE)
                except socket.timeout:   # a quiet server is fine; only close() ends the wait
                    if self._closing:
                        break
                    continue
                if not data:
                    self.close_reason = "closed"
                    break
                self.heard = time.monotonic()
                self._split(data)
        except ConnectionResetError:
            self.close_reason = "reset"
        except OSError as exc:
            self.close_reason = type(exc).__name__
        finally:
            with self._arrived:
                self._closed.set()
                self._arrived.notify_all()

    def _split(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if self._skipping:            # the end of a line already reported as skipped
                self._skipping = False
                continue
            line = line.removesuffix(b"\r")
            if len(line) > self.limit:
                self._skip(f"[skipped a line of {len(line):,} bytes: over {self.limit:,}]")
            else:
                self._put(line.decode("utf-8", errors="replace"))
        if len(self._pending) > self.limit + 1 and not self._skipping:   # +1: a '\r' may follow
            self._skip(f"[skipped a line over {self.limit:,} bytes]")
            self._skipping = True
        if self._skipping:
            self._pending = b""           # drop the rest of it as it comes

    def _skip(self, note: str) -> None:
        self.skipped += 1
        self._put(Skipped(note))

    def _put(self, line: str) -> None:
        with self._arrived:
            # Backpressure: wait while the backlog is full (the socket's buffers then fill,
            # and the server's send waits), or until close() is called.
            while self._queued >= QUEUE_LIMIT and not self._closing:
                self._arrived.wait(0.1)
            self._lines.append(line)
            self._queued += len(line)
            self._arrived.notify_all()

    # --- the program's side ---

    def say(self, text: str) -> None:
        """Send one line of text (a newline is added). Text from argv that was not UTF-8
        (surrogate escapes) goes out as the bytes it came as: the server judges it."""
        self.sock.sendall(text.encode("utf-8", "surrogateescape") + b"\n")

    def send_raw(self, data: bytes) -> None:
        """Send bytes exactly as given: half lines, invalid UTF-8, floods."""
        self.sock.sendall(data)

    def next_line(self, timeout: Optional[float] = None) -> str:
        """The next line received. TimeoutError if none comes within timeout
        (default: the client's), ConnectionClosed once the server has closed and all is read."""
        with self._arrived:
            self._arrived.wait_for(lambda: self._lines or self._closed.is_set(),
                                   self.timeout if timeout is None else timeout)
            if self._lines:
                line = self._lines.popleft()
                self._queued -= len(line)
                self._arrived.notify_all()   # the reader may be waiting for room
                return line
        if self._closed.is_set():
            how = "reset" if self.close_reason == "reset" else "closed"
            raise ConnectionClosed(f"the server {how} the connection")
        raise TimeoutError("no line from the server in time")

    def expect(self, line: str, timeout: Optional[float] = None) -> list[str]:
        """Wait for ``line``; return it with the lines that came before it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[str] = []
        while not seen or seen[-1] != line:
            try:
                seen.append(self.next_line(max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                raise TimeoutError(f"waited for {line!r}; got {seen[-3:]!r}") from None
        return seen

    def unread(self) -> list[str]:
        """The lines received and not taken yet (leaves them in place)."""
        with self._arrived:
            return list(self._lines)

    @property
    def closed(self) -> bool:
        """Whether the server has closed the connection (lines may still be waiting)."""
        return self._closed.is_set()

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Wait until the server closes the connection; False if it is still open after timeout."""
        return self._closed.wait(self.timeout if timeout is None else timeout)

    def close(self) -> None:
        """Hang up: wake and join the reader, close the socket. Safe to call twice."""
        self._closing = True
        with self._arrived:
            self._arrived.notify_all()   # a reader waiting for room in the backlog stops waiting
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(self.timeout + 1.0)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ChatClient(LineClient):
    """A client of the chat protocol (lesson 03): reads the greeting and, given a name, joins.

    ``greeting`` holds the first line, ``welcome`` the answer to the name (None
    without a name); neither is checked, so a test can look at a refusal too.
    """

    def __init__(self, address, name: Optional[str] = None, timeout: float = 5.0,
                 limit: int = chat.MAX_SEND, ssl_context=None, server_hostname: Optional[str] = None):
        super().__init__(address, timeout, limit, ssl_context, server_hostname)
        self.welcome: Optional[str] = None
        try:
            self.greeting = self.next_line()
            if name is not None:
                self.say(name)
                self.welcome = self.next_line()
        except BaseException:
            self.close()              # a failed join leaves no socket or thread behind
            raise


def relay_stdin(client: LineClient, echo: Optional[Callable[[str], None]] = None,
                fd: int = 0) -> threading.Event:
    """Send each line of standard input to the server, from a daemon thread, and half-close
    when the input ends; returns an Event that is set then (not when sending fails).

    ``echo(line)`` is called before each line is sent when the input is a pipe or a file
    (not a terminal), so that the output shows what was said. The thread reads with
    os.read(): a read from a terminal cannot be interrupted, so this thread may still be
    waiting when the program exits, and unlike sys.stdin a raw read holds no lock that
    the interpreter needs at exit. It is the one thread in the workbook left unjoined.
    """
    ended = threading.Event()
    echo = None if os.isatty(fd) else echo

    def relay() -> None:
        pending = b""
        with contextlib.suppress(OSError):
            while data := os.read(fd, RECV_SIZE):
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    text = line.removesuffix(b"\r").decode("utf-8", errors="replace")
                    if echo is not None:
                        echo(text)
                    client.say(text)
            if pending:
                client.say(pending.decode("utf-8", errors="replace"))
            ended.set()
            if isinstance(client.sock, TLSStream):
                wait_until_quiet(client)
            client.sock.shutdown(socket.SHUT_WR)   # "I have nothing more to say"

    threading.Thread(target=relay, name="stdin-relay", daemon=True).start()
    return ended


def wait_until_quiet(client: LineClient, quiet: float = 0.5) -> None:
    """Wait until the server has said nothing for ``quiet`` seconds (at most the client's
    timeout), or has closed. Before a half-close over TLS: TLS has one (close_notify), but
    many TLS servers, asyncio's among them, close the whole connection when it arrives,
    and what they were still sending in answer is lost."""
    deadline = time.monotonic() + client.timeout
    while not client.closed and time.monotonic() < deadline:
        left = client.heard + quiet - time.monotonic()
        if left <= 0:
            return
        client.wait_closed(min(left, deadline - time.monotonic()))


def converse(client: LineClient, console: Console, goodbye: str = chat.BYE) -> int:
    """A person's session: send what is typed (or piped), show what arrives, until the server
    closes. Returns 0 if it ended as asked (``goodbye`` received, or the input ran out),
    else prints why and returns 1. Exits at once when the server closes: no Enter needed."""
    typed = relay_stdin(client, echo=functools.partial(show_typed, console))
    last = ""
    while True:
        try:
            last = client.next_line()
        except TimeoutError:   # a quiet room
            continue
        except ConnectionClosed as closed:
            if last == goodbye or typed.is_set():
                return 0
            console.print(Text(f"{closed} (its last words: {last or 'none'})", style="bold red"))
            return 1
        show(console, last)


def chat_session(room: ChatClient, name: Optional[str] = None) -> int:
    """A person in a chat room, from a terminal or a pipe: the greeting, ``name`` if given,
    then :func:`converse`. Returns its exit status."""
    console = Console(highlight=False)
    show(console, room.greeting)
    if name:
        room.say(name)   # if it is taken, the next line typed is the next try
    return converse(room, console)


def show_typed(console: Console, line: str) -> None:
    """Print a line read from a pipe as it is sent, so the output reads as a conversation."""
    console.print(Text.assemble(("you", "bold green"), ": ", line))


def show(console: Console, line: str) -> None:
    """Print a line from a server: notices dim, errors red, a message's name in colour."""
    if not isinstance(line, Skipped):
        line = chat.clean(line.encode("utf-8"))   # trust no server with our terminal either
    if isinstance(line, Skipped) or line.startswith("* "):
        console.print(Text(line, style="dim italic"))
    elif line.startswith("! "):
        console.print(Text(line, style="bold red"))
    else:
        name, _, text = line.partition(": ")
        console.print(Text.assemble((name, "bold cyan"), ": ", text))
