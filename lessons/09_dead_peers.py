"""Connections end with FIN, RST or silence; only timeouts and heartbeats notice silence.

    python -m lessons.09_dead_peers                          # demo: endings, a paused server, states
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
can tell that nobody is home. The states of the lesson's own sockets come
from the kernel (``lessons.kit.states``); from a shell, the same view is
``ss -tan 'sport = :9909 or dport = :9909'``, ``netstat -an | grep 9909`` or
``lsof -nP -iTCP:9909``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from typing import Callable, Optional

from lessons.kit import running
from lessons.kit.check import describe, describe_error
from lessons.kit.child import Child
from lessons.kit.cli import main_guard, run_lesson, stderr
from lessons.kit.server import JOIN_TIMEOUT, POLL_INTERVAL, accept_until
from lessons.kit.states import SocketStates, tcp_info
from lessons.kit.transcript import (ACCEPT, CLOSE, EOF, ERROR, NOTE, RECV, SEND, SERVER,
                                    Transcript)

TITLE = "Dead peers, timeouts and clean shutdown"
PING, PONG, BYE = b"PING\n", b"PONG\n", b"BYE idle\n"
IDLE_TIMEOUT = 10.0    # seconds of silence before the server drops a client
MAX_LINE = 1024
MAX_CLIENTS = 100      # one thread each: refuse beyond this
TIMEOUT = 5.0
KEEPALIVE_WAIT = 2.2   # past 1 s idle + 1 probe × 1 s: when keepalive would give up on a silent peer


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
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                reply = PONG if line.rstrip(b"\r") == PING.strip() else line + b"\n"
                log.record(SERVER, SEND, who, len(reply))
                conn.sendall(reply)
            if len(buffer) > MAX_LINE:
                log.record(SERVER, ERROR, who, detail=f"a line over {MAX_LINE} bytes: dropped")
                return
    except socket.timeout:
        log.record(SERVER, NOTE, who, detail=f"idle for {idle_timeout:g} s: dropped")
        conn.setblocking(False)
        with contextlib.suppress(OSError):   # a courtesy: it may not be there to read it
            conn.send(BYE)


def serve(listener: socket.socket, stop, log: Transcript, idle_timeout: float = IDLE_TIMEOUT) -> None:
    """One thread per client, as in lesson 03; each drops its client after idle_timeout silent seconds (0: never)."""
    threads: list[threading.Thread] = []

    def one(conn, who):
        with conn:
            try:
                handle(conn, log, who, idle_timeout)
            except OSError as exc:
                if not stop.is_set():
                    log.record(SERVER, ERROR, who, detail=type(exc).__name__)
            log.record(SERVER, CLOSE, who)

    try:
        for number, (conn, _) in enumerate(accept_until(listener, stop), 1):
            who = f"client {number}"
            threads = [t for t in threads if t.is_alive()]
            if len(threads) >= MAX_CLIENTS:
                log.record(SERVER, ERROR, who, detail="refused: too many clients")
                conn.close()
                continue
            log.record(SERVER, ACCEPT, who)
            threads.append(threading.Thread(target=one, args=(conn, who), name=f"09-{who}", daemon=True))
            threads[-1].start()
    finally:
        for thread in threads:   # the stopper shut their sockets down, so they return at once
            thread.join(JOIN_TIMEOUT)


# --- The client side: a heartbeat, and TCP keepalive. ---

def ping(sock: socket.socket, deadline: float) -> bool:
    """One heartbeat: send PING, wait up to deadline seconds for PONG; False if none came."""
    sock.settimeout(deadline)    # per recv(): enough for this server (the exercise does better)
    sock.sendall(PING)
    reply = b""
    try:
        while not reply.endswith(b"\n"):          # PONG may come in pieces (lesson 02)
            chunk = sock.recv(MAX_LINE)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            reply += chunk
    except socket.timeout:
        return False
    if reply == BYE:
        raise ConnectionError("the server dropped us for being idle")
    return reply == PONG


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
    """Pause this lesson's server (SIGSTOP) and watch two clients: one trusts keepalive, one pings."""
    states = states if states is not None else SocketStates()
    with Child(["-m", "lessons.09_dead_peers", "serve", "--port", "0", "--idle-timeout", "0"]) as child:
        host, port = child.expect("listening on ").split()[-1].rsplit(":", 1)
        states.name((host, int(port)), "server")
        states.name_process(child.pid, "paused child")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as trusting, \
                socket.create_connection((host, int(port)), timeout=TIMEOUT) as pinging:
            states.name(trusting, "keepalive")
            states.name(pinging, "heartbeat")
            options = keepalive(trusting, idle=1, interval=1, count=1)   # a silent host: dead after ~2 s
            answered_before = ping(pinging, TIMEOUT)
            child.pause()
            started = time.monotonic()
            answered_after = ping(pinging, deadline)
            noticed_after = time.monotonic() - started
            time.sleep(max(0.0, wait - noticed_after))   # time for keepalive to probe, and hear back
            error = trusting.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            rows = states.settle({"keepalive → server": "ESTABLISHED", "heartbeat → server": "ESTABLISHED",
                                  "server → keepalive": "ESTABLISHED", "server → heartbeat": "ESTABLISHED",
                                  "server (listening)": "LISTEN"})
            return {"options": options, "PONG before the pause": answered_before,
                    "PONG after the pause": answered_after, "heartbeat noticed after": noticed_after,
                    "keepalive error": error, "rows": rows, "tcp_info": tcp_info(trusting)}
    # leaving the Child block sent SIGCONT and SIGKILL, and reaped it


