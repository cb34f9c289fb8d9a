"""UDP sends separate datagrams with no connection and no delivery promise: the client must time out, retry and match replies.

    python -m lessons.06_udp                                           # demo
    python -m lessons.06_udp serve [--port 9906] [--loss 0.3] [--seed 1] [--reorder 0.1]
    python -m lessons.06_udp client 'hello' [--timeout 0.5] [--retries 4]

``nc -u 127.0.0.1 9906`` is a client too: each line you type is one datagram.

The server is RFC 862 echo over UDP: each datagram goes back to its sender as
one datagram, unchanged, from 0 bytes up to 65,507 (the most one IPv4 UDP
datagram can carry: 65,535 minus 8 bytes of UDP header and 20 of IP header).
``--loss`` drops that fraction of datagrams and ``--reorder`` holds some
replies back behind the next one, to play a bad network; ``--seed`` makes
both repeat exactly.

    client                                   server
    sendto(b"<id>hello") ── datagram ──►    recvfrom() → (b"<id>hello", client address)
                                   ✗ lost?   sendto(same bytes, client address)
    recv(), with a timeout ◄── datagram ──
    nothing in time? send again, waiting twice as long (exponential backoff);
    a reply with another id is a late answer to an earlier request: ignore it.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import random
import socket
import struct
import sys
import time

from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.server import POLL_INTERVAL
from lessons.kit.transcript import CLIENT, ERROR, NOTE, RECV, SEND, SERVER, Transcript

TITLE = "UDP: datagrams, loss, timeouts and retries"
MAX_DATAGRAM = 65507   # bytes of payload in one IPv4 UDP datagram
RECV_BUFFER = 65536    # larger than any datagram: a smaller buffer silently cuts it short
REQUEST_ID = struct.Struct("!Q")


# --- The server: echo each datagram, over a link as bad as you ask for. ---

class LossyLink:
    """Decides, datagram by datagram, what a bad network would do. Seeded, so repeatable."""

    def __init__(self, loss: float = 0.0, reorder: float = 0.0, seed: int | None = None):
        self.loss, self.reorder = loss, reorder
        self.rng = random.Random(seed)

    def fate(self) -> str:
        roll = self.rng.random()
        if roll < self.loss:
            return "drop"
        if roll < self.loss + self.reorder:
            return "hold"
        return "deliver"


def serve(sock: socket.socket, stop, log: Transcript, loss: float = 0.0, reorder: float = 0.0,
          seed: int | None = None) -> None:
    """Echo datagrams until stopped. No accept, no connections: one socket for everyone."""
    link = LossyLink(loss, reorder, seed)
    names: dict[tuple, str] = {}      # sender address → "client N", in order of first datagram
    held = None                       # a reply held back, to go out after the next one
    sock.settimeout(POLL_INTERVAL)
    try:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(RECV_BUFFER)
            except socket.timeout:
                if held:              # nothing came after it: let the held reply go, late
                    send_reply(sock, log, *held)
                    held = None
                continue
            except OSError as exc:    # e.g. Windows reports an earlier "port unreachable" here
                log.record(SERVER, ERROR, detail=type(exc).__name__)
                continue
            who = names.setdefault(peer, f"client {len(names) + 1}") if len(names) < 10_000 else "a client"
            log.record(SERVER, RECV, who, len(data))
            fate = link.fate()
            if fate == "drop":
                log.record(SERVER, NOTE, who, detail="dropped (simulated loss)")
                continue
            if fate == "hold" and held is None:
                held = (data, peer, who)
                log.record(SERVER, NOTE, who, detail="held back (simulated reordering)")
                continue
            send_reply(sock, log, data, peer, who)
            if held:
                send_reply(sock, log, *held)
                held = None
    finally:
        if held:
            send_reply(sock, log, *held)


def send_reply(sock: socket.socket, log: Transcript, data: bytes, peer, who: str) -> None:
    try:
        log.record(SERVER, SEND, who, len(data))
        sock.sendto(data, peer)
    except OSError as exc:            # a bad peer address must not stop the server
        log.record(SERVER, ERROR, who, detail=type(exc).__name__)


def make_serve(loss: float = 0.0, reorder: float = 0.0, seed: int | None = None):
    return functools.partial(serve, loss=loss, reorder=reorder, seed=seed)


# --- The tutorial's client, and the fixed one. ---

def naive_udp_client(address, message: bytes) -> bytes:
    """The tutorial's way. Fixed below in request()."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)              # (ours: the tutorial waits forever if a datagram is lost)
        sock.sendto(message, address)
        data, _ = sock.recvfrom(1024)     # BUG: a longer reply is cut to 1024 bytes, the rest lost
        return data                       # BUG: no retry, and any datagram is taken as the reply


