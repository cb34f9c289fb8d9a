"""asyncio servers in the workbook's three places: a running loop, a thread, the foreground.

Lesson 08 teaches each piece by hand; this module keeps the plumbing, so that
every asyncio server (the room, the echo servers) starts and stops the same way::

    serving = await Serving.streams(handler, listener, log)   # on the running loop (a notebook)
    async with serving: ...                                   # leaving: every task cancelled,
                                                              #   every connection closed
    serve_in_thread(start, listener, stop, log)   # the kit's serve(listener, stop, log), for running()
    serve_in_foreground(start, args)              # python -m lessons.NN serve: until Ctrl-C or SIGTERM

A handler is ``async def handler(reader, writer, who)``. Serving runs each one as
a task of its own, named ``who`` ("client 3"), records its accept and its close,
and closes its connection however it ends: returned, failed, or cancelled.
``start(listener, log)`` is any coroutine that returns a started Serving.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
import weakref
from typing import Awaitable, Callable, Optional

from rich.text import Text

from .server import POLL_INTERVAL, OutOfDescriptors, Stopper, listen
from .transcript import ACCEPT, CLOSE, ERROR, NOTE, SERVER, Event, Transcript

CLOSE_TIMEOUT = 2.0    # seconds a closing connection may take to send what is queued
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]

if sys.version_info >= (3, 11):
    async def within(seconds: Optional[float], awaitable):
        """``await awaitable`` for at most ``seconds`` (None: no limit); TimeoutError after that."""
        async with asyncio.timeout(seconds):
            return await awaitable
else:   # Python 3.10 has no asyncio.timeout(); wait_for() runs the awaitable as a task of its own
    async def within(seconds: Optional[float], awaitable):
        """``await awaitable`` for at most ``seconds`` (None: no limit); TimeoutError after that."""
        try:
            return await asyncio.wait_for(awaitable, seconds)
        except asyncio.TimeoutError:   # on 3.10 not the built-in TimeoutError: make it one
            raise TimeoutError(f"no result within {seconds:g} s") from None


class Serving:
    """An asyncio server and what it started: a task per connection, and the connections.

    ``close()`` stops accepting, cancels every connection's task (each one's ``finally``
    runs), closes every connection that is still open, and waits for all of it.
    """

    def __init__(self, log: Transcript):
        self.log = log
        self.server: Optional[asyncio.base_events.Server] = None
        self.tasks: set[asyncio.Task] = set()
        self.transports: weakref.WeakSet = weakref.WeakSet()   # until each one is gone
        self.accepted = 0
        self.cancelled = 0      # tasks still running when close() was called
        self.stopping = False
        self.shortage = OutOfDescriptors(log)

    # --- starting ---

    @classmethod
    async def streams(cls, handler: Handler, listener: socket.socket, log: Transcript,
                      limit: int = 2 ** 16) -> "Serving":
        """Serve ``handler`` with streams on ``listener`` (the StreamReader's ``limit``: its buffer)."""
        serving = cls(log)
        serving.server = await asyncio.start_server(serving._connection(handler), sock=listener,
                                                    limit=limit, backlog=socket.SOMAXCONN)
        return serving

    @classmethod
    async def protocols(cls, factory: Callable[["Serving"], asyncio.Protocol], listener: socket.socket,
                        log: Transcript) -> "Serving":
        """Serve a Protocol on ``listener``; ``factory(serving)`` makes one per connection, and
        should call ``serving.opened(transport)`` from its connection_made()."""
        serving = cls(log)
        loop = asyncio.get_running_loop()
        serving.server = await loop.create_server(lambda: factory(serving), sock=listener,
                                                  backlog=socket.SOMAXCONN)
        return serving

    @property
    def address(self) -> tuple:
        """The (host, port) clients connect to."""
        return self.server.sockets[0].getsockname()[:2]

    def opened(self, transport: asyncio.BaseTransport) -> str:
        """Count and remember a new connection; returns its label ("client 3")."""
        self.accepted += 1
        self.shortage.accepted()   # a client got a descriptor: a shortage, if any, is over
        self.transports.add(transport)
        who = f"client {self.accepted}"
        self.log.record(SERVER, ACCEPT, who)
        return who

    def _connection(self, handler: Handler):
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            who = self.opened(writer.transport)
            task = asyncio.current_task()
            task.set_name(who)   # what asyncio's debug messages and task lists show
            self.tasks.add(task)
            try:
                await handler(reader, writer, who)
            except asyncio.CancelledError:        # close() is stopping the server. End here:
                pass                              # 3.11 and 3.12 report a cancelled one as an error
            except OSError as exc:                # a reset, a broken pipe: that client only
                self.log.record(SERVER, ERROR, who, detail=type(exc).__name__)
            except Exception as exc:              # a bug: recorded, and the others go on
                self.log.record(SERVER, ERROR, who, detail=f"handler failed: {type(exc).__name__}")
            finally:
                self.tasks.discard(task)
                if self.stopping:
                    writer.close()                # close() aborts it if it has not closed by then
                else:
                    await close_writer(writer)
                self.log.record(SERVER, CLOSE, who)
        return run

    # --- stopping ---

    async def close(self) -> None:
        """Stop accepting, cancel every task, close every connection; wait for all of it."""
        self.stopping = True
        self.server.close()                       # the listening socket closes here
        self.cancelled = len(self.tasks)
        for task in list(self.tasks):
            task.cancel()                         # CancelledError at the await it is waiting on
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)                    # a closed transport with nothing queued ends
        for transport in list(self.transports):   # a Protocol's, or one with data still queued
            transport.abort()
        await asyncio.sleep(0)                    # let the loop run their connection_lost()
        try:
            await within(CLOSE_TIMEOUT, self.server.wait_closed())
        except TimeoutError:
            pass

    async def __aenter__(self) -> "Serving":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


