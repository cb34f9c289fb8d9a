"""Connections end with FIN, RST or silence; only timeouts and heartbeats notice silence.

    python -m lessons.09_dead_peers                   # demo: endings, a paused server, states
    python -m lessons.09_dead_peers serve [--idle-timeout 10] [--port 9909]
    python -m lessons.09_dead_peers client [--interval 1] [--deadline 3] [--count 5]

Try it in three terminals: ``serve``; ``client --count 100``; then pause the
server with ``kill -STOP <its pid>``. The client notices within its deadline;
the connection itself looks perfectly healthy (``kill -CONT`` to resume). Or
connect with ``nc 127.0.0.1 9909``, type ``PING``, then say nothing: after the
idle timeout the server says ``BYE idle`` and hangs up.

The protocol: lines. ``PING`` is answered ``PONG``; any other line is echoed. A
client silent for ``--idle-timeout`` seconds (default 10; 0: never) is sent
``BYE idle`` and dropped, so a vanished client cannot hold a thread forever.

How a connection ends, and what recv() shows the other side:

    the peer...                   its kernel sends   recv() on the other side
    closes, or shutdown(SHUT_WR)  FIN                b'' (EOF)
    is killed (SIGKILL, a crash)  FIN                b'' (EOF); a send() then meets RST
    closes with unread data       RST                ConnectionResetError
    closes with SO_LINGER 0       RST                ConnectionResetError
    nobody listens on the port    RST to the SYN     connect(): ConnectionRefusedError
    is stopped (SIGSTOP), hung    ACKs, no data      waits; only a timeout ends it
    host died, cable cut          nothing at all     waits; only a timeout ends it

Keepalive (SO_KEEPALIVE) probes an idle connection, but a stopped process's
kernel answers the probes: only the application (a heartbeat, an idle timeout)
can tell that nobody is home.

Where the rest lives: ``lessons.kit.endings`` acts out each ending above on
loopback; ``lessons.kit.states`` reads each socket's TCP state from the kernel
(from a shell: ``ss -tan 'sport = :9909 or dport = :9909'``, ``netstat -an |
grep 9909``, ``lsof -nP -iTCP:9909``); ``lessons.kit.shutdown`` holds the ways
to stop a server blocked in accept(), recv() or select().
"""
from __future__ import annotations

import contextlib
import functools
import select
import socket
import time
from typing import Optional

from rich.console import Console
from rich.table import Table

from lessons.kit import running
from lessons.kit.child import Child
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, seconds,
                             serve_command, serve_forever, stderr, whole_number)
from lessons.kit.endings import ENDINGS, fin
from lessons.kit.server import POLL_INTERVAL
from lessons.kit.states import SocketStates, tcp_info
from lessons.kit.threaded import serve_threads
from lessons.kit.transcript import EOF, ERROR, NOTE, RECV, SEND, SERVER, Transcript

TITLE = "Dead peers, timeouts and clean shutdown"
PING, PONG, BYE = b"PING\n", b"PONG\n", b"BYE idle\n"
IDLE_TIMEOUT = 10.0    # seconds of silence before the server drops a client
MAX_LINE = 1024
MAX_CLIENTS = 100      # one thread each: refuse beyond this
TIMEOUT = 5.0
KEEPALIVE_WAIT = 2.2   # past 1 s idle + 1 probe × 1 s: keepalive has given up on a silent peer


# --- The server: lines, PING → PONG, and an idle timeout. ---

def handle(conn: socket.socket, log: Transcript, who: str, idle_timeout: float) -> None:
    """Answer one client's lines until it leaves, or stays silent for idle_timeout seconds."""
    # One timeout covers both ways: a recv() that hears nothing, or a sendall() that
    # the client does not read, for idle_timeout seconds. Each byte restarts it.
    conn.settimeout(idle_timeout or None)
    buffer = b""
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                log.record(SERVER, EOF, who)
                return
            log.record(SERVER, RECV, who, len(data))
            *lines, buffer = (buffer + data).split(b"\n")   # the last piece is not a line yet
            if any(len(line) > MAX_LINE for line in (*lines, buffer)):
                log.record(SERVER, ERROR, who, detail=f"a line over {MAX_LINE} bytes: dropped")
                return
            for line in lines:
                reply = PONG if line.rstrip(b"\r") == PING.strip() else line + b"\n"
                log.record(SERVER, SEND, who, len(reply))
                conn.sendall(reply)
    except socket.timeout:
        log.record(SERVER, NOTE, who, detail=f"idle for {idle_timeout:g} s: dropped")
        conn.setblocking(False)
        with contextlib.suppress(OSError):   # a courtesy: it may not be there to read it
            conn.send(BYE)


