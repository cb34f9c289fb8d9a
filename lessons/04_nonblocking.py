"""Non-blocking: one thread serves many clients by never waiting, and pays in CPU.

    python -m lessons.04_nonblocking                # demo: the tutorial's line, EAGAIN, the cost
    python -m lessons.04_nonblocking serve [--port 9904] [--idle-timeout 60]
    python -m lessons.04_nonblocking client 'hello'

After ``sock.setblocking(False)`` no call waits. If it cannot finish at once it
raises ``BlockingIOError`` (errno EAGAIN or EWOULDBLOCK: "the operation would
block, try again later") instead. A socket with a timeout sits in between:

    call       blocking socket        with settimeout(t)          non-blocking socket
    accept()   waits for a client     waits up to t, then         BlockingIOError if none
                                      raises TimeoutError         is queued
    recv(n)    waits for data or EOF  the same                    BlockingIOError if
                                                                  nothing has arrived
    send(b)    waits until ALL of b   waits up to t for room,     queues what fits now,
               is queued              then queues what fits and   returns the count;
                                      returns the count           BlockingIOError if none fits

Python makes a timeout out of a non-blocking socket: it waits with poll()
until the call can make progress, then makes it once. That is why lesson 02's
send() on a socket with a timeout took only part of a large buffer.

The tutorial's advice is one line, ``server_socket.setblocking(0)``. Dropped
into its blocking echo server, it ends the server at the first accept() that
finds nobody waiting. A server built for non-blocking sockets catches
BlockingIOError and comes back later: it loops over every socket, again and
again, trying each one (a *polling* loop). It keeps an output buffer per
connection for what send() has not taken yet, and stops reading from a client
whose buffer is full. When nobody has anything to say the loop still spins:
that is the cost lesson 05's select() removes.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console

try:
    import fcntl   # Unix only: to look at a descriptor's O_NONBLOCK flag
except ImportError:
    fcntl = None

from lessons.kit import adversary, echo, running
from lessons.kit.cli import (lesson_parser, main_guard, run_client, seconds, serve_command,
                             serve_forever, client_command, stderr)
from lessons.kit.stream import recv_until_eof
from lessons.kit.server import (CLIENT_GAVE_UP, JOIN_TIMEOUT, BackgroundServer, OutOfDescriptors,
                                listen, raise_fd_limit)
from lessons.kit.transcript import (ACCEPT, CLOSE, EOF, ERROR, NOTE, READY, RECV, SEND, SERVER,
                                    Transcript)

TITLE = "Non-blocking sockets"
RECV_SIZE = 65536
OUTPUT_LIMIT = 1 << 20   # stop reading from a client with this much echo still unsent
IDLE_TIMEOUT = 60.0      # close a connection that moved no byte for this long (serve's default)


# --- The tutorial's one line, in the tutorial's blocking echo server. ---

def tutorial_server_nonblocking(listener, stop, log):
    """The tutorial's echo server with its line setblocking(0) added. It does not survive."""
    server_socket = listener   # (ours: running() made it: socket(), bind() to port 0, listen())
    log.record(SERVER, NOTE, detail="Server listening on port 9999...")   # (ours: was print)
    server_socket.setblocking(0)  # 设置为非阻塞

    while not stop.is_set():                                         # (ours: was while True)
        # 接受客户端连接
        client_socket, addr = server_socket.accept()
        log.record(SERVER, ACCEPT, "a client")   # (ours: was print(f'Got connection from {addr}'))

        # 接收数据
        data = client_socket.recv(1024)
        if not data:
            break

        # 发送回复
        client_socket.send(data)

        # 关闭连接
        client_socket.close()


def run_tutorial_line(waiting: int = 0) -> tuple[list[bytes], str]:
    """Start that server with ``waiting`` clients already queued, each with a message sent.
    Return the replies they got and how the server ended."""
    with listen() as listener, contextlib.ExitStack() as stack:
        address = listener.getsockname()[:2]
        clients = [stack.enter_context(socket.create_connection(address, timeout=2))
                   for _ in range(waiting)]
        for number, client in enumerate(clients, 1):
            client.sendall(b"message %d" % number)
        server = BackgroundServer(tutorial_server_nonblocking, listener).start()
        server.thread.join(JOIN_TIMEOUT)   # it ends by itself
        server.shutdown(reraise=False)
        replies = [client.recv(100) for client in clients]
    error = server.errors[0] if server.errors else None
    ended = f"{type(error).__name__} ({errno_name(error)})" if error else "still running"
    return replies, ended


# --- A server built for non-blocking sockets: try everyone, again and again. ---