# --- How a connection ends: each case live, with what each side sees and the states between. ---

def attempt(call: Callable) -> str:
    """What a call returned, or what it raised, in words that are the same on every OS."""
    try:
        result = call()
    except OSError as exc:
        return f"raises {describe_error(exc)}"
    return "b'' (EOF)" if result == b"" else describe(result)


@contextlib.contextmanager
def connection(states: SocketStates):
    """A fresh connection on loopback, its two ends named for the states view: (client, server)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        states.name(listener, "server")
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    states.name(client, "client")
    server.settimeout(TIMEOUT)
    with client, server:
        states.snap("connected", {C: "ESTABLISHED", S: "ESTABLISHED"})
        yield client, server


C, S = "client → server", "server → client"   # the client's end, the server's end


def fin(states: SocketStates) -> None:
    """The client sends, then closes; the server reads to EOF and closes too."""
    with connection(states) as (client, server):
        client.sendall(b"bye")
        client.close()
        states.snap("client: sendall(b'bye'), close()", {C: "FIN_WAIT2", S: "CLOSE_WAIT"})
        seen = [attempt(lambda: server.recv(100)), attempt(lambda: server.recv(100))]
        server.close()
        states.snap(f"server: recv() → {seen[0]}, recv() → {seen[1]}, close()", {C: "TIME_WAIT"})


def half_close(states: SocketStates) -> None:
    """The client shuts down its sending side only, and still reads the answer."""
    with connection(states) as (client, server):
        client.sendall(b"question")
        client.shutdown(socket.SHUT_WR)
        states.snap("client: sendall(b'question'), shutdown(SHUT_WR)",
                    {C: "FIN_WAIT2", S: "CLOSE_WAIT"})
        seen = [attempt(lambda: server.recv(100)), attempt(lambda: server.recv(100))]
        server.sendall(b"answer")
        server.close()
        states.snap(f"server: recv() → {seen[0]}, recv() → {seen[1]},\n"
                    "        sendall(b'answer'), close()", {C: "TIME_WAIT"})
        seen = [attempt(lambda: client.recv(100)), attempt(lambda: client.recv(100))]
        states.snap(f"client: recv() → {seen[0]}, recv() → {seen[1]}", {C: "TIME_WAIT"})


def connect_and_wait(port):
    """A client in a child process: connect, say so, wait to be killed."""
    import socket
    import time
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    print("connected", flush=True)
    time.sleep(30)   # the parent kills us long before this
    sock.close()


def killed(states: SocketStates) -> None:
    """A client process is killed (SIGKILL): its kernel closes the socket for it, with a FIN."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            Child.run(connect_and_wait, listener.getsockname()[1]) as child:
        listener.settimeout(TIMEOUT)
        states.name(listener, "server")
        states.name_process(child.pid, "child")
        child.expect("connected")
        server, address = listener.accept()
        listener.close()
        states.name(address, "client")
        with server:
            states.snap("a child process connects", {C: "ESTABLISHED", S: "ESTABLISHED"})
            child.kill()
            states.snap("kill -KILL the child (its kernel closes its socket)",
                        {C: "FIN_WAIT2", S: "CLOSE_WAIT"})
            seen = [attempt(lambda: server.recv(100)), attempt(lambda: server.send(b"anyone?"))]
            # That send reached a socket nobody owns any more: the answer is a reset.
            states.snap(f"server: recv() → {seen[0]}, send(b'anyone?') → {seen[1]}", {})
            again = attempt(lambda: server.send(b"anyone?"))
            states.snap(f"server: send(b'anyone?') → {again}", {})


