"""UDP sends separate datagrams with no connection and no delivery promise: the client must time out, retry and match replies.

    python -m lessons.06_udp                                           # demo
    python -m lessons.06_udp serve [--port 9906] [--loss 0.3] [--seed 1] [--reorder 0.1]
    python -m lessons.06_udp client 'hello' [--timeout 0.5] [--retries 4]   # waits at most 5 s a try

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
import collections
import functools
import itertools
import random
import socket
import struct
import sys
import time

from rich.console import Console

from lessons.kit import running
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, serve_command, serve_forever,
                             stderr, whole_number)
from lessons.kit.server import POLL_INTERVAL
from lessons.kit.transcript import CLIENT, ERROR, NOTE, RECV, SEND, SERVER, Transcript

TITLE = "UDP: datagrams, loss, timeouts and retries"
MAX_DATAGRAM = 65507   # bytes of payload in one IPv4 UDP datagram
RECV_BUFFER = 65536    # larger than any datagram: a smaller buffer silently cuts it short
REQUEST_ID = struct.Struct("!Q")
MAX_WAIT = 5.0         # seconds: backoff doubles the wait, up to this much per try
KNOWN_SENDERS = 10_000 # senders the server names ("client 7"); the longest quiet are forgotten


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
    names = SenderNames()
    held = None                       # a reply held back, to go out after the next one
    own_port, looped = sock.getsockname()[1], False
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
            if peer[1] == own_port:   # from itself, or another echo server on this port: a
                if not looped:        # forged datagram that would bounce for ever. Said once.
                    log.record(SERVER, NOTE, detail="ignoring our own port (an echo loop)")
                looped = True
                continue
            who = names.of(peer)
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


class SenderNames:
    """"client 1", "client 2"...: a name for each sender address, in order of first datagram.

    UDP has no connections, so nothing tells the server that a client has gone:
    it remembers the KNOWN_SENDERS most recently heard from, and forgets the
    one quiet the longest (which gets a new number if it comes back).
    """

    def __init__(self, limit: int = KNOWN_SENDERS):
        self.limit, self.count = limit, 0
        self.names: collections.OrderedDict[tuple, str] = collections.OrderedDict()

    def of(self, peer: tuple) -> str:
        """The name of the sender at ``peer``; a new one if we never heard from it, or forgot it."""
        if peer in self.names:
            self.names.move_to_end(peer)
            return self.names[peer]
        self.count += 1
        self.names[peer] = f"client {self.count}"
        if len(self.names) > self.limit:
            self.names.popitem(last=False)
        return self.names[peer]


def send_reply(sock: socket.socket, log: Transcript, data: bytes, peer, who: str) -> None:
    """Send one reply; a bad peer address is recorded, never fatal."""
    try:
        log.record(SERVER, SEND, who, len(data))
        sock.sendto(data, peer)
    except OSError as exc:            # a bad peer address must not stop the server
        log.record(SERVER, ERROR, who, detail=type(exc).__name__)


def make_serve(loss: float = 0.0, reorder: float = 0.0, seed: int | None = None):
    """serve() over a link as bad as asked for."""
    return functools.partial(serve, loss=loss, reorder=reorder, seed=seed)


# --- The common first attempt at a client, and the fixed one. ---
# (The tutorial only mentions UDP; this first attempt is the one most people write.)

def naive_udp_client(address, message: bytes) -> bytes:
    """The common first attempt, written like a TCP client. Fixed below in request()."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)   # (ours: as usually written, it waits forever for a lost reply)
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
    long each time (never more than MAX_WAIT). Each request carries a fresh id;
    a reply with another id is a late answer to an earlier request, and is ignored.
    """
    if len(message) + REQUEST_ID.size > MAX_DATAGRAM:
        raise ValueError(f"{len(message):,} bytes do not fit in one datagram "
                         f"(at most {MAX_DATAGRAM - REQUEST_ID.size:,} here)")
    request_id = REQUEST_ID.pack(next(_ids))
    datagram = request_id + message
    wait, waited = timeout, 0.0
    for attempt in range(1, retries + 2):
        if log:
            log.record(CLIENT, SEND, nbytes=len(datagram),
                       detail=f"try {attempt}, then wait up to {wait:g} s")
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
        wait = min(wait * backoff, MAX_WAIT)
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
    console = Console(highlight=False)
    console.rule("[bold]Lesson 06: UDP")
    with running(serve, transport="udp") as server:
        hello = ask(server.address, b"hello")
        console.print(f"echo of b'hello': {hello!r}")
        biggest = bytes(range(256)) * 255 + b"x" * 227            # 65,507 bytes: the most one datagram holds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sock.sendto(biggest, server.address)
            whole = sock.recvfrom(RECV_BUFFER)[0] == biggest
        console.print(f"a {len(biggest):,}-byte datagram came back whole: {whole}")
        cut = len(naive_udp_client(server.address, biggest))
        console.print(f"a first-attempt client reading with recvfrom(1024) got {cut:,} of those bytes")
    log = Transcript()
    with running(make_serve(loss=0.3, seed=6), transport="udp") as server:
        replies = [ask(server.address, b"%d" % i, timeout=0.05, retries=10, log=log) for i in range(10)]
    tries = sum(1 for e in log.events(CLIENT) if e.kind == SEND)
    right = replies == [b"%d" % i for i in range(10)]
    console.print(f"over 30% simulated loss: 10 requests, every reply right: {right}, in {tries} tries")
    return 0 if hello == b"hello" and whole and cut == 1024 and right else 1


def client(args) -> int:
    """``client 'hello'``: print the echo, retrying over a lossy network."""
    try:
        # surrogateescape: bytes the shell passed that are not UTF-8 go out as they came
        message = args.message.encode("utf-8", "surrogateescape")
        reply = ask((args.host, args.port), message, timeout=args.timeout, retries=args.retries)
    except NoReply as exc:
        stderr.print(f"[red]{exc}: is an echo server on {args.host}:{args.port} (UDP)?[/]")
        return 1
    except ValueError as exc:
        stderr.print(f"[red]{exc}[/]")
        return 1
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def fraction(text: str) -> float:
    """A fraction of datagrams, at least 0 and less than 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r}") from None
    if not 0 <= value < 1:   # (nan fails this too)
        raise argparse.ArgumentTypeError(f"must be at least 0 and less than 1, not {text}")
    return value


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "06_udp")
    serve_cmd = serve_command(commands, port=9906, transport="udp")
    serve_cmd.add_argument("--loss", type=fraction, default=0.0, help="fraction of datagrams to drop")
    serve_cmd.add_argument("--reorder", type=fraction, default=0.0,
                           help="fraction of replies to hold back behind the next one")
    serve_cmd.add_argument("--seed", type=whole_number(0, 2**63 - 1, "the seed"), default=None,
                           help="makes loss and reordering repeat exactly")
    # A UDP client's timeout is per try, and each retry waits longer: keep each one short.
    client_cmd = client_command(commands, port=9906, transport="udp", timeout=0.5, max_timeout=MAX_WAIT)
    client_cmd.add_argument("message", help="text to send, as one datagram")
    client_cmd.add_argument("--retries", type=whole_number(0, 20, "--retries"), default=4, metavar="N",
                            help="tries after the first (0-20, default %(default)s); each waits twice "
                                 f"as long as the last, at most {MAX_WAIT:g} s")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_forever(make_serve(args.loss, args.reorder, args.seed), args, "06_udp", transport="udp")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
