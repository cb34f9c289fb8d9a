"""TLS termination and tunnelling, as stunnel does: TLS on one side, plain TCP on the other.

    terminate: clients speak TLS to us; we speak plain TCP to the server behind us
        client ==TLS==> relay --plain--> server       (lesson 11's ``serve --chat``)
    tunnel: programs speak plain TCP to us; we speak TLS to the server
        program --plain--> relay ==TLS==> server      (tests, and lesson 11's chat client)

One thread serves every connection, with a selector (lesson 05). Each
connection's TLS is an ``ssl.SSLObject`` over two memory BIOs, not an
SSLSocket: the relay moves the encrypted bytes between the socket and the BIOs
itself, so it decides exactly when OpenSSL reads. That is what makes a
half-close possible. When the plain side sends its FIN we send close_notify
and go on reading the peer's data, where ``SSLSocket.unwrap()`` would go on to
read the peer's close_notify at once, and fail on data still in flight
(``APPLICATION_DATA_AFTER_CLOSE_NOTIFY``).

Each side's ending is passed on as the same kind of ending on the other::

    plain FIN                      <->  TLS close_notify (then FIN)
    a reset (RST)                  <->  a reset (TLS has no reset of its own)
    TCP closed without close_notify ->  a reset: the stream may have been cut short
    a failed handshake              ->  the TLS peer gets OpenSSL's alert; nothing reaches the server

Buffers are bounded (``LIMIT`` bytes each way): when one side stops reading,
the relay stops reading from the other, so backpressure passes through
(lesson 04). A handshake must finish within ``handshake_timeout`` seconds.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import selectors
import socket
import ssl
import struct
import time
from typing import Callable, Iterator, Optional

from .server import POLL_INTERVAL, BackgroundServer, OutOfDescriptors, Stopper, running
from .transcript import ACCEPT, CLOSE, ERROR, NOTE, SERVER, Transcript

LIMIT = 256 * 1024          # bytes buffered each way before the relay stops reading the other side
CHUNK = 65536               # one recv()
HANDSHAKE_TIMEOUT = 10.0    # seconds a new connection has to finish its TLS handshake
IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}

# tap(who, direction, plaintext): sees every byte that crosses the relay in the clear.
Tap = Callable[[str, str, bytes], None]


def abort(sock: socket.socket) -> None:
    """Close with a reset (RST): SO_LINGER on, zero seconds."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def start_connect(address: tuple) -> tuple[socket.socket, bool]:
    """A non-blocking connect to address: (socket, still connecting?). OSError if refused at once."""
    family, kind, proto, _, sockaddr = socket.getaddrinfo(*address[:2], type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    code = sock.connect_ex(sockaddr)
    if code not in (0, *IN_PROGRESS):
        sock.close()
        raise OSError(code, errno.errorcode.get(code, str(code)))
    return sock, code != 0


class Link:
    """One relayed connection: its TLS socket (outer), its plain socket (inner), what is in flight."""

    def __init__(self, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, who: str):
        self.tls, self.incoming, self.outgoing, self.who = tls, incoming, outgoing, who
        self.outer: Optional[socket.socket] = None
        self.inner: Optional[socket.socket] = None
        self.connecting: Optional[socket.socket] = None   # the side whose connect() is under way
        self.started = time.monotonic()
        self.handshaken = False
        self.to_outer = bytearray()       # encrypted, for the TLS peer
        self.to_inner = bytearray()       # plain, for the server or program
        self.tls_done = False             # the TLS peer will send nothing more (close_notify seen)
        self.plain_done = False           # the plain side will send nothing more (FIN seen)
        self.outer_shut = self.inner_shut = False   # we have sent our own end on that side
        self.closed = False

    def wants(self, sock: socket.socket) -> int:
        """The events to watch on one of this link's sockets, given what is in flight."""
        if sock is self.connecting:
            return selectors.EVENT_WRITE
        events = 0
        if sock is self.outer:
            if not self.tls_done and (not self.handshaken or len(self.to_inner) < LIMIT):
                events |= selectors.EVENT_READ
            if self.to_outer:
                events |= selectors.EVENT_WRITE
        elif sock is self.inner:
            if self.handshaken and not self.plain_done and len(self.to_outer) < LIMIT:
                events |= selectors.EVENT_READ
            if self.to_inner:
                events |= selectors.EVENT_WRITE
        return events


class Relay:
    """The event loop: accept, connect the other side, move bytes, pass endings on."""

    def __init__(self, listener: socket.socket, stop: Stopper, log: Transcript, *,
                 context: ssl.SSLContext, server_side: bool, connect_to: tuple,
                 server_hostname: Optional[str] = None, tap: Optional[Tap] = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT):
        self.listener, self.stop, self.log = listener, stop, log
        self.context, self.server_side, self.connect_to = context, server_side, connect_to
        self.server_hostname, self.tap, self.handshake_timeout = server_hostname, tap, handshake_timeout
        self.selector = selectors.DefaultSelector()
        self.watching: dict[socket.socket, int] = {}
        self.links: set[Link] = set()
        self.shortage = OutOfDescriptors(log)
        self.accepted = 0

    # --- the loop ---

    def run(self) -> None:
        """Serve until stopped; then close every connection."""
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        listening = True
        try:
            while not self.stop.is_set():
                if listening != (not self.shortage.paused()):      # out of descriptors: pause accept
                    listening = not listening
                    (self.selector.register if listening else self.selector.unregister)(
                        self.listener, *((selectors.EVENT_READ, None) if listening else ()))
                for key, events in self.selector.select(POLL_INTERVAL):
                    if key.data is None:
                        self.accept()
                    else:
                        self.ready(key.data, key.fileobj, events)
                self.expire_handshakes()
        finally:
            for link in list(self.links):
                self.close(link)
            self.selector.close()

    def ready(self, link: Link, sock: socket.socket, events: int) -> None:
        """One socket of one link is ready: do what it allows, then watch what is needed next."""
        try:
            if sock is link.connecting:
                self.connected(link, sock)
            else:
                if events & selectors.EVENT_WRITE:
                    self.flush(link, sock)
                if events & selectors.EVENT_READ and not link.closed:
                    (self.read_outer if sock is link.outer else self.read_inner)(link)
        except ssl.SSLError as exc:
            self.fail(link, f"TLS failed: {exc.reason or type(exc).__name__}")
        except OSError as exc:          # a reset or a broken pipe on either side
            self.reset(link, sock, exc)
        self.update(link)

    def update(self, link: Link) -> None:
        """Pass each side's end on once its buffer is flushed; close when both ends are passed."""
        if link.closed:
            return
        if link.outer_shut is False and link.plain_done and not link.to_outer and link.outer is not None:
            link.outer_shut = True
            with contextlib.suppress(OSError):
                link.outer.shutdown(socket.SHUT_WR)    # after our close_notify: TLS and TCP both done
        if link.inner_shut is False and link.tls_done and not link.to_inner and link.inner is not None \
                and link.connecting is not link.inner:
            link.inner_shut = True
            with contextlib.suppress(OSError):
                link.inner.shutdown(socket.SHUT_WR)    # the TLS peer's close_notify, as a plain FIN
        if link.outer_shut and link.inner_shut:
            self.close(link)
            return
        for sock in (link.outer, link.inner):
            if sock is not None:
                self.watch(sock, link.wants(sock), link)

    def watch(self, sock: socket.socket, events: int, link: Link) -> None:
        before = self.watching.get(sock, 0)
        if events == before:
            return
        if not events:
            self.selector.unregister(sock)
            del self.watching[sock]
        elif not before:
            self.selector.register(sock, events, link)
            self.watching[sock] = events
        else:
            self.selector.modify(sock, events, link)
            self.watching[sock] = events

    # --- new connections ---

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self.shortage.failed(exc) or exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    return
                raise
            self.shortage.accepted()
            self.accepted += 1
            conn.setblocking(False)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            who = f"client {self.accepted}"
            tls = self.context.wrap_bio(incoming, outgoing, server_side=self.server_side,
                                        server_hostname=None if self.server_side else self.server_hostname)
            link = Link(tls, incoming, outgoing, who)
            self.links.add(link)
            self.log.record(SERVER, ACCEPT, who)
            if self.server_side:          # terminate: the client speaks TLS; the server comes later
                link.outer = conn
            else:                          # tunnel: the program speaks plain; connect the TLS side now
                link.inner = conn
                if not self.open_other_side(link):
                    continue
                if link.connecting is None:
                    self.run_tls(link)
            self.update(link)

    def open_other_side(self, link: Link) -> bool:
        """Connect to where this relay leads; False (and the link closed) if that fails at once."""
        try:
            sock, pending = start_connect(self.connect_to)
        except OSError as exc:
            self.fail(link, f"cannot connect onward: {errno.errorcode.get(exc.errno, exc)}")
            return False
        if self.server_side:
            link.inner = sock
        else:
            link.outer = sock
        link.connecting = sock if pending else None
        return True

    def connected(self, link: Link, sock: socket.socket) -> None:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.fail(link, f"cannot connect onward: {errno.errorcode.get(code, code)}")
            return
        link.connecting = None
        if not self.server_side:
            self.run_tls(link)             # the client speaks first: its ClientHello

    def expire_handshakes(self) -> None:
        deadline = time.monotonic() - self.handshake_timeout
        for link in [l for l in self.links if not l.handshaken and l.started < deadline]:
            self.fail(link, f"no TLS handshake within {self.handshake_timeout:g} s")

    # --- moving bytes ---

    def read_outer(self, link: Link) -> None:
        data = link.outer.recv(CHUNK)
        if data:
            link.incoming.write(data)
            self.run_tls(link)
        elif not link.handshaken:
            self.fail(link, "the peer hung up during the handshake")
        elif not link.tls_done:   # TCP ended, TLS did not: a cut, not an end (a truncation attack?)
            self.log.record(SERVER, ERROR, link.who, detail="TCP closed without close_notify: "
                                                              "passed on as a reset")
            self.close(link, reset=True)

    def run_tls(self, link: Link) -> None:
        """Let OpenSSL work on what has arrived: the handshake, then plaintext for the other side.
        Reads until it wants more, so the incoming BIO is always empty afterwards."""
        if not link.handshaken:
            try:
                link.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                link.handshaken = True
                self.log.record(SERVER, NOTE, link.who, detail=f"{link.tls.version()} handshake done")
                if self.server_side and not self.open_other_side(link):
                    return
        while link.handshaken and not link.tls_done:
            try:
                data = link.tls.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                data = b""
            if not data:                   # the peer's close_notify: it has finished sending
                link.tls_done = True
                break
            if self.tap is not None:
                self.tap(link.who, "client to server" if self.server_side else "server to client", data)
            link.to_inner += data
        link.to_outer += link.outgoing.read()

    def read_inner(self, link: Link) -> None:
        data = link.inner.recv(CHUNK)
        if data:
            if self.tap is not None:
                self.tap(link.who, "server to client" if self.server_side else "client to server", data)
            link.tls.write(data)
        else:                              # FIN: send close_notify, and go on reading the peer
            link.plain_done = True
            try:
                link.tls.unwrap()          # safe: run_tls left the incoming BIO empty
            except ssl.SSLWantReadError:   # sent ours; the peer's close_notify comes later
                pass
        link.to_outer += link.outgoing.read()

    def flush(self, link: Link, sock: socket.socket) -> None:
        buffer = link.to_outer if sock is link.outer else link.to_inner
        try:
            sent = sock.send(buffer)
        except (BlockingIOError, InterruptedError):
            return
        del buffer[:sent]

    # --- endings ---

    def fail(self, link: Link, why: str) -> None:
        """Record why; send OpenSSL's alert, if it made one, on a best-effort basis; close both sides."""
        self.log.record(SERVER, ERROR, link.who, detail=why)
        link.to_outer += link.outgoing.read()
        if link.outer is not None and link.to_outer and link.connecting is not link.outer:
            with contextlib.suppress(OSError):
                link.outer.send(link.to_outer)
        self.close(link)

    def reset(self, link: Link, sock: socket.socket, exc: OSError) -> None:
        side = "TLS side" if sock is link.outer else "plain side"
        self.log.record(SERVER, ERROR, link.who, detail=f"{side}: {type(exc).__name__}: passed on as a reset")
        self.close(link, reset=True)

    def close(self, link: Link, reset: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        self.links.discard(link)
        for sock in (link.outer, link.inner):
            if sock is None:
                continue
            if sock in self.watching:
                self.selector.unregister(sock)
                del self.watching[sock]
            (abort if reset else socket.socket.close)(sock)
        self.log.record(SERVER, CLOSE, link.who)


def relay(listener: socket.socket, stop: Stopper, log: Transcript, **options) -> None:
    """``serve(listener, stop, log)`` for a :class:`Relay` built with ``options``."""
    Relay(listener, stop, log, **options).run()


def terminate(listener: socket.socket, stop: Stopper, log: Transcript, *, context: ssl.SSLContext,
              upstream: tuple, tap: Optional[Tap] = None,
              handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Serve TLS on listener; relay each client's plaintext to the server at ``upstream``."""
    relay(listener, stop, log, context=context, server_side=True, connect_to=upstream, tap=tap,
          handshake_timeout=handshake_timeout)


@contextlib.contextmanager
def tunnel(target: tuple, context: ssl.SSLContext, server_hostname: Optional[str] = None,
           log: Optional[Transcript] = None, tap: Optional[Tap] = None) -> Iterator[BackgroundServer]:
    """A local plain-TCP port that leads to ``target`` over TLS, verified as ``server_hostname``
    (default: target's host). Connect to ``.address`` in plaintext: what you send goes out encrypted."""
    serve = functools.partial(relay, context=context, server_side=False, connect_to=target, tap=tap,
                              server_hostname=server_hostname or target[0])
    with running(serve, log=log, name="tls-tunnel") as server:
        yield server