@dataclass(eq=False)
class Connection:
    """A client of an event-loop server: its socket, its name, and its unsent output."""
    sock: socket.socket
    who: str
    output: bytearray = field(default_factory=bytearray)   # echo not yet taken by send()
    client_done: bool = False                              # recv() returned b'': EOF


@dataclass
class Counters:
    """How the loop spent its passes: how many, and how many found nothing to do."""
    passes: int = 0
    idle_passes: int = 0


def serve(listener: socket.socket, stop, log: Transcript, nap: float = 0.001,
          counters: Counters | None = None, idle_timeout: float | None = IDLE_TIMEOUT) -> None:
    """Echo every client, in one thread, by trying each socket in turn.

    ``nap`` is how long to sleep after a pass that found nothing to do. With 0
    the loop spins flat out (one core at 100% while every client is idle); a
    longer nap burns less CPU but answers later. No value is good: that is
    the point of lesson 05. ``idle_timeout`` (None: never) closes a connection
    that moved no byte for that many seconds.
    """
    counters = counters if counters is not None else Counters()
    listener.setblocking(False)
    connections: list[Connection] = []
    heard: dict[Connection, float] = {}   # when each connection last moved a byte
    shortage = OutOfDescriptors(log)      # accept() out of descriptors: pause, say so once
    accepted = 0
    try:
        while not stop.is_set():
            counters.passes += 1
            done: list[tuple] = []   # what this pass achieved: (kind, who, nbytes, detail)
            while not shortage.paused():   # take every client that is waiting, not one per pass
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:   # nobody (more) is waiting
                    break
                except OSError as exc:
                    if exc.errno in CLIENT_GAVE_UP:   # it left before we got to it
                        continue
                    if shortage.failed(exc):          # no descriptor for it: keep serving the rest
                        break
                    raise
                shortage.accepted()
                sock.setblocking(False)   # Linux does not pass O_NONBLOCK on to accepted sockets
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                accepted += 1
                conn = Connection(sock, f"client {accepted}")
                connections.append(conn)
                heard[conn] = time.monotonic()
                done.append((ACCEPT, conn.who, 0, ""))
            now = time.monotonic()
            for conn in list(connections):
                before, why = len(done), ""
                try:
                    step(conn, done)
                except OSError as exc:   # reset or broken pipe: drop this client only
                    done.append((ERROR, conn.who, 0, type(exc).__name__))
                    conn.client_done, conn.output = True, bytearray()
                if len(done) > before:
                    heard[conn] = now
                elif idle_timeout and now - heard[conn] > idle_timeout:   # silent too long: let go
                    conn.client_done, conn.output = True, bytearray()
                    why = f"idle for {idle_timeout:g} s"
                if conn.client_done and not conn.output:
                    connections.remove(conn)
                    del heard[conn]
                    conn.sock.close()
                    done.append((CLOSE, conn.who, 0, why))
            if done:
                # Nothing told us who was ready: we tried everyone, and these answered.
                ready = ", ".join(dict.fromkeys(who for _, who, _, _ in done))
                log.record(SERVER, READY, detail=f"tried all; {ready} moved")
                for kind, who, nbytes, detail in done:
                    log.record(SERVER, kind, who, nbytes, detail)
            else:
                counters.idle_passes += 1
                if nap:
                    time.sleep(nap)
    finally:
        for conn in connections:
            conn.sock.close()


def step(conn: Connection, done: list) -> None:
    """Try to read once and to write once on one connection; note what moved."""
    if not conn.client_done and len(conn.output) < OUTPUT_LIMIT:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:   # not an error: nothing has arrived yet
            pass
        else:
            if data:
                done.append((RECV, conn.who, len(data), ""))
                conn.output += data
            else:
                done.append((EOF, conn.who, 0, ""))
                conn.client_done = True
    if conn.output:
        try:
            sent = conn.sock.send(conn.output)   # may take only part: keep the rest for later
        except BlockingIOError:   # the send buffer is full: try again next pass
            pass
        else:
            done.append((SEND, conn.who, sent, ""))
            del conn.output[:sent]


# --- Seeing EAGAIN and partial sends for yourself. ---

def would_block_examples() -> dict:
    """What each call does on a non-blocking socket when it cannot finish now."""
    seen = {}
    with listen() as listener:
        listener.setblocking(False)
        try:
            listener.accept()
        except BlockingIOError as exc:
            seen["accept() with no client waiting"] = f"BlockingIOError ({errno_name(exc)})"
    with adversary.connected_pair() as (ours, theirs):
        ours.setblocking(False)
        try:
            ours.recv(1024)
        except BlockingIOError as exc:
            seen["recv() with nothing arrived"] = f"BlockingIOError ({errno_name(exc)})"
        payload, partial = b"x" * (1 << 20), False
        try:
            while True:           # the peer never reads: its buffers, then ours, fill up
                partial |= ours.send(payload) < len(payload)
        except BlockingIOError as exc:
            seen["send() once the buffers are full"] = f"BlockingIOError ({errno_name(exc)})"
        seen["a send() took only part of the megabyte first"] = partial
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(1.0)
        seen["recv() after the peer's FIN"] = repr(ours.recv(1024))
    return seen