def unread_close(states: SocketStates) -> None:
    """RST, way 1: the server closes while the client's bytes sit unread in its buffer."""
    with connection(states) as (client, server):
        client.sendall(b"request")
        select.select([server], [], [], TIMEOUT)   # wait until the bytes have arrived, unread
        server.close()
        states.snap("client: sendall(b'request')\nserver: close() without reading it", {})
        states.snap(f"client: recv() → {attempt(lambda: client.recv(100))}", {})


def linger_zero(states: SocketStates) -> None:
    """RST, way 2: SO_LINGER on with a zero timeout makes close() abort the connection."""
    with connection(states) as (client, server):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        states.snap("client: setsockopt(SO_LINGER, on, 0 s), close()", {})   # no TIME_WAIT anywhere
        states.snap(f"server: recv() → {attempt(lambda: server.recv(100))}", {})


def closed_port(states: SocketStates) -> None:
    """RST, way 3: a segment to a port where nothing listens (here, the SYN of a connect)."""
    with socket.socket() as probe:        # a port that was free a moment ago, and still is
        probe.bind(("127.0.0.1", 0))
        address = probe.getsockname()
    states.name(address, "server")
    with socket.socket() as client:
        client.settimeout(TIMEOUT)
        states.snap(f"client: connect() → {attempt(lambda: client.connect(address))}", {})


ENDINGS = {"FIN": fin, "half-close": half_close, "SIGKILL": killed, "RST: unread data": unread_close,
           "RST: SO_LINGER 0": linger_zero, "RST: closed port": closed_port}


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


def come_and_go(serve, states: SocketStates, clients: int = 3, after=("FIN_WAIT2", "CLOSE_WAIT")):
    """Clients connect one by one, say hi, read the reply and close. Then wait until each
    client's end and the server's end are in the states ``after`` says (None: gone):
    one (client, server) pair for all, or a list with one pair per client."""
    after = after if isinstance(after, list) else [after] * clients
    with running(serve) as server:
        states.name(server.address, "server")
        for n in range(1, clients + 1):
            with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
                states.name(sock, f"client {n}")
                sock.sendall(b"hi")
                sock.recv(100)
        expected = {"server (listening)": "LISTEN"}
        for n, (client_end, server_end) in enumerate(after, 1):
            expected.update({f"client {n} → server": client_end, f"server → client {n}": server_end})
        return states.settle({label: state for label, state in expected.items() if state})


def full_backlog(states: SocketStates):
    """A server that never calls accept(): past its backlog, a new client waits in SYN_SENT."""
    with socket.socket() as listener, socket.socket() as first, socket.socket() as second:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)          # Linux queues one connection, then drops new SYNs
        states.name(listener, "server")
        for n, client in enumerate((first, second), 1):
            client.setblocking(False)
            client.connect_ex(listener.getsockname())
            states.name(client, f"client {n}")
        return states.settle({"server (listening)": "LISTEN", "client 1 → server": "ESTABLISHED",
                              "server → client 1": "ESTABLISHED", "client 2 → server": "SYN_SENT"})


