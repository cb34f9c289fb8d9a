"""select() and selectors: one thread waits on many sockets at once, and wakes only for those ready.

    python -m lessons.05_select                                    # demo: the three steps
    python -m lessons.05_select serve [--selector default|select|poll|epoll|kqueue]
    python -m lessons.05_select client 'hello'

Lesson 04's loop tried every socket on every pass, ready or not. Here the
loop asks the kernel "which of these can I use without waiting?" and sleeps
until the answer is not empty:

    readable, writable, _ = select.select(want_to_read, want_to_write, [], timeout)

``selectors`` wraps the same idea around the best mechanism the platform has:
epoll on Linux, kqueue on macOS and BSD, poll or select elsewhere. select()
scans every descriptor it is given on every call (O(n)) and cannot take a
descriptor numbered FD_SETSIZE (1024) or above; epoll and kqueue keep the
interest list in the kernel and return only what is ready.

Three steps: the tutorial's select loop (broken on purpose), a correct
select() echo server, and the same server with ``selectors``. Both keep
lesson 02's echo contract, and ask for write-readiness only while they have
output waiting (otherwise an idle socket is "writable" on every call).
"""
from __future__ import annotations

import selectors
import select
import socket

from lessons.kit import echo
from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.nonblocking import OUTPUT_LIMIT, RECV_SIZE, Connection   # as lesson 04 built it
from lessons.kit.server import POLL_INTERVAL, raise_fd_limit
from lessons.kit.transcript import (ACCEPT, CLOSE, EOF, ERROR, READY, RECV, SEND, SERVER,
                                    Transcript)

TITLE = "Multiplexing with select and selectors"
FD_SETSIZE = 1024   # select()'s fixed limit on Linux and most platforms


# --- Step 1: the tutorial's select loop, kept to be broken in the notebook. ---

def naive_select_server(listener, stop, log):
    """The tutorial's loop. Fixed below in serve_select()."""
    inputs = [listener]
    while not stop.is_set():                                        # (ours, to stop it)
        readable, _, _ = select.select(inputs, [], [], POLL_INTERVAL)  # (timeout ours)
        log.record(SERVER, READY, detail=f"{len(readable)} readable")
        for s in readable:
            if s is listener:
                conn, _ = listener.accept()      # BUG: left blocking: one stuck send() stalls all
                inputs.append(conn)
            else:
                data = s.recv(1024)
                if data:
                    s.send(b"Hello, world!")     # BUG: not an echo; written inline; partial
                                                 #      sends unnoticed
                # BUG: on b'' (EOF) the socket is never closed or removed, so select()
                #      reports it readable on every call from now on, and fds leak
    for s in inputs[1:]:                                            # (ours: no leaks in tests)
        s.close()


def naive_flaws() -> dict:
    """Run one client against the tutorial's loop and measure what goes wrong."""
    import time
    from lessons.kit import running

    with running(naive_select_server) as server:
        with socket.create_connection(server.address, timeout=2) as sock:
            sock.sendall(b"echo me")
            reply = sock.recv(1024)
        time.sleep(0.1)                           # the client has gone
        before = len(server.log.events())
        time.sleep(0.05)                          # short: the transcript keeps 100,000 events
        wakeups = len(server.log.events()) - before
        counts = [e.detail for e in server.log.events()[-3:]]
    return {"reply": reply,
            "wake-ups in 0.05 s": wakeups,
            "woken by the dead socket": all(c == "1 readable" for c in counts)}


# --- Shared by steps 2 and 3: accept, read, write, close. ---

