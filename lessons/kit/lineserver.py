"""A single-threaded line server on selectors: the event loop, without the protocol.

Lesson 05's exercise ports lesson 03's chat onto it. The loop does what lesson
05 teaches (non-blocking sockets, a selector, an output buffer per client,
write interest only while output waits, backpressure) and calls a handler
with whole lines:

    handler.connected(client)            a client arrived
    handler.line(client, text)           one cleaned line of text (no newline)
    handler.disconnected(client)         it left, reset, was too slow, or was closed

``client.send(text)`` queues a line and never blocks. ``client.close()`` closes
after what is queued has been sent. ``client.name`` is free for the handler.
Everything runs in one thread, so the handler needs no locks.
"""
from __future__ import annotations

import selectors
import socket
from typing import Callable, Optional

from .server import POLL_INTERVAL
from .stream import LineBuffer, LineTooLong
from .transcript import ACCEPT, CLOSE, ERROR, SERVER, Transcript

RECV_SIZE = 65536
OUTPUT_LIMIT = 4 << 20    # bytes queued for one client before it counts as too slow


class Client:
    def __init__(self, sock: socket.socket, who: str, wake: Callable[["Client"], None],
                 clean: Callable[[bytes], str], line_limit: int):
        self.sock, self.who = sock, who
        self.name: Optional[str] = None
        self.output = bytearray()
        self.lines = LineBuffer(line_limit)
        self.clean = clean
        self.closing = False      # close once output is flushed
        self.gone = False
        self._wake = wake

    def send(self, text: str) -> None:
        if self.gone or self.closing:
            return
        self.output += text.encode("utf-8") + b"\n"
        self._wake(self)

    def close(self) -> None:
        self.closing = True
        self._wake(self)

    def __repr__(self) -> str:
        return f"Client({self.name or self.who})"


def serve_lines(listener: socket.socket, stop, log: Transcript, handler, clean: Callable[[bytes], str],
                line_limit: int = 4096, too_long: str = "! line too long",
                too_slow: str = "too slow") -> None:
    """Run handler over every client's lines until stop is set."""
    sel = selectors.DefaultSelector()
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, data=None)
    clients: dict[socket.socket, Client] = {}
    doomed: list[Client] = []   # to drop once the current event is handled, never in the
    numbered = 0                # middle of a handler call (it may be looping over clients)

    def wake(client: Client) -> None:
        if client.gone or client in doomed:
            return
        if len(client.output) > OUTPUT_LIMIT:      # not reading: disconnect, don't buffer forever
            client.output.clear()
            client.closing = True
            log.record(SERVER, ERROR, client.who, detail=too_slow)
            doomed.append(client)
            return
        events = selectors.EVENT_READ if not client.closing else 0
        if client.output:
            events |= selectors.EVENT_WRITE
        if events:
            sel.modify(client.sock, events, data=client)
        else:
            doomed.append(client)

    def drop(client: Client) -> None:
        if client.gone:
            return
        client.gone = True
        sel.unregister(client.sock)
        del clients[client.sock]
        client.sock.close()
        log.record(SERVER, CLOSE, client.who)
        call(handler.disconnected, client)

    def call(method, client: Client, *args) -> None:
        """A bug in the handler costs that client its connection, never the server."""
        try:
            method(client, *args)
        except Exception as exc:
            log.record(SERVER, ERROR, client.who, detail=f"handler raised {type(exc).__name__}: {exc}")
            if not client.gone and client not in doomed:
                client.closing = True
                doomed.append(client)

    def readable(client: Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.record(SERVER, ERROR, client.who, detail=type(exc).__name__)
            return drop(client)
        if not data:
            return drop(client)
        try:
            lines = client.lines.feed(data)
        except LineTooLong:
            client.send(too_long)
            return client.close()
        for raw in lines:
            if client.gone or client.closing:
                break
            call(handler.line, client, clean(raw))

    def writable(client: Client) -> None:
        try:
            sent = client.sock.send(client.output)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.record(SERVER, ERROR, client.who, detail=type(exc).__name__)
            return drop(client)
        del client.output[:sent]
        wake(client)

    try:
        while not stop.is_set():
            for key, mask in sel.select(timeout=POLL_INTERVAL):
                if key.data is None:
                    try:
                        sock, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    sock.setblocking(False)
                    numbered += 1
                    client = Client(sock, f"client {numbered}", wake, clean, line_limit)
                    clients[sock] = client
                    sel.register(sock, selectors.EVENT_READ, data=client)
                    log.record(SERVER, ACCEPT, client.who)
                    call(handler.connected, client)
                    while doomed:
                        drop(doomed.pop(0))
                    continue
                client = key.data
                if not client.gone and mask & selectors.EVENT_READ:
                    readable(client)
                if not client.gone and mask & selectors.EVENT_WRITE:
                    writable(client)
                while doomed:
                    drop(doomed.pop(0))
    finally:
        for client in list(clients.values()):
            drop(client)
        sel.close()