class NoReply(TimeoutError):
    """Every try timed out."""


_ids = itertools.count(random.getrandbits(40))


def request(sock: socket.socket, message: bytes, timeout: float = 0.5, retries: int = 4,
            backoff: float = 2.0, log: Transcript | None = None) -> bytes:
    """Send message on a connected UDP socket and return its echo.

    Tries 1 + ``retries`` times, waiting ``timeout`` seconds, then twice as
    long each time. Each request carries a fresh id; a reply with another id
    is a late answer to an earlier request, and is ignored.
    """
    if len(message) + REQUEST_ID.size > MAX_DATAGRAM:
        raise ValueError(f"{len(message):,} bytes do not fit in one datagram "
                         f"(at most {MAX_DATAGRAM - REQUEST_ID.size:,} here)")
    request_id = REQUEST_ID.pack(next(_ids))
    datagram = request_id + message
    wait, waited = timeout, 0.0
    for attempt in range(1, retries + 2):
        if log:
            log.record(CLIENT, SEND, detail=f"try {attempt}, then wait up to {wait:g} s")
        sock.send(datagram)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                reply = sock.recv(RECV_BUFFER)
            except socket.timeout:
                break
            if reply[:REQUEST_ID.size] == request_id:
                if log:
                    log.record(CLIENT, RECV, nbytes=len(reply))
                return reply[REQUEST_ID.size:]
            if log:
                log.record(CLIENT, NOTE, detail="ignored a reply to an earlier request")
        waited += wait
        wait *= backoff
    raise NoReply(f"no reply after {retries + 1} tries over {waited:.1f} s")


def ask(address, message: bytes, timeout: float = 0.5, retries: int = 4, log: Transcript | None = None) -> bytes:
    """request() on a fresh socket, connected to the server's address.

    connect() on a UDP socket sends nothing. It sets the default destination,
    makes the kernel drop datagrams from anyone else, and lets an ICMP "port
    unreachable" come back to us as ConnectionRefusedError.
    """
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(address[:2])
        return request(sock, message, timeout=timeout, retries=retries, log=log)


# --- Demo and command line. ---

def demo() -> int:
    from rich.console import Console
    from lessons.kit import running

    console = Console(highlight=False)
    console.rule("[bold]Lesson 06: UDP")
    with running(serve, transport="udp") as server:
        console.print(f"echo of b'hello': {ask(server.address, b'hello')!r}")
        big = bytes(range(256)) * 255
        console.print(f"a {len(big):,}-byte datagram came back whole: {ask(server.address, big) == big}")
        console.print(f"the tutorial's client got {len(naive_udp_client(server.address, big)):,} of those bytes")
    log = Transcript()
    with running(make_serve(loss=0.3, seed=6), transport="udp") as server:
        replies = [ask(server.address, b"%d" % i, timeout=0.05, retries=10, log=log) for i in range(10)]
    tries = sum(1 for e in log.events(CLIENT) if e.kind == SEND)
    console.print(f"over 30% simulated loss: 10 requests, 10 correct replies: "
                  f"{replies == [b'%d' % i for i in range(10)]}, in {tries} tries")
    return 0


def loss_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and less than 1, not {text}")
    return value


def add_serve_args(parser) -> None:
    parser.add_argument("--loss", type=loss_fraction, default=0.0, help="fraction of datagrams to drop")
    parser.add_argument("--reorder", type=loss_fraction, default=0.0,
                        help="fraction of replies to hold back behind the next one")
    parser.add_argument("--seed", type=int, default=None, help="makes loss and reordering repeat exactly")


def add_client_args(parser) -> None:
    parser.add_argument("message", help="text to send, as one datagram")
    parser.add_argument("--retries", type=int, default=4, choices=range(0, 21), metavar="N",
                        help="tries after the first (0-20, default %(default)s)")
    parser.set_defaults(timeout=0.5)


def client(args) -> int:
    from lessons.kit.cli import stderr
    try:
        reply = ask((args.host, args.port), args.message.encode(), timeout=args.timeout, retries=args.retries)
    except NoReply as exc:
        stderr.print(f"[red]{exc}: is an echo server on {args.host}:{args.port} (UDP)?[/]")
        return 1
    except ValueError as exc:
        stderr.print(f"[red]{exc}[/]")
        return 1
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="06_udp", demo=demo, serve=serve,
                      add_client_args=add_client_args, client=client, port=9906,
                      add_serve_args=add_serve_args, transport="udp",
                      serve_from_args=lambda a: make_serve(a.loss, a.reorder, a.seed))


if __name__ == "__main__":
    main_guard(main)
