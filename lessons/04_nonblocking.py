"""Non-blocking sockets: one thread serves many clients by never waiting, and pays for it in CPU.

    python -m lessons.04_nonblocking                      # demo: EAGAIN, partial sends, the cost
    python -m lessons.04_nonblocking serve [--port 9904]  # lesson 02's echo contract, one thread
    python -m lessons.04_nonblocking client 'hello'

After ``sock.setblocking(False)`` no call waits. If it cannot finish at once it
raises ``BlockingIOError`` (errno EAGAIN or EWOULDBLOCK) instead:

    call        blocking socket                   non-blocking socket
    accept()    waits for a client                BlockingIOError if none is queued
    recv(n)     waits for data or EOF             BlockingIOError if nothing has arrived
    send(data)  waits until ALL of it is queued   queues what fits now, returns the count,
                                                  BlockingIOError if nothing fits

So the server loops over every socket, again and again, trying each one: a
*polling* loop. It keeps an output buffer per connection for what send() has
not taken yet, and stops reading from a client whose buffer is full. When
nobody has anything to say, the loop still spins, and that is the cost lesson
05's select() removes.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field

from lessons.kit import echo
from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.transcript import ACCEPT, CLOSE, EOF, ERROR, READY, RECV, SEND, SERVER, Transcript

TITLE = "Non-blocking sockets"
RECV_SIZE = 65536
OUTPUT_LIMIT = 1 << 20   # stop reading from a client with this much echo still unsent


@dataclass(eq=False)
class Connection:
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
          counters: Counters | None = None) -> None:
    """Echo every client, in one thread, by trying each socket in turn.

    ``nap`` is how long to sleep after a pass that found nothing to do. With 0
    the loop spins flat out (one core at 100% while every client is idle); a
    longer nap burns less CPU but answers later. No value is good: that is
    the point of lesson 05.
    """
    counters = counters if counters is not None else Counters()
    listener.setblocking(False)
    connections: list[Connection] = []
    accepted = 0
    try:
        while not stop.is_set():
            counters.passes += 1
            done: list[tuple] = []   # what this pass achieved: (kind, who, nbytes, detail)
            while True:   # take every client that is waiting, not one per pass
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:   # nobody (more) is waiting
                    break
                sock.setblocking(False)   # accepted sockets do NOT inherit non-blocking mode
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                accepted += 1
                connections.append(Connection(sock, f"client {accepted}"))
                done.append((ACCEPT, f"client {accepted}", 0, ""))
            for conn in list(connections):
                try:
                    step(conn, done)
                except OSError as exc:   # reset or broken pipe: drop this client only
                    done.append((ERROR, conn.who, 0, type(exc).__name__))
                    conn.client_done, conn.output = True, bytearray()
                if conn.client_done and not conn.output:
                    connections.remove(conn)
                    conn.sock.close()
                    done.append((CLOSE, conn.who, 0, ""))
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
    from lessons.kit.adversary import connected_pair
    from lessons.kit.server import listen

    seen = {}
    with listen() as listener:
        listener.setblocking(False)
        try:
            listener.accept()
        except BlockingIOError as exc:
            seen["accept() with no client waiting"] = f"BlockingIOError ({errno_name(exc)})"
    with connected_pair() as (ours, theirs):
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
        theirs.setblocking(False)
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(1.0)
        seen["recv() after the peer's FIN"] = repr(ours.recv(1024))
    return seen


def errno_name(exc: OSError) -> str:
    import errno
    return errno.errorcode.get(exc.errno, str(exc.errno))


def idle_cost(nap: float, clients: int = 10, seconds: float = 0.5) -> dict:
    """Run the server with idle clients; measure the CPU it burns doing nothing.

    Returns CPU seconds per wall second (1.0 is one core flat out) and the
    counters. A measurement: it varies from machine to machine and run to run.
    """
    from lessons.kit import adversary, running

    counters = Counters()

    def serve_counted(listener, stop, log):
        serve(listener, stop, log, nap=nap, counters=counters)

    with running(serve_counted) as server:
        sockets = [adversary.connect(server.address) for _ in range(clients)]
        try:
            time.sleep(0.1)  # let every connection be accepted
            cpu_start, wall_start, passes_start = _process_cpu(), time.perf_counter(), counters.passes
            time.sleep(seconds)  # this thread sleeps: the CPU used is the server's
            cpu = _process_cpu() - cpu_start
            wall = time.perf_counter() - wall_start
            passes = counters.passes - passes_start
        finally:
            for sock in sockets:
                sock.close()
    return {"cpu per second": cpu / wall, "passes per second": passes / wall}


def _process_cpu() -> float:
    import os
    times = os.times()
    return times.user + times.system


# --- Demo and command line. ---

def demo() -> int:
    from rich.console import Console
    from lessons.kit import adversary, running

    console = Console(highlight=False)
    console.rule("[bold]Lesson 04: non-blocking sockets")
    for what, looked_like in would_block_examples().items():
        console.print(f"{what}: {looked_like}")
    with running(serve) as server:
        replies = [echo.echo(server.address, f"client {i}".encode()) for i in range(3)]
        big = adversary.flood(server.address, 4 * 1024 * 1024)
    ok = replies == [b"client 0", b"client 1", b"client 2"] and big == adversary.flood_pattern(4 * 1024 * 1024)
    console.print(f"three echoes and a 4 MiB flood, all correct: {ok}")
    spin, napping = idle_cost(nap=0), idle_cost(nap=0.001)
    console.print(f"10 idle clients, no nap:  {spin['cpu per second']:.0%} of a core, "
                  f"{spin['passes per second']:,.0f} passes/s")
    console.print(f"10 idle clients, 1 ms nap: {napping['cpu per second']:.0%} of a core, "
                  f"{napping['passes per second']:,.0f} passes/s (and up to 1 ms late to answer)")
    return 0 if ok else 1


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="04_nonblocking", demo=demo, serve=serve,
                      add_client_args=echo.add_client_args,
                      client=echo.client, port=9904)


if __name__ == "__main__":
    main_guard(main)