def serve(listener: socket.socket, stop, log: Transcript,
          idle_timeout: float = IDLE_TIMEOUT) -> None:
    """One thread per client (kit.threaded: lesson 03's design), at most MAX_CLIENTS;
    each drops its client after idle_timeout silent seconds (0: never)."""
    one = functools.partial(handle, idle_timeout=idle_timeout)
    serve_threads(listener, stop, log, one, max_clients=MAX_CLIENTS)


# --- The client side: a heartbeat, and TCP keepalive. ---

def ping(sock: socket.socket, deadline: float) -> bool:
    """One heartbeat: send PING, wait up to deadline seconds for PONG; False if none came."""
    sock.settimeout(deadline)    # per recv(): enough for this server (the exercise does better)
    sock.sendall(PING)
    reply = b""
    try:
        while not reply.endswith(b"\n") and len(reply) <= MAX_LINE:   # PONG may come in pieces
            chunk = sock.recv(MAX_LINE)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            reply += chunk
    except socket.timeout:
        return False
    if reply == BYE:
        raise ConnectionError("the server dropped us for being idle")
    if reply != PONG:
        raise ConnectionError(f"the answer was {reply[:30]!r}, not PONG: is this lesson 09's server?")
    return True


def keepalive(sock: socket.socket, idle: int = 1, interval: int = 1, count: int = 1) -> list[str]:
    """Turn on TCP keepalive with short timings where the platform allows; return the options set.

    The defaults (Linux: first probe after 7200 s idle, then every 75 s, 9 probes)
    notice a dead peer after more than two hours.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    done = ["SO_KEEPALIVE"]
    # macOS calls the first one TCP_KEEPALIVE.
    for names, value in ((("TCP_KEEPIDLE", "TCP_KEEPALIVE"), idle),
                         (("TCP_KEEPINTVL",), interval), (("TCP_KEEPCNT",), count)):
        name = next((n for n in names if hasattr(socket, n)), None)
        if name:
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            done.append(name)
    return done


def paused_server(wait: float = KEEPALIVE_WAIT, deadline: float = 0.5,
                  states: Optional[SocketStates] = None) -> dict:
    """Pause this lesson's server (SIGSTOP); watch two clients: one trusts keepalive, one pings."""
    states = states if states is not None else SocketStates()
    argv = ["-m", "lessons.09_dead_peers", "serve", "--port", "0", "--idle-timeout", "0"]
    with Child(argv) as child:
        host, port = child.expect("listening on ").split()[-1].rsplit(":", 1)
        states.name((host, int(port)), "server")
        states.name_process(child.pid, "paused child")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as trusting, \
                socket.create_connection((host, int(port)), timeout=TIMEOUT) as pinging:
            states.name(trusting, "keepalive")
            states.name(pinging, "heartbeat")
            options = keepalive(trusting, idle=1, interval=1, count=1)   # silent peer: dead in 2 s
            answered_before = ping(pinging, TIMEOUT)
            child.pause()
            started = time.monotonic()
            answered_after = ping(pinging, deadline)
            noticed_after = time.monotonic() - started
            time.sleep(max(0.0, wait - noticed_after))   # time for keepalive to probe, hear back
            error = trusting.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            ends = ["keepalive → server", "server → keepalive",
                    "heartbeat → server", "server → heartbeat"]
            rows = states.settle({**dict.fromkeys(ends, "ESTABLISHED"),
                                  "server (listening)": "LISTEN"})
            return {"options": options, "PONG before the pause": answered_before,
                    "PONG after the pause": answered_after,
                    "heartbeat noticed after": noticed_after, "keepalive error": error,
                    "rows": rows, "tcp_info": tcp_info(trusting)}
    # leaving the Child block sent SIGCONT and SIGKILL, and reaped it


# --- CLOSE_WAIT piling up: the tutorial's select loop never closes a socket. ---

