"""How a TCP connection ends, acted out on loopback, with the kernel's states at each step.

Each case (lesson 09 runs and explains them) makes a fresh connection, ends it
one way, and records in a :class:`.states.SocketStates` what each side's next
call returned or raised and the TCP state of both ends after each step::

    states = SocketStates()
    fin(states)                 # or half_close, killed, unread_close, linger_zero, closed_port
    print(states.timeline())           # one row per step: the moment, then each end's state

    the peer...                   its kernel sends   the other side sees
    closes (FIN)                  FIN                recv() → b''; close: TIME_WAIT on the closer
    shuts down its sending side   FIN                b'', and still reads the answer (half_close)
    is killed (SIGKILL)           FIN                b''; a send() then meets RST (killed)
    closes with unread data       RST                ConnectionResetError (unread_close)
    closes with SO_LINGER 0       RST                ConnectionResetError (linger_zero)
    nobody listens on the port    RST to the SYN     ConnectionRefusedError (closed_port)

Then experiments on the states view: clients that come and go against any
server (:func:`come_and_go`: does it leave CLOSE_WAIT behind?), a full listen
queue (:func:`full_backlog`), and a restart over TIME_WAIT (:func:`restart`).

Lesson 02 takes a first look with no states at all: :func:`how_connections_end`
ends a connection in each way and says only what the other end's next call saw.
"""
from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Callable

from rich.table import Table

from . import adversary
from .check import describe, describe_error
from .child import Child
from .server import running
from .states import SocketStates

TIMEOUT = 5.0
C, S = "client → server", "server → client"   # the client's end, the server's end


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


def connect_and_wait(port):
    """A client in a child process: connect, say so, wait to be killed."""
    import socket   # imports inside: Child.run sends this function's source alone
    import time
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    print("connected", flush=True)
    time.sleep(30)   # the parent kills us long before this
    sock.close()


# --- How a connection ends: each case live, with what each side sees and the states between. ---

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
        states.snap("client: setsockopt(SO_LINGER, on, 0 s), close()", {})   # no TIME_WAIT at all
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


ENDINGS = {"FIN": fin, "half-close": half_close, "SIGKILL": killed,
           "RST: unread data": unread_close, "RST: SO_LINGER 0": linger_zero,
           "RST: closed port": closed_port}


# --- Experiments on the states view: leaks, a full backlog, a restart. ---

def come_and_go(serve, states: SocketStates, clients: int = 3, after=("FIN_WAIT2", "CLOSE_WAIT")):
    """Clients connect one by one, say hi, read the reply and close; then the table.

    Waits until each client's end and the server's end are in the states
    ``after`` says (None: gone): one (client, server) pair for all, or a list
    with one pair per client.
    """
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
            expected[f"client {n} → server"] = client_end
            expected[f"server → client {n}"] = server_end
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
    """A server hangs up first, stops, and listens again on the same port, with or without
    SO_REUSEADDR (on both runs: Linux lets a socket reuse the port only if the one in
    TIME_WAIT had it too). Returns what the second bind() did."""
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
                {S: "TIME_WAIT"})
    with socket.socket() as again:
        if reuse:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            again.bind(address)
        except OSError as exc:
            return f"bind() raises {describe_error(exc)}"
        again.listen()
        return "bind() and listen() work: listening again on the same port"


# --- A first look (lesson 02): only what the other end's next call sees, no states. ---

def next_recv(conn: socket.socket, wait: float) -> str:
    """What conn's next recv() sees: data, b'' (a FIN came), an error (an RST), or nothing."""
    conn.settimeout(wait)
    try:
        data = conn.recv(1024)
    except socket.timeout:
        return f"TimeoutError after {wait:g} s: nothing came"
    except OSError as exc:
        return f"{type(exc).__name__}: an RST came"
    return f"{data!r}: a FIN came" if not data else repr(data)


def killed_client(listener: socket.socket) -> None:
    """Connect from a child process, then kill it (SIGKILL on POSIX): no goodbye, no cleanup."""
    host, port = listener.getsockname()[:2]
    code = (f"import socket, time; s = socket.create_connection(({host!r}, {port})); "
            "print('connected', flush=True); time.sleep(30)")
    argv = [sys.executable, "-c", code]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        try:
            child.stdout.readline()   # it has connected
        finally:
            child.kill()
            child.wait(5)


def send_until_refused(conn: socket.socket) -> str:
    """Send to a peer whose socket is gone: the first send() is taken, the peer's kernel
    answers that segment with an RST, and a later send() fails."""
    conn.send(b"anyone there?")
    for _ in range(100):
        time.sleep(0.01)
        try:
            conn.send(b"?")
        except OSError as exc:
            return f"send() took it; a later send() raised {type(exc).__name__}: an RST came"
    return "every send() was taken: no RST came"


def how_connections_end(wait: float = 0.5) -> dict:
    """End a connection in each way a peer can; say what the other end saw next."""
    seen = {}
    with adversary.connected_pair() as (client, conn):
        client.close()
        seen["the client calls close()"] = next_recv(conn, wait)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        killed_client(listener)
        listener.settimeout(5)
        conn, _ = listener.accept()
        with conn:
            seen["the client's process is killed"] = next_recv(conn, wait)
    with adversary.connected_pair() as (client, conn):
        conn.sendall(b"unread")
        client.recv(1, socket.MSG_PEEK)   # wait until it has arrived; then leave it unread
        client.close()
        seen["the client closes with data unread"] = next_recv(conn, wait)
    with adversary.connected_pair() as (client, conn):
        adversary.abort(client)           # SO_LINGER on with 0 seconds, then close()
        seen["the client closes with SO_LINGER 0"] = next_recv(conn, wait)
    with adversary.connected_pair() as (client, conn):
        client.close()
        conn.recv(1)                      # b'': it closed; now write to it anyway
        seen["the server writes to a closed client"] = send_until_refused(conn)
    try:
        socket.create_connection(adversary.closed_port(), timeout=wait).close()
        seen["a client connects where nobody listens"] = "connected?"
    except OSError as exc:
        seen["a client connects where nobody listens"] = f"{type(exc).__name__}: an RST came"
    with adversary.connected_pair() as (client, conn):   # alive, but says nothing
        seen["the client is gone, or silent"] = next_recv(conn, wait)
    return seen


def endings_table(endings: dict) -> Table:
    """how_connections_end()'s answers as a table."""
    table = Table(title="How a connection ends, seen from the other end", title_justify="left")
    table.add_column("what the peer did")
    table.add_column("what the other end saw next")
    for what, seen in endings.items():
        table.add_row(what, seen)
    return table
