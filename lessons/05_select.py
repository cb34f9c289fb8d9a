"""select() and selectors: one thread waits for whichever of many sockets is ready.

    python -m lessons.05_select                   # demo: the tutorial's loop, then fixed
    python -m lessons.05_select serve [--selector default|select|poll|epoll] [--idle-timeout 60]
    python -m lessons.05_select client 'hello'

One thread serving many sockets must never wait on any one of them, so every
socket here is non-blocking: recv() and send() do what they can at once and
raise BlockingIOError otherwise. Each client is a ``Connection``: its socket,
a name for the transcript, an output buffer holding the echo that send() has
not taken yet, and whether the client has finished sending (recv() gave b'').
Lesson 04 tried every socket on every pass, ready or not. Here the loop asks
the kernel which sockets are ready, and sleeps until some are:

    readable, writable, _ = select.select(want_to_read, want_to_write, [], timeout)

Readiness is *level-triggered*: a socket is reported on every call for as long
as it is ready (unread data, room to send). So ask for write-readiness only
while output waits, or an idle socket wakes the loop on every call.

select() takes bitmaps indexed by descriptor number: the kernel scans every
number up to the highest one passed, so a call costs O(highest descriptor),
and a descriptor numbered FD_SETSIZE (1024) or more cannot be passed at all.
poll() takes a list (O(descriptors passed)); epoll (Linux) and kqueue (macOS,
BSD) keep the interest list in the kernel and return only what is ready.
``selectors`` puts one API over all of them: register, modify, unregister, select.

Three steps: the tutorial's select loop, run as written (it breaks), a correct
select() echo server, and the same server with selectors. Both keep lesson
02's echo contract.
"""
from __future__ import annotations

import collections
import functools
import itertools
import select
import selectors
import socket
import time
from typing import Optional

from rich.console import Console

from lessons.kit import adversary, echo, fastecho, probes, running
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, seconds,
                             serve_command, serve_forever, stderr)
from lessons.kit.nonblocking import OUTPUT_LIMIT, RECV_SIZE, Connection   # as lesson 04 built it
from lessons.kit.server import CLIENT_GAVE_UP, POLL_INTERVAL, OutOfDescriptors, raise_fd_limit
from lessons.kit.transcript import ACCEPT, CLOSE, EOF, ERROR, READY, RECV, SEND, SERVER, Transcript

TITLE = "Multiplexing with select and selectors"
FD_SETSIZE = 1024      # select()'s fixed limit on Linux and most platforms
IDLE_TIMEOUT = 60.0    # close a connection that moved no byte for this long (serve's default)


# --- Step 1: the tutorial's select loop, as written. ---

def tutorial_select_loop(listener, stop, log):
    """The tutorial's loop, line for line (our changes marked). Fixed in serve_select()."""
    server_socket = listener      # (ours: running() made it, bound to port 0 and listening)
    server_socket.setblocking(0)  # 设置为非阻塞
    inputs = [server_socket]
    outputs = []

    while inputs and not stop.is_set():                                   # (ours: and not stop)
        readable, writable, exceptional = select.select(inputs, outputs, inputs,  # (ours: cut,
                                                        POLL_INTERVAL)  # (ours: a timeout)

        for s in readable:
            if s is server_socket:
                connection, client_address = s.accept()
                connection.setblocking(0)
                inputs.append(connection)
            else:
                data = s.recv(1024)
                if data:
                    outputs.append(s)
                else:
                    inputs.remove(s)
                    if s in outputs:
                        outputs.remove(s)

        for s in writable:
            s.send(b'Hello, world!')
            outputs.remove(s)

        for s in exceptional:
            inputs.remove(s)
            if s in outputs:
                outputs.remove(s)
    for s in inputs[1:]:                                                  # (ours: at stop only)
        s.close()                                                         # (ours)


def tutorial_loop_remembering(listener, stop, log):
    """The same loop plus a dict of who is who, as any real server keeps. Now nothing is let go."""
    server_socket = listener      # (ours: running() made it, bound to port 0 and listening)
    server_socket.setblocking(0)  # 设置为非阻塞
    inputs = [server_socket]
    outputs = []
    clients = {}                                                          # (ours)

    while inputs and not stop.is_set():                                   # (ours: and not stop)
        readable, writable, exceptional = select.select(inputs, outputs, inputs,  # (ours: cut,
                                                        POLL_INTERVAL)  # (ours: a timeout)

        for s in readable:
            if s is server_socket:
                connection, client_address = s.accept()
                connection.setblocking(0)
                inputs.append(connection)
                clients[connection] = client_address                     # (ours)
            else:
                data = s.recv(1024)
                if data:
                    outputs.append(s)
                else:
                    inputs.remove(s)
                    if s in outputs:
                        outputs.remove(s)

        for s in writable:
            s.send(b'Hello, world!')
            outputs.remove(s)

        for s in exceptional:
            inputs.remove(s)
            if s in outputs:
                outputs.remove(s)
    for s in clients:                                                     # (ours: at stop only)
        s.close()                                                         # (ours)