def tutorial_select_loop(listener, stop, log, clients=None, close_on_eof=False):
    """The tutorial's select loop (ours marked): at EOF it forgets a socket without closing it.

    ``clients``: a list to remember each accepted socket in, as real servers remember
    their clients (a name, a buffer). ``close_on_eof``: the one-line fix.
    """
    server_socket = listener                                            # (ours)
    inputs = [server_socket]
    outputs = []

    while inputs and not stop.is_set():                                 # (ours: and not stop...)
        readable, writable, exceptional = select.select(inputs, outputs, inputs,
                                                        POLL_INTERVAL)  # (ours: a timeout)

        for s in readable:
            if s is server_socket:
                connection, client_address = s.accept()
                connection.setblocking(0)
                inputs.append(connection)
                if clients is not None:                                 # (ours)
                    clients.append(connection)                          # (ours)
            else:
                data = s.recv(1024)
                if data:
                    outputs.append(s)
                else:
                    inputs.remove(s)
                    if s in outputs:
                        outputs.remove(s)
                    if close_on_eof:                                    # (ours: the fix)
                        s.close()                                       # (ours: the fix)

        for s in writable:
            s.send(b'Hello, world!')
            outputs.remove(s)

        for s in exceptional:
            inputs.remove(s)
            if s in outputs:
                outputs.remove(s)
    for s in inputs[1:] + (clients or []):                              # (ours: close at stop)
        s.close()


# --- The demo and the command line. ---

def demo() -> int:
    """An idle timeout at work, every ending with its states, and a paused server."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 09: dead peers")
    with running(functools.partial(serve, idle_timeout=0.5)) as server, \
            socket.create_connection(server.address, timeout=TIMEOUT) as silent, \
            socket.create_connection(server.address, timeout=TIMEOUT) as busy:
        for _ in range(5):                      # a byte every 0.2 s: never idle for 0.5 s
            busy.sendall(b".")
            time.sleep(0.2)
        busy.sendall(b"\n")
        kept = busy.recv(100) == b".....\n"
        dropped = silent.recv(100) == BYE and silent.recv(100) == b""
    console.print(f"idle timeout 0.5 s: the silent client was dropped: {dropped}; "
                  f"the one sending a byte every 0.2 s was kept: {kept}")

    states = SocketStates()
    fin(states)
    console.print(states.timeline("a normal close: TIME_WAIT on the side that closed first"))
    endings = Table(title="how a connection ends: the last two steps of each case",
                    title_justify="left")
    endings.add_column("case", no_wrap=True)
    endings.add_column("what each side did, and saw")
    for name, case in ENDINGS.items():
        states.forget()
        case(states)
        last_two = "\n".join(moment for moment, _ in states.history[-2:])
        endings.add_row(name, last_two, end_section=True)
    console.print(endings)

    seen = paused_server()
    console.print("server paused with SIGSTOP: the heartbeat got a PONG: "
                  f"{seen['PONG after the pause']}; "
                  f"after {KEEPALIVE_WAIT:g} s the keepalive connection reports an error: "
                  f"{bool(seen['keepalive error'])}")
    ok = dropped and kept and not seen["PONG after the pause"] and seen["keepalive error"] == 0
    return 0 if ok else 1


def client(args) -> int:
    """``client``: PING every --interval seconds; exit 1 when a PONG misses its --deadline."""
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
        for beat in range(1, args.count + 1):
            if beat > 1:
                time.sleep(args.interval)
            started = time.perf_counter()
            if not ping(sock, args.deadline):
                stderr.print(f"[red]no PONG within {args.deadline:g} s: "
                             "the server is stopped, hung or unreachable[/]")
                return 1
            print(f"PONG {beat} in {(time.perf_counter() - started) * 1000:.1f} ms", flush=True)
    return 0


def main(argv=None) -> int:
    """``python -m lessons.09_dead_peers [demo | serve | client]``."""
    parser, commands = lesson_parser(__doc__, "09_dead_peers")
    serve_cmd = serve_command(commands, port=9909)
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="drop a client silent this long (default %(default)g; 0: never)")
    client_cmd = client_command(commands, port=9909, help="ping a running server")
    client_cmd.add_argument("--interval", type=seconds(0.01, 3600), default=1.0, metavar="SECONDS",
                            help="between two PINGs (default %(default)g)")
    client_cmd.add_argument("--deadline", type=seconds(0.01, 600), default=3.0, metavar="SECONDS",
                            help="to wait for each PONG (default %(default)g)")
    client_cmd.add_argument("--count", type=whole_number(1, 100_000, "the count"), default=5,
                            help="how many PINGs (default %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        idle = functools.partial(serve, idle_timeout=args.idle_timeout)
        return serve_forever(idle, args, "09_dead_peers")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
