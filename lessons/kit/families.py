"""Servers and clients over any address family: IPv4, IPv6, dual stack, Unix socket paths.

:func:`.server.running` and :func:`.cli.serve_forever` bind a ``(host, port)``
of one family themselves. Lesson 12 binds names, IPv6 literals, dual-stack
sockets and Unix socket paths, so it makes the listening socket and hands it
to the same lifecycle::

    with running_on(listen_unix(path), serve) as server:   # kit.server: a daemon thread
        talk_to(server.address)                            # the path, or (host, port)

    return serve_forever(serve, args, name, listener=listener)   # kit.cli: the foreground

- :func:`peer_kind`         how a client reached a server, without its address
- :func:`from_loopback`     whether a peer is on this machine
- :func:`knock`             which loopback addresses reach a listener
- :func:`address_kind`      loopback, private, link-local, public: what NAT does to it
- :func:`exchange`          the echo client's half: send, half-close, read to EOF, on any socket
- :func:`unix_echo`         the echo client over a Unix socket path
- :func:`have_ipv6`         whether this machine has IPv6 loopback at all
- :func:`free_on_both_loopbacks`  a port free on 127.0.0.1 and ::1, held on the other one
- :func:`holding`           keep such a holder as long as its listener
- :func:`unix_address`      a Unix socket path as bind() takes it; ``@name``: the abstract namespace
- :func:`add_where_args`    ``--host`` (a name or an address) or ``--unix PATH``, and ``--port``
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import sys
import threading
import weakref
from typing import Optional

from .check import describe_error
from .cli import describe_address, host_name, port_number, seconds
from .server import JOIN_TIMEOUT
from .transcript import CLIENT, CLOSE, CONNECT, EOF, RECV, SEND, SHUTDOWN, Transcript

INET = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
LOOPBACKS = ("127.0.0.1", "::1")
HAVE_UNIX = hasattr(socket, "AF_UNIX")              # CPython offers no AF_UNIX on Windows
HAVE_ABSTRACT = sys.platform.startswith("linux")    # the abstract namespace is Linux's alone
HAVE_PEERCRED = HAVE_ABSTRACT and hasattr(socket, "SO_PEERCRED")

# Why a part of lesson 12 is skipped: the same words in the demo, the notebook and the tests.
NO_IPV6 = "this machine has no IPv6 loopback (::1)"
NO_DUALSTACK = "this OS cannot make one socket serve IPv4 and IPv6 (no dual stack)"
NO_UNIX = "this Python has no AF_UNIX (Windows)"
NO_ABSTRACT = "the abstract namespace exists on Linux only"
NO_PEERCRED = "Python reads a peer's credentials (SO_PEERCRED) on Linux only"
NO_OTHER_USER = "running as root, which passes every permission check, and unable to become another user"


def have_ipv6() -> bool:
    """Whether this machine has IPv6 loopback (::1): some containers have no IPv6 at all."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def free_on_both_loopbacks(host: str, attempts: int = 100) -> tuple[int, Optional[socket.socket]]:
    """A port number that nothing uses on 127.0.0.1 nor on ::1, for a server about to
    listen on ``host`` (an IPv4 or IPv6 address), and a socket that holds the same number
    on the other family's loopback: bound, never listening, so a knock there is refused
    and nobody else can bind it. Keep it as long as the server: :func:`holding`.

    Port 0 picks a port free in the socket's own family only: a server on ::1 could get
    a number that another program listens on at 127.0.0.1, and a client that knocks
    there, expecting to be refused, reached that program instead (lesson 12's notebook
    did, once in about a dozen full test runs). Bound without SO_REUSEADDR, each probe
    conflicts with any socket on that port, listening or not.
    """
    if not have_ipv6():
        return 0, None   # one loopback: port 0 is enough
    other = "127.0.0.1" if ":" in host else "::1"
    for _ in range(attempts):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6.bind(("::1", port))
        except OSError:   # taken on ::1: try another number
            v4.close(), v6.close()
            continue
        mine, guard = (v4, v6) if other == "::1" else (v6, v4)
        mine.close()      # the server binds it next
        return port, guard
    raise OSError(f"no port free on both loopbacks in {attempts} attempts")


