"""Lesson 02's echo handler and client: the tested copies that later lessons use.

Lesson 02 builds both by hand and explains every line; from lesson 04 on, the
lessons import them from here, so that editing lesson 02 never changes them.

- :func:`handle` echoes one client until it half-closes (RFC 862 over TCP).
- :func:`echo` sends a message, half-closes, and returns the whole reply.
- :func:`add_client_args` and :func:`client`: ``python -m lessons.NN client 'hello'``.
"""
from __future__ import annotations

import socket
import sys
import threading

from .transcript import CLIENT, CLOSE, CONNECT, EOF, RECV, SEND, SERVER, SHUTDOWN, Transcript

RECV_SIZE = 65536   # ask for a lot: recv returns what has arrived, up to this


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


def echo(address, message: bytes, timeout: float = 5.0,
         log: Transcript | None = None, who: str = "client 1") -> bytes:
    """Send message, half-close, and return everything the server sends back (an echo is
    never longer than the message: ConnectionError at the first byte more).

    The send runs in a helper thread while this thread reads: sending all of a
    large message before reading any reply would deadlock against an echo
    server (both sides' buffers fill, both block in send).
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

        log.record(CLIENT, SEND, who, len(message))   # recorded before doing: see transcript.py
        log.record(CLIENT, SHUTDOWN, who)
        sender = threading.Thread(target=send_then_close, name="echo-sender", daemon=True)
        sender.start()
        chunks, received = [], 0
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    log.record(CLIENT, EOF, who)
                    break
                log.record(CLIENT, RECV, who, len(chunk))
                received += len(chunk)
                if received > len(message):   # an echo is never longer: stop reading whatever this is
                    raise ConnectionError(f"the server sent more than the {len(message):,} bytes sent:"
                                          " not an echo")
                chunks.append(chunk)
        finally:
            sender.join(timeout)
        if failure:
            raise failure[0]
    log.record(CLIENT, CLOSE, who)
    return b"".join(chunks)


def add_client_args(parser) -> None:
    """The echo client's one argument: the text to send."""
    parser.add_argument("message", help="text to send")


def client(args) -> int:
    """``client 'hello'``: print the server's echo of the message."""
    # surrogateescape: bytes the shell passed that are not UTF-8 go out as they came
    reply = echo((args.host, args.port), args.message.encode("utf-8", "surrogateescape"),
                 timeout=args.timeout)
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0