def restart(states: SocketStates, reuse: bool) -> str:
    """A server hangs up first, stops, and listens again on the same port; with or without SO_REUSEADDR
    (on both runs: Linux lets a socket reuse the port only if the one in TIME_WAIT had it too)."""
    with socket.socket() as listener:
        if reuse:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        address = listener.getsockname()
        states.name(address, "server")
        with socket.create_connection(address, timeout=TIMEOUT) as client:
            states.name(client, "client")
            conn, _ = listener.accept()
            conn.close()                     # the server closes first...
            client.recv(1)                   # ...the client sees EOF and closes too
    states.snap(f"server closed first, then stopped (SO_REUSEADDR {'on' if reuse else 'off'})",
                {"server → client": "TIME_WAIT"})
    with socket.socket() as again:
        if reuse:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            again.bind(address)
        except OSError as exc:
            return f"bind() raises {describe_error(exc)}"
        again.listen()
        return "bind() and listen() work: listening again on the same port"


# --- Clean shutdown: waking what is blocked. ---
# (Functions that take signals run in a child process: a notebook's kernel must not get them.)

def ctrl_c_in(where="accept"):
    """Ctrl-C (SIGINT) against a server blocked in accept() or recv(), in the main thread."""
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)      # long: a signal, not the timeout, ends this wait
    client = conn = None
    try:
        if where == "recv":
            client = socket.create_connection(listener.getsockname(), timeout=30)
            conn, _ = listener.accept()
        print(f"blocked in {where}()", flush=True)
        if where == "accept":
            listener.accept()
        else:
            conn.recv(100)
    except KeyboardInterrupt:    # Python's SIGINT handler raises it in the main thread
        print(f"KeyboardInterrupt raised in {where}()", flush=True)
    finally:
        for sock in (conn, client, listener):
            if sock is not None:
                sock.close()
        print("closed everything; exiting", flush=True)


def ctrl_c_with_a_worker():
    """Ctrl-C when a worker thread is blocked in accept(): only the main thread hears it."""
    import socket
    import threading
    import time
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    worker = threading.Thread(target=listener.accept, daemon=True)
    worker.start()
    try:
        print("worker blocked in accept(); main thread sleeps", flush=True)
        time.sleep(30)
    except KeyboardInterrupt:
        time.sleep(0.2)
        blocked = worker.is_alive()
        print("main thread: KeyboardInterrupt; worker still blocked:", blocked, flush=True)
    # The daemon worker dies with the process; a server must wake it instead (below).