def one_big_send(mode: str, size: int = 32 << 20) -> dict:
    """send() more than the buffers hold, once, on a 'blocking' socket (whose peer reads),
    one with a 'timeout' or a 'non-blocking' one (whose peers do not read)."""
    with adversary.connected_pair() as (ours, theirs):
        ours.settimeout({"blocking": None, "timeout": 2.0, "non-blocking": 0.0}[mode])
        reader = threading.Thread(target=recv_until_eof, args=(theirs,), daemon=True)
        if mode == "blocking":
            reader.start()
        flag = fcntl.fcntl(ours.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK if fcntl else None
        taken = ours.send(b"x" * size)
        ours.shutdown(socket.SHUT_WR)   # the reader's EOF
        if mode == "blocking":
            reader.join(5)
    return {"O_NONBLOCK set on the descriptor": None if flag is None else bool(flag),
            "send() took": "all of it" if taken == size else "part of it"}


def errno_name(exc: OSError) -> str:
    """An errno's name (EAGAIN), the same on every OS, where the number is not."""
    return errno.errorcode.get(exc.errno, str(exc.errno))


def idle_cost(nap: float, clients: int = 10, seconds: float = 0.5) -> dict:
    """Run the server with idle clients; measure the CPU it burns doing nothing.

    Returns CPU seconds per wall second (1.0 is one core flat out) and the
    counters. A measurement: it varies from machine to machine and run to run.
    """
    counters = Counters()
    with running(functools.partial(serve, nap=nap, counters=counters)) as server:
        sockets = [adversary.connect(server.address) for _ in range(clients)]
        try:
            time.sleep(0.1)  # let every connection be accepted
            start, wall, passes = os.times(), time.perf_counter(), counters.passes
            time.sleep(seconds)  # this thread sleeps: the CPU used is the server's
            end, wall, passes = os.times(), time.perf_counter() - wall, counters.passes - passes
            cpu = end.user + end.system - start.user - start.system
        finally:
            for sock in sockets:
                sock.close()
    return {"cpu per second": cpu / wall, "passes per second": passes / wall}


# --- Demo and command line. ---

def demo() -> int:
    console = Console(highlight=False)
    say = console.print
    console.rule("[bold]Lesson 04: non-blocking sockets")
    say("[bold]The tutorial's setblocking(0) in its blocking echo server:")
    nobody, ended = run_tutorial_line(waiting=0)
    say(f"  nobody waiting: the server ended at once with {ended}")
    served, ended_2 = run_tutorial_line(waiting=2)
    say(f"  2 clients waiting: {len(served)} echoed, then it ended with {ended_2}")
    say("[bold]What non-blocking calls do when they cannot finish:")
    for what, looked_like in would_block_examples().items():
        say(f"  {what}: {looked_like}")
    for mode in ("blocking", "timeout", "non-blocking"):
        say(f"  send(32 MiB), {mode} socket: took {one_big_send(mode)['send() took']}")
    with running(serve) as server:
        replies = [echo.echo(server.address, b"client %d" % i) for i in range(3)]
        big = adversary.flood(server.address, 4 << 20) == adversary.flood_pattern(4 << 20)
    ok = (replies == [b"client 0", b"client 1", b"client 2"] and big
          and served == [b"message 1", b"message 2"] and "BlockingIOError" in ended + ended_2)
    say(f"[bold]The polling server:[/] 3 echoes and a 4 MiB flood, all correct: {ok}")
    for nap in (0, 0.001):
        cost = idle_cost(nap=nap)
        say(f"  10 idle clients, {'no nap' if not nap else '1 ms nap'}: "
            f"{cost['cpu per second']:.0%} of a core, {cost['passes per second']:,.0f} passes/s")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "04_nonblocking")
    serve_cmd = serve_command(commands, port=9904)
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="close a connection that sends and takes nothing for this long "
                                "(0: never; default %(default)g)")
    echo.add_client_args(client_command(commands, port=9904))
    args = parser.parse_args(argv)
    if args.command == "serve":
        old, new = raise_fd_limit()   # every client is a descriptor: allow many
        if new > old and not args.quiet:
            stderr.print(f"[dim]raised this process's open-file limit from {old} to {new}[/]")
        return serve_forever(functools.partial(serve, idle_timeout=args.idle_timeout or None),
                             args, "04_nonblocking")
    if args.command == "client":
        return run_client(echo.client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
