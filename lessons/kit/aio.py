"""asyncio servers in the workbook's three places: a running loop, a thread, the foreground.

Lesson 08 teaches each piece by hand; this module keeps the plumbing, so that
every asyncio server (the room, the echo servers) starts and stops the same way::

    serving = await Serving.streams(handler, listener, log)   # on the running loop (a notebook)
    async with serving: ...                                   # leaving: every task cancelled,
                                                              #   every connection closed
    serve_in_thread(start, listener, stop, log)   # serve(listener, stop, log), for kit.running()
    serve_in_foreground(start, args)              # `serve`: until Ctrl-C or SIGTERM

A handler is ``async def handler(reader, writer, who)``. Serving runs each one as
a task of its own, named ``who`` ("client 3"), records its accept and its close,
and closes its connection however it ends: returned, failed, or cancelled.
``start(listener, log)`` is any coroutine that returns a started Serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
import weakref
from typing import Awaitable, Callable, Optional

from rich.text import Text

from .cli import STOP_SIGNALS, describe_address, ignore_stop_signals, log_line, say
from .server import (ACCEPT_BACKOFF, CLIENT_GAVE_UP, POLL_INTERVAL, OutOfDescriptors,
                     Stopper, listen)
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
    """A server on the running loop: an accept loop, a task per connection, and close().

    It does what ``asyncio.start_server()`` and ``loop.create_server()`` do, with an accept
    loop of its own, for one reason: out of file descriptors, asyncio's waits a second
    and reports every failed accept() to the loop's exception handler (and up to 3.13 it
    goes on calling accept() and scheduling retries, ``backlog`` times: CPython gh-151615).
    This one says so once in the transcript, tries again every ACCEPT_BACKOFF seconds
    meanwhile, serving the clients it has, and says when it is over.

    ``close()`` stops accepting, cancels every connection's task (each one's ``finally``
    runs), closes every connection still open, closes the listener, and waits for all of it.
    """

    def __init__(self, listener: socket.socket, log: Transcript):
        self.listener, self.log = listener, log
        self.address = listener.getsockname()[:2]
        self.tasks: dict[asyncio.Task, None] = {}   # in the order the clients came
        self.unstarted: dict[asyncio.Task, socket.socket] = {}   # a task's client, until it runs
        self.transports: weakref.WeakSet = weakref.WeakSet()   # until each one is gone
        self.accepted = 0
        self.cancelled = 0      # connection tasks still running when close() was called
        self.stopping = False
        self.shortage = OutOfDescriptors(log)
        self.accepting: Optional[asyncio.Task] = None
        self.tls: Optional[ssl.SSLContext] = None   # (streams(tls=...)): "accept" after the handshake

    # --- starting ---

    @classmethod
    async def streams(cls, handler: Handler, listener: socket.socket, log: Transcript,
                      limit: int = 2 ** 16, tls: Optional[ssl.SSLContext] = None,
                      handshake_timeout: float = 10.0) -> "Serving":
        """Serve ``handler(reader, writer, who)`` on ``listener``, each connection as streams
        (``limit``: the StreamReader's, the longest line readline() takes). With ``tls`` (a
        server context), each connection's TLS handshake comes first, within
        ``handshake_timeout`` seconds; "accept" is recorded once it is done ("over TLSv1.3"),
        a failed one as that client's error, and the handler gets the plaintext streams."""
        serving = cls(listener, log)
        serving.tls = tls

        async def connected(conn: socket.socket, who: str) -> None:
            if tls is None:
                reader, writer = await asyncio.open_connection(sock=conn, limit=limit)
            else:
                reader, writer = await _tls_streams(conn, tls, limit, handshake_timeout)
                log.record(SERVER, ACCEPT, who, detail=f"over {writer.get_extra_info('ssl_object').version()}")
            serving.transports.add(writer.transport)
            try:
                await handler(reader, writer, who)
            except OSError as exc:                # a reset, a broken pipe: that client only
                log.record(SERVER, ERROR, who, detail=type(exc).__name__)
            except Exception as exc:              # a bug: recorded, and the others go on
                log.record(SERVER, ERROR, who, detail=f"handler failed: {type(exc).__name__}")
            finally:
                if serving.stopping:
                    writer.close()                # close() aborts it if it has not closed by then
                else:
                    await close_writer(writer)
                log.record(SERVER, CLOSE, who)

        return serving._start(connected)

    @classmethod
    async def protocols(cls, factory: Callable[[str], asyncio.Protocol], listener: socket.socket,
                        log: Transcript) -> "Serving":
        """Serve a Protocol on ``listener``: ``factory(who)`` makes one for each connection."""
        serving = cls(listener, log)

        async def connected(conn: socket.socket, who: str) -> None:
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_accepted_socket(lambda: factory(who), conn)
            serving.transports.add(transport)   # from here on, the loop calls the protocol

        return serving._start(connected)

    def _start(self, connected) -> "Serving":
        self.listener.setblocking(False)
        self.accepting = asyncio.ensure_future(self._accept(connected))
        return self

    async def _accept(self, connected) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.listener)
            except OSError as exc:
                if self.shortage.failed(exc):     # out of descriptors: said once; wait, retry
                    await asyncio.sleep(ACCEPT_BACKOFF)
                    continue
                if exc.errno in CLIENT_GAVE_UP:
                    continue
                raise
            self.shortage.accepted()
            self.accepted += 1
            who = f"client {self.accepted}"
            if self.tls is None:
                self.log.record(SERVER, ACCEPT, who)
            self._spawn(connected, conn, who)

    def _spawn(self, connected, conn: socket.socket, who: str) -> asyncio.Task:
        """A task of its own for a client, named for it (asyncio's debug messages show it)."""
        task = asyncio.get_running_loop().create_task(self._run(connected, conn, who), name=who)
        self.tasks[task] = None
        self.unstarted[task] = conn
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        conn = self.unstarted.pop(task, None)
        if conn is not None:   # cancelled (by close()) before it ran a line: nobody else will
            conn.close()

    async def _run(self, connected, conn: socket.socket, who: str) -> None:
        self.unstarted.pop(asyncio.current_task(), None)   # from here on, ours to close
        try:
            await connected(conn, who)
        except OSError as exc:                    # gone before we could even wrap it
            conn.close()
            self.log.record(SERVER, ERROR, who, detail=type(exc).__name__)

    # --- stopping ---

    async def close(self) -> None:
        """Stop accepting, cancel every task, close every connection; wait for all of it."""
        self.stopping = True
        if self.accepting is not None:
            self.accepting.cancel()
            await asyncio.wait({self.accepting})
        self.listener.close()
        self.cancelled = len(self.tasks)
        for task in list(self.tasks):             # oldest first: the same order on every run
            task.cancel()                         # CancelledError at the await it is waiting on
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(0)                    # a closed transport with nothing queued ends
        for transport in list(self.transports):   # a Protocol's, or one with data still queued
            # abort() raises AttributeError on a socket transport that has already ended by
            # sending its last data after close() (asyncio 3.11 at least): nothing to abort.
            with contextlib.suppress(AttributeError):
                transport.abort()
        await asyncio.sleep(0)                    # let the loop run their connection_lost()

    def failure(self) -> Optional[BaseException]:
        """What ended the accept loop, if it ended on its own (a bug, or a broken listener)."""
        task = self.accepting
        return task.exception() if task is not None and task.done() and not task.cancelled() \
            else None

    async def __aenter__(self) -> "Serving":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()


