"""A socket is one end of a conversation: socket, bind, listen, accept, connect, send, recv.

    python -m lessons.01_basics                        # demo: every call in order, then the errors
    python -m lessons.01_basics serve [--port 9901]    # a server that greets each client
    python -m lessons.01_basics client [--port 9901]   # print the greeting, or why there is none

The smallest TCP conversation, with who calls what::

    server                                  client
    s = socket(AF_INET, SOCK_STREAM)
    s.bind(("127.0.0.1", 0))     port 0: the OS picks a free port
    s.listen()                   the kernel now completes handshakes for us
                                            c = socket(AF_INET, SOCK_STREAM)
                                            c.connect(addr)   returns once the handshake is done
    conn, peer = s.accept()      a NEW socket for this client, same local port
    conn.sendall(b"hello\\n")  ------------>  c.recv(1024)
    conn.close()               --- FIN --->  c.recv(1024) == b''   (end of stream)
"""
from __future__ import annotations

import contextlib
import errno
import socket

from rich.console import Console

from lessons.kit import running
from lessons.kit.adversary import closed_port, silent_server
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, serve_command,
                             serve_forever)
from lessons.kit.server import accept_until, listen
from lessons.kit.transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, LISTEN, RECV, SEND,
                                    SERVER, Transcript)

TITLE = "Socket anatomy"
GREETING = b"hello from the lesson 01 server\n"


def anatomy(log: Transcript) -> bytes:
    """Both ends of one conversation, step by step, in a single thread.

    This works without a second thread because the kernel, not accept(),
    completes the handshake: connect() returns as soon as the connection is
    queued on the listener, and accept() merely takes it off the queue.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        log.record(SERVER, LISTEN, detail="port 0: the OS picked one")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(2.0)
            log.record(CLIENT, CONNECT, "client 1")
            client.connect(server.getsockname())
            server.settimeout(2.0)
            conn, _ = server.accept()
            log.record(SERVER, ACCEPT, "client 1")
            with conn:
                log.record(SERVER, SEND, "client 1", len(GREETING))
                conn.sendall(GREETING)
                log.record(SERVER, CLOSE, "client 1")
            reply = client.recv(1024)
            log.record(CLIENT, RECV, "client 1", len(reply))
            if client.recv(1024) == b"":
                log.record(CLIENT, EOF, "client 1")
            log.record(CLIENT, CLOSE, "client 1")
    return reply


def accept_shares_the_port() -> dict:
    """accept() returns a new socket: same local port as the listener, one per client."""
    with listen() as server, socket.create_connection(server.getsockname(), timeout=2) as client:
        server.settimeout(2.0)
        conn, _ = server.accept()
        with conn:
            return {
                "same local port as the listener": conn.getsockname() == server.getsockname(),
                "a different socket object": conn.fileno() != server.fileno(),
                "its peer is the client's address": conn.getpeername() == client.getsockname(),
            }


def error_name(exc: OSError) -> str:
    """An OSError's errno name (EADDRINUSE), the same on every OS; or its type's name."""
    return errno.errorcode.get(exc.errno, type(exc).__name__)


def three_errors() -> dict:
    """Provoke EADDRINUSE, ECONNREFUSED and a timeout; return what each looked like."""
    seen = {}
    with listen() as taken, socket.socket() as second:
        try:
            second.bind(taken.getsockname())       # someone is already listening there
        except OSError as exc:
            seen["bind to a port in use"] = f"{type(exc).__name__} ({error_name(exc)})"
    try:
        socket.create_connection(closed_port(), timeout=2).close()   # nobody listening
    except ConnectionRefusedError as exc:
        seen["connect where nobody listens"] = f"{type(exc).__name__} ({error_name(exc)})"
    with silent_server(hold=1.0) as address, socket.create_connection(address, timeout=2) as sock:
        sock.settimeout(0.2)                         # recv() gives up after 0.2 s
        try:
            sock.recv(1024)
        except socket.timeout as exc:                # an alias of TimeoutError since 3.10
            seen["recv from a silent server"] = type(exc).__name__
    return seen


def restart_on_same_port(reuse_address: bool) -> str:
    """Serve one client, close (leaving TIME_WAIT behind), and bind the port again."""
    with socket.socket() as first:
        if reuse_address:
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind(("127.0.0.1", 0))
        first.listen()
        address = first.getsockname()
        with socket.create_connection(address, timeout=2) as client:
            first.settimeout(2.0)
            conn, _ = first.accept()
            conn.close()          # the server closes first, so its side waits in TIME_WAIT
            client.recv(1)        # wait for the FIN to arrive
    with socket.socket() as second:
        if reuse_address:
            second.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            second.bind(address)
        except OSError as exc:
            return f"bind failed: {error_name(exc)}"
        return "bind succeeded"


def second_server_on_the_port(option: str) -> str:
    """Start a listener, then a second one on the same port while the first still
    listens, both with socket option ``option`` set; say what happened."""
    if not hasattr(socket, option):
        return f"this platform has no {option}"

    def listener(port: int) -> socket.socket:
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, option), 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            sock.close()
            raise
        return sock

    with listener(0) as first:
        try:
            second = listener(first.getsockname()[1])
        except OSError as exc:
            return f"bind failed: {error_name(exc)}"
        with second, contextlib.ExitStack() as clients:
            for _ in range(20):
                clients.enter_context(socket.create_connection(first.getsockname(), timeout=2))
            served = [len(queued_clients(server)) for server in (first, second)]
    if min(served) > 0:   # the kernel spread the 20 clients over both servers
        return "bind succeeded: new clients go to both servers"
    return "bind succeeded"


def queued_clients(listener: socket.socket) -> list:
    """Accept (and close) every connection waiting in the listener's queue."""
    listener.setblocking(False)
    accepted = []
    with contextlib.suppress(BlockingIOError):
        while True:
            conn, _ = listener.accept()
            conn.close()
            accepted.append(conn)
    return accepted