def wake_blocked_recv(how: str) -> tuple[bool, str]:
    """Block a thread in recv(), then call shutdown(SHUT_RDWR) or close() on its socket
    from another thread: (woke within 0.3 s?, what recv() ended with)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as peer:
        conn, _ = listener.accept()
        conn.settimeout(0.8)       # bounds the wait if nothing wakes it
        ended: list = []
        blocking = threading.Event()

        def read():
            blocking.set()
            ended.append(attempt(lambda: conn.recv(100)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocking.wait(TIMEOUT)
        time.sleep(0.1)            # let it block in recv()
        if how == "shutdown":
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.close()           # frees the descriptor; the blocked recv() does not notice
        reader.join(0.3)
        woke = not reader.is_alive()
        reader.join(JOIN_TIMEOUT)
        conn.close()
        return woke, ended[0]


def select_with_a_waker() -> tuple[str, float]:
    """A select loop that sleeps with no polling: a byte on a socketpair wakes it to stop."""
    wake_r, wake_w = socket.socketpair()
    woken_by: list = []

    def loop(listener):
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ, "a client")
            sel.register(wake_r, selectors.EVENT_READ, "the waker")
            while not woken_by:
                for key, _ in sel.select(timeout=30):      # long: the waker ends the wait
                    if key.data == "the waker":
                        woken_by.append(key.data)
                    else:
                        listener.accept()[0].close()

    with wake_r, wake_w, socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=loop, args=(listener,), daemon=True)
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        wake_w.send(b"x")          # from any thread, or a signal handler
        thread.join(JOIN_TIMEOUT)
        return (woken_by or ["nothing"])[0], time.monotonic() - started


def wakeup_fd():
    """signal.set_wakeup_fd: a signal writes a byte to a socket, and select() wakes for it."""
    import selectors
    import signal
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: None)   # a handler, so Python catches it
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        print("blocked in select()", flush=True)
        sel.select(timeout=30)
    print(f"select() woke: {signal.Signals(wake_r.recv(1)[0]).name} arrived", flush=True)
    for sock in (listener, wake_r, wake_w):
        sock.close()
    print("closed everything; exiting", flush=True)


def socketserver_shutdown() -> tuple[bytes, bool]:
    """socketserver: serve_forever() in a thread, shutdown() from another; (a reply, stopped?)."""
    import socketserver

    class Echo(socketserver.StreamRequestHandler):
        timeout = 2    # a silent client cannot hold its thread for ever (server_close joins them)

        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True)
        thread.start()
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
            sock.sendall(b"hi\n")
            reply = sock.recv(100)
        server.shutdown()    # never from the serve_forever thread itself: it would wait for ever
        thread.join(JOIN_TIMEOUT)
    return reply, not thread.is_alive()   # leaving the with block called server_close()


def asyncio_signals():
    """asyncio: add_signal_handler runs the handler inside the loop, which then closes cleanly."""
    import asyncio
    import signal

    async def main():
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        print("serving", flush=True)
        await asyncio.wait_for(stop.wait(), 30)
        print("signal received: closing the server", flush=True)
        server.close()
        await server.wait_closed()
        print("closed everything; exiting", flush=True)

    asyncio.run(main())


def signal_child(fn, sig=signal.SIGINT, *args) -> tuple[int, list[str]]:
    """Run fn(*args) in a child process, send it sig once it says it is waiting; (exit code, its lines)."""
    with Child.run(fn, *args) as child:
        first = child.line()
        child.signal(sig)
        lines = [first, *child.rest()]
        return child.wait(), lines


# --- The demo and the command line. ---

def demo() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.rule("[bold]Lesson 09: dead peers")
    log = Transcript()
    with running(functools.partial(serve, idle_timeout=0.5), log=log) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as silent, \
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
    endings = Table(title="how a connection ends: the last two steps of each case", title_justify="left")
    endings.add_column("case", no_wrap=True)
    endings.add_column("what each side did, and saw")
    for name, case in ENDINGS.items():
        states.forget()
        case(states)
        endings.add_row(name, "\n".join(moment for moment, _ in states.history[-2:]), end_section=True)
    console.print(endings)
    seen = paused_server()
    console.print(f"server paused with SIGSTOP: the heartbeat got a PONG: {seen['PONG after the pause']}; "
                  f"after {KEEPALIVE_WAIT:g} s the keepalive connection reports an error: {bool(seen['keepalive error'])}")
    ok = dropped and kept and not seen["PONG after the pause"] and seen["keepalive error"] == 0
    return 0 if ok else 1


def client(args) -> int:
    with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
        for beat in range(1, args.count + 1):
            if beat > 1:
                time.sleep(args.interval)
            started = time.perf_counter()
            if not ping(sock, args.deadline):
                stderr.print(f"[red]no PONG within {args.deadline:g} s: the server is stopped, hung or unreachable[/]")
                return 1
            print(f"PONG {beat} in {(time.perf_counter() - started) * 1000:.1f} ms", flush=True)
    return 0


def seconds(low: float, high: float):
    """An argparse type: a number of seconds between low and high."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g} seconds, not {text}")
        return value
    return parse


def count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100000, not {text!r}")
    return int(text)


def add_serve_args(parser) -> None:
    parser.add_argument("--idle-timeout", type=seconds(0, 86400), default=IDLE_TIMEOUT,
                        help="drop a client silent for this many seconds; 0: never (default %(default)g)")


def add_client_args(parser) -> None:
    parser.add_argument("--interval", type=seconds(0.05, 3600), default=1.0,
                        help="seconds between two PINGs (default %(default)g)")
    parser.add_argument("--deadline", type=seconds(0.05, 600), default=3.0,
                        help="seconds to wait for each PONG (default %(default)g)")
    parser.add_argument("--count", type=count, default=5, help="how many PINGs (default %(default)s)")


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="09_dead_peers", demo=demo, serve=serve,
                      add_client_args=add_client_args, client=client, port=9909,
                      add_serve_args=add_serve_args,
                      serve_from_args=lambda args: functools.partial(serve, idle_timeout=args.idle_timeout))


if __name__ == "__main__":
    main_guard(main)