class EchoLoop:
    """The per-socket work of an event-loop echo server, whatever waits for readiness."""

    def __init__(self, log: Transcript, fd_limit: int | None = None):
        self.log = log
        self.fd_limit = fd_limit   # refuse sockets numbered at or above this (select's limit)
        self.accepted = 0
        self.connections: dict[socket.socket, Connection] = {}

    def accept(self, listener: socket.socket) -> Connection | None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):   # another loop took it, or a signal
            return None
        self.accepted += 1
        who = f"client {self.accepted}"
        if self.fd_limit is not None and sock.fileno() >= self.fd_limit:
            # select() cannot watch this descriptor: refuse this client, keep serving the rest.
            self.log.record(SERVER, ERROR, who, detail=f"refused: descriptor beyond FD_SETSIZE ({FD_SETSIZE})")
            sock.close()
            return None
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, who)
        self.connections[sock] = conn
        self.log.record(SERVER, ACCEPT, who)
        return conn

    def readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self.fail(conn, exc)
        if not data:
            self.log.record(SERVER, EOF, conn.who)
            conn.client_done = True
        else:
            self.log.record(SERVER, RECV, conn.who, len(data))
            conn.output += data
            self.writable(conn)          # try at once: usually the whole echo fits

    def writable(self, conn: Connection) -> None:
        if conn.output:
            try:
                sent = conn.sock.send(conn.output)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                return self.fail(conn, exc)
            self.log.record(SERVER, SEND, conn.who, sent)
            del conn.output[:sent]

    def fail(self, conn: Connection, exc: OSError) -> None:
        self.log.record(SERVER, ERROR, conn.who, detail=type(exc).__name__)
        conn.client_done, conn.output = True, bytearray()

    def finished(self, conn: Connection) -> bool:
        """Close a connection whose client is done and whose echo is all sent."""
        if conn.client_done and not conn.output:
            del self.connections[conn.sock]
            conn.sock.close()
            self.log.record(SERVER, CLOSE, conn.who)
            return True
        return False

    def close_all(self) -> None:
        for sock in self.connections:
            sock.close()
        self.connections.clear()


def wants_to_read(conn: Connection) -> bool:
    """Read only while there is room to keep the echo: that is backpressure."""
    return not conn.client_done and len(conn.output) < OUTPUT_LIMIT


def ready_names(listener, socks, loop: EchoLoop, suffix: str) -> list[str]:
    return [("listener" if s is listener else loop.connections[s].who) + suffix for s in socks
            if s is listener or s in loop.connections]


# --- Step 2: a correct select() echo server. ---

def serve_select(listener: socket.socket, stop, log: Transcript) -> None:
    if listener.fileno() >= FD_SETSIZE:
        raise ValueError(f"the listener's descriptor is beyond FD_SETSIZE ({FD_SETSIZE}); use selectors")
    listener.setblocking(False)
    loop = EchoLoop(log, fd_limit=FD_SETSIZE)
    try:
        while not stop.is_set():
            conns = list(loop.connections.values())
            want_read = [listener] + [c.sock for c in conns if wants_to_read(c)]
            want_write = [c.sock for c in conns if c.output]   # only while output waits
            readable, writable, _ = select.select(want_read, want_write, [], POLL_INTERVAL)
            if not readable and not writable:
                continue                      # timed out: just a chance to check stop
            if log.wants(READY):
                log.record(SERVER, READY, detail=", ".join(
                ready_names(listener, readable, loop, " readable") + ready_names(listener, writable, loop, " writable")))
            for sock in readable:
                if sock is listener:
                    loop.accept(listener)
                else:
                    loop.readable(loop.connections[sock])
            for sock in writable:
                if sock in loop.connections:
                    loop.writable(loop.connections[sock])
            for conn in list(loop.connections.values()):
                loop.finished(conn)
    finally:
        loop.close_all()


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