# --- Steps 2 and 3 share the per-socket work: accept, read, write, close. ---

class Echoer:
    """The per-socket work of an event-loop echo server: it never waits, and never chooses
    what to wait for. The loop around it (select() or a selector) does that."""

    def __init__(self, log: Transcript, idle_timeout: Optional[float] = None,
                 fd_limit: Optional[int] = None):
        self.log = log
        self.idle_timeout = idle_timeout
        self.fd_limit = fd_limit            # refuse descriptors numbered this or more (select)
        self.connections: dict[socket.socket, Connection] = {}
        self.heard: collections.OrderedDict[Connection, float] = collections.OrderedDict()
        self.shortage = OutOfDescriptors(log)   # out of descriptors: pause accepting, say so once
        self.accepted = 0

    def accept(self, listener: socket.socket) -> Optional[Connection]:
        """Accept one waiting client, or return None if there is none we can take now."""
        try:
            sock, _ = listener.accept()
        except BlockingIOError:       # it gave up before we got to it, or another loop took it
            return None
        except OSError as exc:
            if exc.errno in CLIENT_GAVE_UP or self.shortage.failed(exc):
                return None           # (the listener's queue keeps the client waiting)
            raise
        self.shortage.accepted()
        self.accepted += 1
        who = f"client {self.accepted}"
        if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
            # select() cannot watch this descriptor: refuse this client, keep serving the rest.
            self.log.record(SERVER, ERROR, who, detail=f"refused: fd past FD_SETSIZE {FD_SETSIZE}")
            sock.close()
            return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = self.connections[sock] = Connection(sock, who)
        self.heard[conn] = time.monotonic()
        self.log.record(SERVER, ACCEPT, who)
        return conn

    def readable(self, conn: Connection) -> None:
        """Read what has arrived into the connection's output (the echo), or note EOF."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:        # a reset: this client is gone
            return self._failed(conn, exc)
        self._heard(conn)
        if data:
            self.log.record(SERVER, RECV, conn.who, len(data))
            conn.output += data
        else:
            self.log.record(SERVER, EOF, conn.who)
            conn.client_done = True

    def writable(self, conn: Connection) -> None:
        """Send what the socket takes now; keep the rest for the next time."""
        try:
            sent = conn.sock.send(conn.output)
        except BlockingIOError:
            return
        except OSError as exc:
            return self._failed(conn, exc)
        self._heard(conn)
        self.log.record(SERVER, SEND, conn.who, sent)
        del conn.output[:sent]

    def finished(self, conn: Connection) -> bool:
        """The client has finished and all of its echo is sent: time to close."""
        return conn.client_done and not conn.output

    def close(self, conn: Connection, why: str = "") -> None:
        """Close one connection (a selector must have let go of it first)."""
        del self.connections[conn.sock], self.heard[conn]
        conn.sock.close()
        self.log.record(SERVER, CLOSE, conn.who, detail=why)

    def idle(self) -> list[Connection]:
        """The connections that moved no byte for idle_timeout seconds, oldest first."""
        if not self.idle_timeout:
            return []
        too_old = time.monotonic() - self.idle_timeout
        return list(itertools.takewhile(lambda conn: self.heard[conn] < too_old, self.heard))

    def close_all(self) -> None:
        """Close every connection (when the server stops)."""
        for sock in self.connections:
            sock.close()
        self.connections.clear()
        self.heard.clear()

    def _heard(self, conn: Connection) -> None:
        self.heard[conn] = time.monotonic()
        self.heard.move_to_end(conn)   # so the quietest connection is always first

    def _failed(self, conn: Connection, exc: OSError) -> None:
        self.log.record(SERVER, ERROR, conn.who, detail=type(exc).__name__)
        conn.client_done, conn.output = True, bytearray()


def wants_to_read(conn: Connection, limit: int = OUTPUT_LIMIT) -> bool:
    """Read only while the client may send more and its echo has room: that is backpressure."""
    return not conn.client_done and len(conn.output) < limit


def interest(conn: Connection, limit: int = OUTPUT_LIMIT) -> int:
    """What to wait for on conn: readable while it may read, writable while output waits."""
    return ((selectors.EVENT_READ if wants_to_read(conn, limit) else 0)
            | (selectors.EVENT_WRITE if conn.output else 0))


# --- Step 2: a correct select() echo server. ---

def serve_select(listener: socket.socket, stop, log: Transcript,
                 idle_timeout: Optional[float] = IDLE_TIMEOUT) -> None:
    """Echo every client from one thread, with select() and two lists rebuilt on every pass."""
    if listener.fileno() >= FD_SETSIZE:
        raise ValueError(f"the listener's fd is past FD_SETSIZE ({FD_SETSIZE}): use selectors")
    listener.setblocking(False)
    echoer = Echoer(log, idle_timeout, fd_limit=FD_SETSIZE)
    try:
        while not stop.is_set():
            conns = list(echoer.connections.values())
            want_read = [c.sock for c in conns if wants_to_read(c)]
            if not echoer.shortage.paused():     # out of descriptors: leave the listener alone
                want_read.append(listener)
            want_write = [c.sock for c in conns if c.output]   # only while output waits
            readable, writable, _ = select.select(want_read, want_write, [], POLL_INTERVAL)
            if (readable or writable) and log.wants(READY):
                ready = [(s, selectors.EVENT_READ) for s in readable]
                log.record(SERVER, READY, detail=ready_list(
                    ready + [(s, selectors.EVENT_WRITE) for s in writable], echoer))
            for sock in readable:
                if sock is listener:
                    echoer.accept(listener)
                else:
                    echoer.readable(echoer.connections[sock])
            for sock in dict.fromkeys(readable + writable):   # each once, in a stable order
                conn = echoer.connections.get(sock)
                if conn is None:                               # the listener
                    continue
                if conn.output:
                    echoer.writable(conn)          # right after a read, usually all of it fits
                if echoer.finished(conn):
                    echoer.close(conn)
            for conn in echoer.idle():
                echoer.close(conn, f"idle for {idle_timeout:g} s")
    finally:
        echoer.close_all()


def ready_list(ready: list[tuple[socket.socket, int]], echoer: Echoer) -> str:
    """'listener readable, client 2 writable': who was ready for what, without ports."""
    return ", ".join((echoer.connections[s].who if s in echoer.connections else "listener")
                     + (" readable" if mask & selectors.EVENT_READ else "")
                     + (" writable" if mask & selectors.EVENT_WRITE else "") for s, mask in ready)


# --- Step 3: the same server with selectors. ---

SELECTORS = {
    name: cls for name, cls in [
        ("select", getattr(selectors, "SelectSelector", None)),
        ("poll", getattr(selectors, "PollSelector", None)),
        ("epoll", getattr(selectors, "EpollSelector", None)),
        ("kqueue", getattr(selectors, "KqueueSelector", None)),
        ("default", selectors.DefaultSelector),
    ] if cls is not None
}


def serve_selectors(listener: socket.socket, stop, log: Transcript, selector: str = "default",
                    idle_timeout: Optional[float] = IDLE_TIMEOUT) -> None:
    """Echo every client from one thread; a selector keeps the interest list for us."""
    with SELECTORS[selector]() as sel:
        select_inside = isinstance(sel, getattr(selectors, "SelectSelector", ()))
        echoer = Echoer(log, idle_timeout, fd_limit=FD_SETSIZE if select_inside else None)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ)      # its data is None: that marks it
        watching = True
        try:
            while not stop.is_set():
                events = sel.select(timeout=POLL_INTERVAL)
                if events and log.wants(READY):
                    ready = [(key.fileobj, mask) for key, mask in events]
                    log.record(SERVER, READY, detail=ready_list(ready, echoer))
                for key, mask in events:
                    if key.data is None:                  # the listener: a client is waiting
                        conn = echoer.accept(listener)
                        if conn is not None:
                            sel.register(conn.sock, selectors.EVENT_READ, data=conn)
                        continue
                    conn = key.data
                    if mask & selectors.EVENT_READ:
                        echoer.readable(conn)
                    if conn.output:
                        echoer.writable(conn)         # after a read, all of it usually fits
                    if echoer.finished(conn):
                        sel.unregister(conn.sock)     # before close(): the selector holds its fd
                        echoer.close(conn)
                    elif interest(conn) != key.events:
                        sel.modify(conn.sock, interest(conn), data=conn)
                for conn in echoer.idle():
                    sel.unregister(conn.sock)
                    echoer.close(conn, f"idle for {idle_timeout:g} s")
                if watching == echoer.shortage.paused():
                    # Out of descriptors, a waiting client keeps the listener readable: stop
                    # watching it for a moment, or the loop would spin; then watch it again.
                    if watching:
                        sel.unregister(listener)
                    else:
                        sel.register(listener, selectors.EVENT_READ)
                    watching = not watching
        finally:
            echoer.close_all()


serve = functools.partial(serve_selectors, selector="default")


# --- Level-triggered and edge-triggered readiness. ---

def times_reported(edge: bool, waits: int = 3) -> int:
    """Five bytes arrive and nobody reads them: in how many of ``waits`` waits is the socket
    reported readable? Level-triggered: every time. Edge-triggered (epoll's EPOLLET,
    kqueue's EV_CLEAR): once, when they arrive; a loop must then read until BlockingIOError."""
    with adversary.connected_pair() as (ours, theirs):
        theirs.sendall(b"hello")
        time.sleep(0.05)
        if hasattr(select, "epoll"):
            with select.epoll() as ep:
                ep.register(ours.fileno(), select.EPOLLIN | (select.EPOLLET if edge else 0))
                return sum(bool(ep.poll(0.05)) for _ in range(waits))
        with select.kqueue() as kq:   # macOS, BSD
            flags = select.KQ_EV_ADD | (select.KQ_EV_CLEAR if edge else 0)
            kq.control([select.kevent(ours.fileno(), select.KQ_FILTER_READ, flags)], 0)
            return sum(bool(kq.control(None, 1, 0.05)) for _ in range(waits))


# --- Demo and command line. ---

def demo() -> int:
    console = Console(highlight=False)
    say = console.print
    console.rule("[bold]Lesson 05: select and selectors")
    say("[bold]The tutorial's select loop, as written:")
    hello = probes.replies(tutorial_select_loop, b"echo me")
    say(f"  to b'echo me' it answers {hello!r}")
    crash = probes.send_and_close(tutorial_select_loop)
    say("  a client sends and closes at once, and the server dies:")
    say(f"    {crash['the server']}")
    say(f"  the client waiting its turn gets {crash['the client waiting its turn got']}")
    held = probes.polite_clients(tutorial_loop_remembering)["descriptors held after every 5 clients"]
    say("  it never calls close(); add a dict of clients, and after 5, 10, 15, 20 clients")
    say(f"    it holds {', '.join(map(str, held))} descriptors")
    ok = hello == b"Hello, world!" and "ValueError" in crash["the server"] and held[-1] == 20
    say("[bold]Fixed: one thread, any way of waiting:")
    flood = adversary.flood_pattern(4 << 20)
    for name, serve_fn in [("select() by hand", serve_select),
                           *[(f"selectors/{s}", functools.partial(serve_selectors, selector=s))
                             for s in SELECTORS]]:
        with running(serve_fn) as server:
            good = ([echo.echo(server.address, b"client %d" % i) for i in range(3)]
                    == [b"client 0", b"client 1", b"client 2"]
                    and adversary.flood(server.address, 4 << 20) == flood
                    and adversary.dribble(server.address, b"slowly", delay=0.005) == b"slowly")
        ok &= good
        say(f"  {name:18} 3 echoes, a 4 MiB flood, a dribbler: all correct: {good}")
    level, edge = times_reported(edge=False), times_reported(edge=True)
    say(f"[bold]5 unread bytes, 3 waits:[/] reported {level} times level-triggered, "
        f"{edge} edge-triggered")
    return 0 if ok and (level, edge) == (3, 1) else 1


# How fast can one Python thread echo? The same contract, with the Python work per message
# cut down step by measured step: lessons/kit/fastecho.py, benchmarks/RESULTS.md.
serve_fast = fastecho.serve


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "05_select")
    serve_cmd = serve_command(commands, port=9905)
    serve_cmd.add_argument("--selector", choices=list(SELECTORS), default="default", metavar="NAME",
                           help="how to wait for readiness: " + ", ".join(SELECTORS) +
                                " (the ones this platform has; default: the best of them)")
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="close a connection that sends and takes nothing for this long "
                                "(0: never; default %(default)g)")
    serve_cmd.add_argument("--fast", action="store_true",
                           help="serve the fast variant instead (lessons/kit/fastecho.py: epoll "
                                "directly, less Python per message; same echo contract)")
    echo.add_client_args(client_command(commands, port=9905))
    args = parser.parse_args(argv)
    if args.command == "serve":
        old, new = raise_fd_limit()   # every client is a descriptor: allow many
        if not args.quiet:
            if new > old:
                stderr.print(f"[dim]raised this process's open-file limit from {old} to {new}[/]")
            if args.selector == "select":
                stderr.print(f"[dim]select: clients on descriptors past FD_SETSIZE ({FD_SETSIZE}) "
                             "are refused[/]")
        serve_fn = functools.partial(serve_selectors, selector=args.selector,
                                     idle_timeout=args.idle_timeout or None)
        if args.fast:
            serve_fn = functools.partial(serve_fast, idle_timeout=args.idle_timeout or None)
        return serve_forever(serve_fn, args, "05_select")
    if args.command == "client":
        return run_client(echo.client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