@contextlib.contextmanager
def holding(guard: Optional[socket.socket]):
    """``keep(listener)`` ties ``guard`` to the listener: it closes when the listener is
    garbage-collected. If the listener is never made (bind failed), it closes at once."""
    kept = []

    def keep(listener: socket.socket) -> socket.socket:
        if guard is not None:
            weakref.finalize(listener, guard.close)
        kept.append(listener)
        return listener

    try:
        yield keep
    finally:
        if guard is not None and not kept:
            guard.close()


def _ip(peer) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(peer[0].split("%")[0])   # drop an IPv6 scope ("fe80::1%eth0")


def peer_kind(family: int, peer) -> str:
    """'IPv4', 'IPv6', 'IPv4, mapped into IPv6' (a dual-stack socket's IPv4 client) or 'a Unix socket'."""
    if family not in INET:
        return "a Unix socket"
    ip = _ip(peer)
    return "IPv4, mapped into IPv6" if getattr(ip, "ipv4_mapped", None) else f"IPv{ip.version}"


def from_loopback(family: int, peer) -> bool:
    """Whether the peer is on this machine (a Unix socket always is)."""
    if family not in INET:
        return True
    ip = _ip(peer)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def knock(listener: socket.socket, hosts=LOOPBACKS, timeout: float = 1.0) -> dict[str, str]:
    """Connect to each host at the listener's port: 'connected' (and how the server saw us), or the error."""
    port, outcome = listener.getsockname()[1], {}
    listener.settimeout(timeout)
    for host in hosts:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect((host, port))
            except OSError as exc:
                outcome[host] = describe_error(exc)
                continue
        try:
            conn, peer = listener.accept()     # the kernel finished the handshake; take it off the queue
        except socket.timeout:
            outcome[host] = "connected to another program on that port"
            continue
        conn.close()
        outcome[host] = "connected" + (f", seen as {peer[0]}" if peer[0] != host else "")
    return outcome


def address_kind(address: Optional[str]) -> str:
    """What kind of address this is, in words: what the rest of the network can do with it."""
    if address is None:
        return "none: no route to the network"
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.is_loopback:
        return "loopback: this machine only"
    if ip.is_link_local:
        return "link-local: this network segment only"
    if ip.version == 4 and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "shared (carrier-grade NAT): the internet sees your provider's address"
    if ip.is_private and ip.version == 4:
        return "private: the internet sees your router's address (NAT), not this one"
    if ip.is_private:   # fc00::/7 and the like: never routed on the internet, and no NAT
        return "private (unique local): this site's network only, never routed on the internet"
    return "public: reachable from the internet, unless a firewall says no"


def exchange(sock: socket.socket, message: bytes, log: Optional[Transcript] = None,
             who: str = "client 1") -> bytes:
    """On a connected socket of any family: send message, half-close, return all that comes back.

    The send runs in a helper thread while this one reads, as in
    :func:`.echo.echo`: sending all of a large message before reading any
    reply would deadlock against an echo server.
    """
    log = log if log is not None else Transcript()
    failure: list = []

    def send_then_close():
        try:
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)   # the peer sees EOF
        except OSError as exc:
            failure.append(exc)

    log.record(CLIENT, SEND, who, len(message))   # recorded before doing: see transcript.py
    log.record(CLIENT, SHUTDOWN, who)
    sender = threading.Thread(target=send_then_close, name="exchange-sender", daemon=True)
    sender.start()
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                log.record(CLIENT, EOF, who)
                break
            log.record(CLIENT, RECV, who, len(chunk))
            chunks.append(chunk)
    finally:
        sender.join(JOIN_TIMEOUT)
    if failure:
        raise failure[0]
    return b"".join(chunks)