def serve_selectors(listener: socket.socket, stop, log: Transcript, selector: str = "default") -> None:
    sel = SELECTORS[selector]()
    limited = isinstance(sel, getattr(selectors, "SelectSelector", ()))   # select() underneath
    loop = EchoLoop(log, fd_limit=FD_SETSIZE if limited else None)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, data=None)

    def interest(conn: Connection) -> int:
        return ((selectors.EVENT_READ if wants_to_read(conn) else 0)
                | (selectors.EVENT_WRITE if conn.output else 0))

    timeline = log.wants(READY)   # building the detail costs time: only if it is kept
    try:
        while not stop.is_set():
            events = sel.select(timeout=POLL_INTERVAL)
            if events and timeline:
                log.record(SERVER, READY, detail=", ".join(
                    ("listener" if key.data is None else key.data.who)
                    + (" readable" if mask & selectors.EVENT_READ else "")
                    + (" writable" if mask & selectors.EVENT_WRITE else "")
                    for key, mask in events))
            for key, mask in events:
                if key.data is None:
                    conn = loop.accept(listener)
                    if conn is not None:
                        sel.register(conn.sock, selectors.EVENT_READ, data=conn)
                    continue
                conn = key.data
                if mask & selectors.EVENT_READ:
                    loop.readable(conn)
                if mask & selectors.EVENT_WRITE:
                    loop.writable(conn)
                if conn.client_done and not conn.output:
                    sel.unregister(conn.sock)   # before closing: the selector holds the descriptor
                    loop.finished(conn)
                    continue
                wanted = interest(conn)
                if wanted != key.events:   # ask for write-readiness only while output waits
                    sel.modify(conn.sock, wanted, data=conn)
    finally:
        sel.close()
        loop.close_all()


def make_serve(selector: str = "default"):
    """serve() for the command line and the kit: the selectors server on one backend."""
    def serve(listener, stop, log):
        serve_selectors(listener, stop, log, selector=selector)
    serve.__name__ = f"serve_{selector}"
    return serve


serve = make_serve("default")


# --- Demo and command line. ---

def demo() -> int:
    from rich.console import Console
    from lessons.kit import adversary, running

    console = Console(highlight=False)
    console.rule("[bold]Lesson 05: select and selectors")
    flaws = naive_flaws()
    console.print(f"the tutorial's loop answered {flaws['reply']!r} to b'echo me'")
    console.print(f"after that client left, the loop woke {flaws['wake-ups in 0.05 s']:,} times in 0.05 s "
                  f"(spinning), every time for the dead socket: {flaws['woken by the dead socket']}")
    ok = True
    for name in SELECTORS:
        log = Transcript()
        with running(make_serve(name), log=log) as server:
            replies = [echo.echo(server.address, f"client {i}".encode()) for i in range(3)]
            big = adversary.flood(server.address, 4 * 1024 * 1024)
            dribbled = adversary.dribble(server.address, b"slowly", delay=0.005)
        good = (replies == [b"client 0", b"client 1", b"client 2"] and dribbled == b"slowly"
                and big == adversary.flood_pattern(4 * 1024 * 1024))
        ok &= good
        console.print(f"selectors on {name:7}: three echoes, a 4 MiB flood and a dribbler, all correct: {good}")
    with running(serve_select) as server:
        good = echo.echo(server.address, b"plain select()") == b"plain select()"
    console.print(f"step 2, plain select(): correct: {good}")
    return 0 if ok and good else 1


def add_serve_args(parser) -> None:
    parser.add_argument("--selector", choices=list(SELECTORS), default="default",
                        help="how to wait for readiness (only what this platform has is offered)")


def serve_from_args(args):
    from lessons.kit.cli import stderr
    old, new = raise_fd_limit()
    if new > old:
        stderr.print(f"[dim]raised this process's open-file limit from {old} to {new}[/]")
    if args.selector == "select":
        stderr.print(f"[dim]select: clients on descriptors past FD_SETSIZE ({FD_SETSIZE}) are refused[/]")
    return make_serve(args.selector)


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="05_select", demo=demo, serve=serve,
                      add_client_args=echo.add_client_args,
                      client=echo.client, port=9905, add_serve_args=add_serve_args,
                      serve_from_args=serve_from_args)


if __name__ == "__main__":
    main_guard(main)
