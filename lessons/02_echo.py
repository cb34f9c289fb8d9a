"""TCP is a byte stream, so an echo server loops on recv() and answers with sendall().

    python -m lessons.02_echo                       # demo: polite and hostile clients
    python -m lessons.02_echo serve [--port 9902]   # an RFC 862 echo server
    python -m lessons.02_echo client 'hello'        # send, half-close, print the reply

Try the server with netcat too: ``nc 127.0.0.1 9902``, type a line, press Ctrl-D.

The contract (RFC 862, TCP echo): every byte a client sends comes back
unchanged, until the client closes its sending side; then the server closes.
Clients are served one after another, as in the original tutorial, and a
client that resets or vanishes never stops the server.

    client                         server
      | -- connect --------------->  | accept
      | -- b'hel' ---------------->  | recv → b'hel'   → sendall(b'hel')
      | -- b'lo' ----------------->  | recv → b'lo'    → sendall(b'lo')
      | <- b'hel' , b'lo' ---------  |
      | -- FIN (shutdown WR) ----->  | recv → b''  (EOF: the client is done)
      | <- FIN --------------------  | close
"""
from __future__ import annotations

import socket
import sys
import threading

from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.server import accept_until
from lessons.kit.transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, ERROR, RECV,
                                    SEND, SERVER, SHUTDOWN, Transcript)

TITLE = "TCP echo, done right"
RECV_SIZE = 65536   # ask for a lot: recv returns what has arrived, up to this


# --- The original tutorial's pair, kept to be broken in the notebook. ---

def naive_echo_server(listener, stop, log):
    """The tutorial's server. Fixed below in handle() and serve()."""
    for conn, _ in accept_until(listener, stop):
        data = conn.recv(1024)   # BUG: one recv() is not one message; it may be a piece
        conn.send(data)          # BUG: send() may send only part, and says how much
        conn.close()             # and any exception above kills the whole server


def naive_echo_client(address, message: bytes, timeout: float = 5.0) -> bytes:
    """The tutorial's client. Fixed below in echo()."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.send(message)       # BUG: may send only part of the message
        return sock.recv(1024)   # BUG: gets whatever has arrived, at most 1024 bytes


# --- The server, done right. ---

def handle(conn: socket.socket, log: Transcript, who: str) -> None:
    """Echo one client until it closes its sending side."""
    while True:
        data = conn.recv(RECV_SIZE)
        if not data:                 # b'' means EOF: the client has shut down its side
            log.record(SERVER, EOF, who)
            return
        log.record(SERVER, RECV, who, len(data))
        log.record(SERVER, SEND, who, len(data))
        conn.sendall(data)           # loops inside until every byte is handed to the kernel


def serve(listener: socket.socket, stop, log: Transcript) -> None:
    """Serve clients one after another until stopped."""
    for number, (conn, _) in enumerate(accept_until(listener, stop), 1):
        who = f"client {number}"
        log.record(SERVER, ACCEPT, who)
        with conn:
            try:
                handle(conn, log, who)
            except OSError as exc:   # reset, broken pipe, stopped: that client's problem only
                if not stop.is_set():
                    log.record(SERVER, ERROR, who, detail=type(exc).__name__)
            log.record(SERVER, CLOSE, who)


# --- The client, done right. ---

def echo(address, message: bytes, timeout: float = 5.0,
         log: Transcript | None = None, who: str = "client 1") -> bytes:
    """Send message, half-close, and return everything the server sends back.

    The send runs in a helper thread while this thread reads. Sending all of a
    large message before reading any reply would deadlock: the server blocks
    sending us its echo, so it stops reading, so our send blocks too.
    """
    log = log if log is not None else Transcript()
    log.record(CLIENT, CONNECT, who)
    with socket.create_connection(address, timeout=timeout) as sock:
        failure: list = []

        def send_then_close():
            try:
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)   # "I have no more to say": the server sees EOF
            except OSError as exc:
                failure.append(exc)

        # Recorded here, in order, not from the helper thread: see transcript.py.
        log.record(CLIENT, SEND, who, len(message))
        log.record(CLIENT, SHUTDOWN, who)
        sender = threading.Thread(target=send_then_close, name="echo-sender", daemon=True)
        sender.start()
        chunks = []
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    log.record(CLIENT, EOF, who)
                    break
                log.record(CLIENT, RECV, who, len(chunk))
                chunks.append(chunk)
        finally:
            sender.join(timeout)
        if failure:
            raise failure[0]
    log.record(CLIENT, CLOSE, who)
    return b"".join(chunks)


# --- The demo and the command line. ---

def demo() -> int:
    from rich.console import Console
    from lessons.kit import adversary, running

    console = Console(highlight=False)
    console.rule("[bold]Lesson 02: TCP echo")
    log = Transcript()
    with running(serve, log=log) as server:
        reply = echo(server.address, b"hello, echo", log=log)
        log.wait_for_event(SERVER, CLOSE)
        console.print(log.render("a polite client"))
        console.print(f"reply: {reply!r}")
        slow = adversary.dribble(server.address, b"one byte at a time", delay=0.01)
        console.print(f"dribbler got back {slow!r}")
        adversary.reset(server.address)
        big = adversary.flood(server.address, 10 * 1024 * 1024)
        ok = big == adversary.flood_pattern(10 * 1024 * 1024)
        console.print(f"after a reset, a 10 MiB echo came back intact: {ok}")
    with running(naive_echo_server) as server:
        truncated = adversary.dribble(server.address, b"one byte at a time", delay=0.01)
    console.print(f"the tutorial's server gave the dribbler only {len(truncated)} of 18 bytes")
    return 0 if reply == b"hello, echo" and ok and len(truncated) < 18 else 1


def client(args) -> int:
    reply = echo((args.host, args.port), args.message.encode(), timeout=args.timeout)
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def add_client_args(parser) -> None:
    parser.add_argument("message", help="text to send")


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="02_echo", demo=demo, serve=serve,
                      add_client_args=add_client_args, client=client, port=9902)


if __name__ == "__main__":
    main_guard(main)