async def close_writer(writer: asyncio.StreamWriter, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close a stream after what is queued has been sent; abort (drop it) if that takes
    longer than ``timeout`` (a client that stopped reading) or the task is cancelled."""
    writer.close()
    try:
        await within(timeout, writer.wait_closed())
    except (OSError, TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


def note_shortages(loop: asyncio.AbstractEventLoop, serving: Serving) -> None:
    """When accept() runs out of descriptors, asyncio waits a second and tries again (the
    server lives on), and reports each failed try to the loop's exception handler. Say it
    once in the transcript instead, and once more when it is over (Serving.opened)."""
    def handle(loop, context) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and serving.shortage.failed(exc)):
            loop.default_exception_handler(context)
    loop.set_exception_handler(handle)


# --- A client of the chat protocol, as coroutines ---

class AsyncChatClient:
    """A chat room member as coroutines (lesson 03's protocol): ``alice = await AsyncChatClient.join(address, "alice")``."""

    def __init__(self, reader, writer, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout

    @classmethod
    async def join(cls, address, name: Optional[str] = None, timeout: float = 5.0):
        """Connect, read the greeting and, given a name, send it and read the answer."""
        reader, writer = await within(timeout, asyncio.open_connection(*address[:2]))
        client = cls(reader, writer, timeout)
        client.greeting = await client.next_line()
        if name is not None:
            await client.say(name)
            client.welcome = await client.next_line()
        return client

    async def say(self, text: str) -> None:
        self.writer.write(text.encode("utf-8") + b"\n")
        await self.writer.drain()

    async def next_line(self, timeout: Optional[float] = None) -> str:
        """The next line; TimeoutError if none comes in time, EOFError at the end."""
        line = await within(timeout or self.timeout, self.reader.readline())
        if not line:
            raise EOFError("the server closed the connection")
        return line.decode("utf-8", errors="replace").rstrip("\r\n")

    async def expect(self, line: str, timeout: Optional[float] = None) -> list[str]:
        """Wait for ``line``; return it with the lines that came before it."""
        async def until() -> list[str]:
            seen = [await self.next_line()]
            while seen[-1] != line:
                seen.append(await self.next_line())
            return seen
        return await within(timeout or self.timeout, until())

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# --- Running a server: in a thread for kit.running(), or in the foreground ---

Start = Callable[[socket.socket, Transcript], Awaitable[Serving]]


def serve_in_thread(start: Start, listener: socket.socket, stop: Stopper, log: Transcript) -> None:
    """The kit's ``serve(listener, stop, log)`` for an asyncio server: an event loop of its own,
    in this thread, until ``stop`` is set (the loop looks every POLL_INTERVAL)."""
    async def main() -> None:
        serving = await start(listener, log)
        note_shortages(asyncio.get_running_loop(), serving)
        async with serving:
            while not stop.is_set():
                await asyncio.sleep(POLL_INTERVAL)

    asyncio.run(main())


async def until_signalled(start: Start, listener: socket.socket, log: Transcript,
                          announce: Callable[[Serving], None] = lambda serving: None) -> Serving:
    """Serve until SIGINT (Ctrl-C) or SIGTERM, then close everything; returns the closed Serving.

    The loop's own signal handlers set an Event, so the signal is handled between two
    steps of the loop, never in the middle of one. (Windows has no add_signal_handler:
    there, a plain signal handler asks the loop to set the Event.)
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            signal.signal(sig, lambda signum, frame: loop.call_soon_threadsafe(stop.set))
    serving = await start(listener, log)
    note_shortages(loop, serving)
    announce(serving)
    async with serving:
        await stop.wait()
    return serving


def serve_in_foreground(start: Start, args, quiet: bool = False) -> int:
    """``serve``: bind ``args.host``/``args.port``, print ``listening on HOST:PORT`` (first, flushed),
    log arrivals and departures to stderr, stop cleanly on Ctrl-C or SIGTERM with status 0."""
    from .cli import stderr
    try:
        listener = listen(args.host, args.port)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        stderr.print(Text(f"cannot listen on {_address((args.host, args.port))}: {reason}", style="red"))
        return 1
    log = Transcript(maxlen=1000, live=None if quiet else _log_live,
                     kinds=set() if quiet else {ACCEPT, CLOSE, ERROR, NOTE})

    def announce(serving: Serving) -> None:
        print(f"listening on {_address(serving.address)}", flush=True)

    try:
        serving = asyncio.run(until_signalled(start, listener, log, announce))
    finally:
        listener.close()
    stderr.print(Text(f"stopped: {serving.cancelled} task(s) cancelled, every connection closed",
                      style="dim"))
    return 0


def _address(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _log_live(event: Event) -> None:
    from .cli import stderr
    who = f"{event.who}: " if event.who and event.kind != ACCEPT else ""
    stderr.print(Text(who + event.describe(), style="red" if event.kind == ERROR else "dim"),
                 soft_wrap=True)