async def _tls_streams(conn: socket.socket, context: ssl.SSLContext, limit: int,
                       handshake_timeout: float):
    """The server's side of a TLS handshake on an accepted socket; its plaintext streams.
    (What asyncio.start_server(ssl=...) does for each connection it accepts.)"""
    loop = asyncio.get_running_loop()
    return await streams_or_abort(
        lambda factory: loop.connect_accepted_socket(factory, conn, ssl=context,
                                                      ssl_handshake_timeout=handshake_timeout),
        limit)


class _KeepsTransport(asyncio.StreamReaderProtocol):
    """A StreamReaderProtocol that remembers the transport it was given."""
    transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        super().connection_made(transport)


async def streams_or_abort(connect, limit: int = 2 ** 16):
    """``connect(protocol_factory)`` (loop.create_connection or connect_accepted_socket with
    their options): its (reader, writer). Cancelled at its end, as the handshake completes,
    the connection is aborted: asyncio 3.11 then calls close(), and a TLS close() waits up
    to 30 s for the peer's close_notify, so a loop that ended first left the socket open
    (lesson 11's relay, about 1 run in 5 of the chat suite's resets test under load)."""
    reader = asyncio.StreamReader(limit=limit)
    protocol = _KeepsTransport(reader)
    try:
        transport, _ = await connect(lambda: protocol)
    except BaseException:
        if protocol.transport is not None:
            protocol.transport.abort()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, reader, asyncio.get_running_loop())


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


