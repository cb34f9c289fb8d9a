"""Hostile and awkward peers, for "break it" demos, exercise checks and tests.

Real networks and real clients do all of these: split messages into tiny
pieces, send far more than fits in a buffer, close one direction early,
vanish with a reset, or connect and say nothing. A server that survives only
polite clients is not finished.

Every peer here has a timeout on each socket operation, so none can hang.
"""
from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from typing import Iterator

from .stream import read_lines, recv_until_eof

TIMEOUT = 5.0


def connect(address: tuple, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(address[:2], timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # so each dribbled byte leaves at once
    return sock


def dribble(address: tuple, data: bytes, delay: float = 0.02, timeout: float = TIMEOUT) -> bytes:
    """Send one byte at a time with a pause between, half-close, return the reply."""
    with connect(address, timeout) as sock:
        try:
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
                time.sleep(delay)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up early; what it sent back so far is the answer
        return _read_what_arrives(sock)


def _read_what_arrives(sock: socket.socket) -> bytes:
    """Read until EOF, or until a reset ends the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def half_close(address: tuple, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send everything, shut down the sending side, read the reply until EOF."""
    with connect(address, timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)


def flood(address: tuple, nbytes: int, timeout: float = TIMEOUT, chunk: int = 1 << 20) -> bytes:
    """Send nbytes while reading the reply in parallel; return the reply.

    Sending everything first and reading afterwards would deadlock against an
    echo server: both sides' buffers fill and both block in send().
    """
    pattern = bytes(range(256)) * (chunk // 256)
    with connect(address, timeout) as sock:
        failure: list = []

        def writer():
            try:
                left = nbytes
                while left:
                    piece = pattern[:min(left, len(pattern))]
                    sock.sendall(piece)
                    left -= len(piece)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                failure.append(exc)

        t = threading.Thread(target=writer, name="flood-writer", daemon=True)
        t.start()
        try:
            reply = recv_until_eof(sock, limit=nbytes * 2 + 1)
        finally:
            t.join(timeout)
        if failure:
            raise failure[0]
        return reply


def flood_pattern(nbytes: int, chunk: int = 1 << 20) -> bytes:
    """The bytes that flood() sends, to compare a reply against."""
    pattern = bytes(range(256)) * (chunk // 256)
    whole, rest = divmod(nbytes, len(pattern))
    return pattern * whole + pattern[:rest]


def abort(sock: socket.socket) -> None:
    """Close with a reset (RST) instead of an orderly FIN: SO_LINGER on, zero seconds."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def reset(address: tuple, data: bytes = b"", timeout: float = TIMEOUT, pause: float = 0.05) -> None:
    """Connect, optionally send something, then vanish with a reset."""
    sock = connect(address, timeout)
    try:
        if data:
            sock.sendall(data)
            time.sleep(pause)  # let the server start working on it before the reset
    finally:
        abort(sock)


@contextlib.contextmanager
def silent(address: tuple, timeout: float = TIMEOUT) -> Iterator[socket.socket]:
    """Connect and say nothing for as long as the block lasts."""
    with connect(address, timeout) as sock:
        yield sock


@contextlib.contextmanager
def silent_server(hold: float = 2.0, host: str = "127.0.0.1") -> Iterator[tuple]:
    """A server that accepts connections, says nothing for ``hold`` seconds,
    then hangs up. Yields its address.

    A client that waits for it without a timeout is stuck for the whole hold,
    which is how a hung or overloaded server looks from the outside.
    """
    from .server import POLL_INTERVAL, running

    def serve(listener, stop, log):
        held = []  # (deadline, conn)
        listener.settimeout(POLL_INTERVAL)
        try:
            while not stop.is_set():
                with contextlib.suppress(socket.timeout):
                    conn, _ = listener.accept()
                    held.append((time.monotonic() + hold, stop.track(conn)))
                now = time.monotonic()
                for deadline, conn in [h for h in held if h[0] <= now]:
                    conn.close()
                held = [h for h in held if h[0] > now]
        finally:
            for _, conn in held:
                conn.close()

    with running(serve, host=host, name="silent-server") as server:
        yield server.address


def closed_port(host: str = "127.0.0.1") -> tuple:
    """An address where nothing listens: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[:2]


@contextlib.contextmanager
def connected_pair(timeout: float = TIMEOUT) -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two ends of a real TCP connection on loopback: (ours, theirs)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(timeout)
        ours = socket.create_connection(listener.getsockname(), timeout=timeout)
        try:
            theirs, _ = listener.accept()
        except BaseException:
            ours.close()
            raise
    theirs.settimeout(timeout)
    theirs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


def play(sock: socket.socket, script: list, delay: float = 0.02) -> threading.Thread:
    """Act out a script on ``sock`` in a background thread and return the thread.

    Steps: bytes to send (each sent separately, after ``delay``), "close" for
    an orderly close of the sending side, "reset" for an abrupt one.
    """
    def act():
        with contextlib.suppress(OSError):
            for step in script:
                time.sleep(delay)
                if step == "close":
                    sock.shutdown(socket.SHUT_WR)
                elif step == "reset":
                    abort(sock)
                    return
                else:
                    sock.sendall(step)

    t = threading.Thread(target=act, name="scripted-peer", daemon=True)
    t.start()
    return t


def talk_past_a_sleeper(address: tuple, messages: int = 4000, size: int = 4000,
                        patience: float = 1.0, ahead: int = 64) -> dict:
    """Three chat clients: 'sleepy' joins and never reads, 'talker' sends ``messages``
    lines of ``size`` bytes, 'listener' counts what reaches it. Returns what happened.

    A room that sends to everyone from the sender's thread stalls behind sleepy:
    once sleepy's buffers are full, the talker is blocked too. A room with an
    outbox per member drops sleepy instead ("* sleepy left (too slow to keep up)").
    Raw sockets, so it runs against the tutorial's server too (which has no
    names: there, the name lines are just more messages). ``patience``: how long
    the talker waits on a blocked send, and the listener on silence.

    The talker keeps at most ``ahead`` lines ahead of the listener (waiting up to
    ``patience`` for it to catch up, then talking on regardless): a room that delivers
    more slowly than it reads (behind TLS relays, say, or on a busy machine) must drop
    sleepy, not the listener, who reads all it is sent.
    """
    body = b"p" * size
    received, notices = [], []
    caught_up = threading.Condition()

    def listen(sock):
        with contextlib.suppress(OSError, ValueError):
            for raw in read_lines(sock, size * 2):
                if raw.endswith(body):
                    with caught_up:
                        received.append(raw)
                        caught_up.notify()
                elif raw.startswith(b"* sleepy"):
                    notices.append(raw.decode())

    with contextlib.ExitStack() as stack:
        sleepy, talker, listener = (stack.enter_context(connect(address)) for _ in range(3))
        for sock, name in ((sleepy, b"sleepy\n"), (talker, b"talker\n"), (listener, b"listener\n")):
            sock.sendall(name)
        listener.settimeout(patience)   # the listener stops after this long without a line
        reader = threading.Thread(target=listen, args=(listener,), name="sleeper-listener", daemon=True)
        reader.start()
        time.sleep(0.2)                 # let all three join before the talking starts
        talker.settimeout(patience)
        sent, blocked, pacing = 0, False, True
        try:
            for _ in range(messages):
                if pacing:        # a stalled room never lets the listener catch up: then talk on
                    with caught_up:
                        pacing = caught_up.wait_for(lambda: sent - len(received) < ahead, timeout=patience)
                talker.sendall(body + b"\n")
                sent += 1
        except socket.timeout:          # the server stopped reading what we send
            blocked = True
        reader.join(30)
    return {"listener got every message": len(received) == sent,
            "talker was blocked": blocked,
            "sleepy was dropped": "* sleepy left (too slow to keep up)" in notices}