def unix_echo(path, message: bytes, timeout: float = 5.0, log: Optional[Transcript] = None,
              who: str = "client 1") -> bytes:
    """:func:`.echo.echo` over a Unix socket: connect to a path (or b'\\0name'), not to (host, port)."""
    log = log if log is not None else Transcript()
    log.record(CLIENT, CONNECT, who)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        reply = exchange(sock, message, log, who)
    log.record(CLIENT, CLOSE, who)
    return reply


# --- The command line: --host (a name or an address) or --unix PATH, and --port. ---

def host_text(text: str) -> str:
    """--host: an address or a name, never empty; ``[::1]`` as in a URL is ``::1``."""
    text = host_name(text)
    if text.startswith("[") and text.endswith("]"):   # the brackets are not part of the address
        text = host_name(text[1:-1])
    return text


def unix_path(text: str) -> str:
    """--unix: a socket path, or @name (Linux's abstract namespace)."""
    if not HAVE_UNIX:
        raise argparse.ArgumentTypeError("this Python has no AF_UNIX (Windows): use --host")
    if text.startswith("@") and not HAVE_ABSTRACT:
        raise argparse.ArgumentTypeError("the abstract namespace (@name) exists on Linux only")
    if not text.strip("@") or "\0" in text:
        raise argparse.ArgumentTypeError(f"not a socket path: {text!r}")
    return text


def unix_address(path: str):
    """A path as bind() and connect() take it; '@name' is Linux's abstract namespace (b'\\0name')."""
    if path.startswith("@"):
        if not HAVE_ABSTRACT:
            raise ValueError(NO_ABSTRACT)
        return b"\0" + path[1:].encode()
    return path


def add_where_args(parser: argparse.ArgumentParser, port: int, serving: bool) -> None:
    """``--host`` or ``--unix`` (not both), ``--port``; and ``--timeout`` for a client."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--host", type=host_text, default="127.0.0.1",
                       help="an address or a name: 127.0.0.1, ::1, localhost, :: (default %(default)s)")
    where.add_argument("--unix", metavar="PATH", type=unix_path,
                       help="a Unix socket path instead of TCP (@name: Linux's abstract namespace)")
    parser.add_argument("--port", type=port_number, default=None,
                        help=f"TCP port (default {port}{'; 0 picks a free one' if serving else ''})")
    if not serving:
        parser.add_argument("--timeout", type=seconds(0, 3600), default=5.0,
                            help="seconds to wait for the server (default %(default)s)")


def check_where_args(parser: argparse.ArgumentParser, args: argparse.Namespace, port: int) -> None:
    """Refuse what parses but makes no sense; fill in the default port."""
    if args.unix and args.port is not None:
        parser.error("--port goes with --host: a Unix socket has a path, not a port")
    args.port = port if args.port is None else args.port
    if args.port == 0 and getattr(args, "timeout", None) is not None:   # a client
        parser.error("--port 0 picks a free port for a server; a client needs the server's port")


def where(args: argparse.Namespace) -> str:
    """The address the command line names, for messages."""
    return f"unix:{args.unix}" if args.unix else describe_address((args.host, args.port))


def why_not(exc: OSError, args: argparse.Namespace) -> str:
    """One line on why a socket call failed, in the terms of the command line."""
    if isinstance(exc, FileExistsError) and not exc.strerror:   # ours, from a stale-file check
        return str(exc)
    if isinstance(exc, FileNotFoundError):   # connect(): no file; bind(): no directory...
        if args.command == "client":
            return "no such socket file: is the server running?"
        folder = os.path.dirname(os.path.abspath(args.unix)) if args.unix else ""
        if folder and os.path.isdir(folder):   # ...or one that takes no new files, as /proc
            return f"{folder} cannot hold a socket file"
        return "no such directory"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nobody is listening" + (" (a stale socket file?)" if args.unix else "")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {args.host!r}: {exc.strerror}"
    if isinstance(exc, socket.timeout):
        return f"no answer within {args.timeout:g} s"
    if exc.errno:   # strerror alone: create_server() appends the address tuple to it
        return os.strerror(exc.errno)
    return str(exc)
