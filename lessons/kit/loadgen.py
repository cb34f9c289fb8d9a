"""A load generator for echo servers: many connections, one message in flight on each.

Single-threaded, on a selector, so that one process can hold thousands of
connections. Every reply is checked byte for byte against what was sent (each
message carries its connection and sequence number), so a server that drops,
corrupts or reorders a reply is caught, not just timed.

    result = run_load(("127.0.0.1", port), connections=10, size=1024, duration=5)
    result.requests_per_second, result.latency(0.99), result.wrong_replies

Only for servers on this machine: it refuses any address but loopback.
"""
from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

HEADER = struct.Struct("!IQ")   # connection number, sequence number
MAX_LATENCIES = 200_000         # latency samples kept; beyond that, a uniform-enough subset


@dataclass
class LoadResult:
    """What a load run measured: requests, latencies, and whether every reply was right."""
    connections: int
    size: int
    opened: int = 0
    requests: int = 0
    wrong_replies: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list = field(default_factory=list, repr=False)
    failure: str = ""           # why the run could not go on, if it could not
    answered: int = 0           # connections that got at least one reply

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second of load."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def correct(self) -> bool:
        """Every connection opened, every reply right, no error."""
        return not self.failure and self.opened == self.connections and self.wrong_replies == 0 and self.errors == 0

    def latency(self, quantile: float) -> float:
        """Round-trip seconds at that quantile (0.5 for p50)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


def require_loopback(host: str) -> None:
    """Refuse any address but loopback: load goes nowhere else."""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(host) if host == "localhost" else host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"load goes only to loopback addresses, not {host!r}")


class _Conn:
    __slots__ = ("sock", "number", "seq", "message", "sent", "received", "started")

    def __init__(self, sock, number):
        self.sock, self.number = sock, number
        self.seq, self.message, self.sent, self.received = 0, b"", 0, bytearray()
        self.started = 0.0


def run_load(address, connections: int, size: int = 1024, duration: float = 5.0,
             requests_per_connection: Optional[int] = None, connect_timeout: float = 10.0,
             idle_hold: float = 0.0, progress: Optional[Callable[[str, float], None]] = None,
             on_opened: Optional[Callable[[], None]] = None, stall_timeout: float = 10.0) -> LoadResult:
    """Open ``connections``, then exchange messages of ``size`` bytes until
    ``duration`` seconds pass (or each connection made ``requests_per_connection``).

    ``idle_hold`` keeps every connection open and idle that long after opening,
    before any traffic; then ``on_opened()`` is called (to measure the server
    while it holds every connection idle).
    """
    host, port = address[:2]
    require_loopback(host)
    if size < HEADER.size:
        raise ValueError(f"messages must be at least {HEADER.size} bytes")
    result = LoadResult(connections, size)
    filler = bytes(range(256)) * (size // 256 + 1)
    sel = selectors.DefaultSelector()
    conns: list[_Conn] = []
    try:
        # Phase 1: connect, in batches so the server's accept queue keeps up.
        deadline = time.monotonic() + connect_timeout
        pending = 0
        for number in range(connections):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((host, port))
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                result.failure = f"connect failed: {errno.errorcode.get(code, code)}"
                return result
            conn = _Conn(sock, number)
            conns.append(conn)
            sel.register(sock, selectors.EVENT_WRITE, conn)
            pending += 1
            if pending >= 256 or number == connections - 1:
                pending = _finish_connects(sel, pending, deadline, result)
                if result.failure:
                    return result
            if progress and number % 500 == 0:
                progress("connect", (number + 1) / connections)
        result.opened = connections
        if progress:
            progress("connect", 1.0)
        if idle_hold:
            time.sleep(idle_hold)
        if on_opened:
            on_opened()   # every connection open and idle: a moment to measure the server
        # Phase 2: one message in flight per connection.
        start = time.perf_counter()
        stop_at = start + duration
        for conn in conns:   # (connected sockets were unregistered by _finish_connects)
            _next_message(conn, filler, size)
            sel.register(conn.sock, _send_some(conn, size), conn)
        active = set(conns)

        def retire(conn: _Conn, failed: bool = False) -> None:
            if failed:
                result.errors += 1   # reset, or closed by the server mid-exchange
            sel.unregister(conn.sock)
            active.discard(conn)

        last_report = start
        while active:
            if time.perf_counter() > stop_at + stall_timeout:   # a server that stopped answering
                result.failure = result.failure or "server stopped answering"
                break
            for key, mask in sel.select(timeout=0.5):
                conn = key.data
                try:
                    if mask & selectors.EVENT_WRITE:
                        conn.sent += conn.sock.send(memoryview(conn.message)[conn.sent:])
                        if conn.sent == size:
                            sel.modify(conn.sock, selectors.EVENT_READ, conn)
                        continue
                    chunk = conn.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    retire(conn, failed=True)
                    continue
                if not chunk:
                    retire(conn, failed=True)
                    continue
                conn.received += chunk
                if len(conn.received) < size:
                    continue
                finished = time.perf_counter()
                if bytes(conn.received) != conn.message:
                    result.wrong_replies += 1
                if conn.seq == 0:
                    result.answered += 1
                result.requests += 1
                if len(result.latencies) < MAX_LATENCIES:
                    result.latencies.append(finished - conn.started)
                elif result.requests % 7 == 0:
                    result.latencies[result.requests % MAX_LATENCIES] = finished - conn.started
                conn.seq += 1
                enough = requests_per_connection is not None and conn.seq >= requests_per_connection
                if finished >= stop_at or enough:
                    retire(conn)
                    continue
                _next_message(conn, filler, size)
                try:
                    sel.modify(conn.sock, _send_some(conn, size), conn)
                except OSError:
                    retire(conn, failed=True)
            if progress and time.perf_counter() - last_report > 0.25:
                last_report = time.perf_counter()
                progress("load", min(1.0, (last_report - start) / duration) if requests_per_connection is None
                         else 1 - len(active) / len(conns))
        result.seconds = time.perf_counter() - start
        return result
    finally:
        sel.close()
        for conn in conns:
            conn.sock.close()


def _finish_connects(sel, pending: int, deadline: float, result: LoadResult) -> int:
    while pending:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            result.failure = "timed out connecting"
            return pending
        for key, _ in sel.select(timeout=min(timeout, 0.5)):
            code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sel.unregister(key.fileobj)
            pending -= 1
            if code:
                result.failure = f"connect failed: {errno.errorcode.get(code, code)}"
                return pending
    return 0


def _send_some(conn: _Conn, size: int) -> int:
    """Send what the socket takes now (usually all of it); return the events to wait for next."""
    try:
        conn.sent += conn.sock.send(memoryview(conn.message)[conn.sent:])
    except (BlockingIOError, InterruptedError):
        pass
    return selectors.EVENT_READ if conn.sent == size else selectors.EVENT_WRITE


def _next_message(conn: _Conn, filler: bytes, size: int) -> None:
    conn.message = HEADER.pack(conn.number, conn.seq) + filler[: size - HEADER.size]
    conn.sent = 0
    conn.received = bytearray()
    conn.started = time.perf_counter()