# --- A client of the chat protocol, as coroutines ---

class AsyncChatClient:
    """A member of a chat room (lesson 03's protocol) as coroutines::

        alice = await AsyncChatClient.join(address, "alice")   # greeting and welcome read
        await alice.say("hello")
        line = await alice.next_line()
    """

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
        async with await start(listener, log) as serving:
            while not stop.is_set() and serving.failure() is None:
                await asyncio.sleep(POLL_INTERVAL)
        if serving.failure() is not None:
            raise serving.failure()   # kit.running() raises it again in the caller's thread

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
    async with await start(listener, log) as serving:
        announce(serving)
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, serving.accepting}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    return serving


def serve_in_foreground(start: Start, args, quiet: bool = False) -> int:
    """``serve``: bind ``args.host``/``args.port``, print ``listening on HOST:PORT`` (first,
    flushed), log arrivals and departures to stderr, stop cleanly on Ctrl-C or SIGTERM (status 0)."""
    try:
        listener = listen(args.host, args.port)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        where = describe_address((args.host, args.port))
        log_line(Text(f"cannot listen on {where}: {reason}", style="red"))
        return 1
    log = Transcript(maxlen=1000, live=None if quiet else _log_live,
                     kinds=set() if quiet else {ACCEPT, CLOSE, ERROR, NOTE})

    def announce(serving: Serving) -> None:
        say(f"listening on {describe_address(serving.address, listener.family)}")

    async def serve_then_stay_stopped() -> Serving:
        serving = await until_signalled(start, listener, log, announce)
        stay_stopped(asyncio.get_running_loop())
        return serving

    try:
        serving = asyncio.run(serve_then_stay_stopped())
    finally:
        listener.close()
    if serving.failure() is not None:
        failure = serving.failure()
        log_line(Text(f"server failed: {type(failure).__name__}: {failure}", style="red"))
        return 1
    log_line(Text(f"stopped: {serving.cancelled} task(s) cancelled, every connection closed",
                      style="dim"))
    return 0


def stay_stopped(loop: asyncio.AbstractEventLoop) -> None:
    """Stopped, the process is on its way out: from here to its exit a second Ctrl-C or
    SIGTERM changes nothing (``kit.cli.ignore_stop_signals``). The loop's handlers go first,
    while the loop runs: closing, it closes its wake-up pipe before it lets go of them, and
    a signal in between is written to a closed descriptor. The signals wait (blocked) while
    the handlers change hands."""
    hold = getattr(signal, "pthread_sigmask", None)
    if hold is not None:
        hold(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        ignore_stop_signals()
    finally:
        if hold is not None:
            hold(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _log_live(event: Event) -> None:
    who = f"{event.who}: " if event.who and event.kind != ACCEPT else ""
    log_line(Text(who + event.describe(), style="red" if event.kind == ERROR else "dim"),
             soft_wrap=True)