# --- The greeting server and client for the command line. ---

def serve(listener, stop, log: Transcript) -> None:
    """Greet each client with one line, then hang up."""
    for number, (conn, _) in enumerate(accept_until(listener, stop, log), 1):
        who = f"client {number}"
        log.record(SERVER, ACCEPT, who)
        with conn:
            with contextlib.suppress(OSError):   # a client that vanished is its own problem
                log.record(SERVER, SEND, who, len(GREETING))
                conn.sendall(GREETING)
            log.record(SERVER, CLOSE, who)


def greet(address, timeout: float = 2.0) -> str:
    """Connect and return the server's greeting line (raises on network errors)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", errors="replace").strip()


def demo() -> int:
    """Every call of one conversation in order, then the errors and the socket options."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 01: socket anatomy")
    log = Transcript()
    reply = anatomy(log)
    console.print(log.render("one conversation, one thread", causal=False))
    console.print(f"the client received {reply!r}")
    shares = accept_shares_the_port()
    for what, ok in shares.items():
        console.print(f"accepted socket: {what}: {ok}")
    errors = three_errors()
    for what, looked_like in errors.items():
        console.print(f"{what}: {looked_like}")
    restarts = {option: restart_on_same_port(option) for option in (False, True)}
    console.print(f"restart without SO_REUSEADDR: {restarts[False]}")
    console.print(f"restart with SO_REUSEADDR:    {restarts[True]}")
    sharing = {option: second_server_on_the_port(option)
               for option in ("SO_REUSEADDR", "SO_REUSEPORT")}
    for option, what in sharing.items():
        console.print(f"a second live server, {option}: {what}")
    with running(serve) as server:
        greeting = greet(server.address)
    console.print(f"greet(): {greeting!r}")
    ok = (reply == GREETING and all(shares.values()) and len(errors) == 3
          and restarts == {False: "bind failed: EADDRINUSE", True: "bind succeeded"}
          and sharing["SO_REUSEADDR"].startswith("bind failed")
          and greeting == GREETING.decode().strip())
    return 0 if ok else 1


def client(args) -> int:
    """``client``: print the server's greeting."""
    print(greet((args.host, args.port), timeout=args.timeout))
    return 0


def main(argv=None) -> int:
    """``python -m lessons.01_basics [demo | serve | client]``."""
    parser, commands = lesson_parser(__doc__, "01_basics")
    serve_command(commands, port=9901)
    client_command(commands, port=9901, help="print the greeting of a running server")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_forever(serve, args, "01_basics")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
