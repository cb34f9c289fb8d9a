"""Reading whole messages from a TCP byte stream: the tested helpers.

Lesson 02 builds each of these by hand and explains it; later lessons import
them from here. TCP delivers a stream of bytes, not messages: one send() may
arrive as many recv() results and many sends as one, so every reader loops.
"""
from __future__ import annotations

import socket
import struct

RECV_SIZE = 65536                 # one recv() asks for up to this much
HEADER = struct.Struct("!I")      # 4-byte big-endian length prefix
MAX_MESSAGE = 16 * 1024 * 1024    # refuse a length prefix above this


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Return exactly n bytes, or raise EOFError if the peer closes first."""
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(min(remaining, RECV_SIZE))
        if not chunk:
            raise EOFError(f"peer closed after {n - remaining} of {n} bytes")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Read until the peer closes its side; refuse more than ``limit`` bytes."""
    chunks, total = [], 0
    while True:
        chunk = sock.recv(RECV_SIZE)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise ValueError(f"peer sent more than {limit:,} bytes")
        chunks.append(chunk)


def send_message(sock: socket.socket, payload: bytes) -> None:
    """Frame payload with its length, so the reader knows where it ends."""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message of {len(payload):,} bytes is over the {MAX_MESSAGE:,}-byte limit")
    sock.sendall(HEADER.pack(len(payload)) + payload)


def recv_message(sock: socket.socket, max_size: int = MAX_MESSAGE):
    """Return the next framed message, or None if the peer closed between messages.

    Raises EOFError if the peer closes part-way through a message, and
    ValueError if the length prefix is over ``max_size`` (a corrupt or hostile
    peer could otherwise make us wait for, or allocate, gigabytes).
    """
    first = sock.recv(HEADER.size)
    if not first:
        return None
    header = first + recv_exactly(sock, HEADER.size - len(first))
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise ValueError(f"length prefix says {length:,} bytes, over the {max_size:,}-byte limit")
    return recv_exactly(sock, length)


class LineTooLong(ValueError):
    """A peer sent more than the limit without ending its line."""


class LineBuffer:
    """Split a byte stream into lines, however it was cut up on the way.

    ``feed()`` takes whatever recv() returned and gives back the complete lines
    in it, without their ``\\n`` (or ``\\r\\n``); the rest waits for the next
    feed. A line longer than ``limit`` bytes raises LineTooLong, so a peer that
    never sends a newline cannot make us buffer without end. It works the same
    for a blocking reader and for a selector loop (lesson 05).
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._pending = b""

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes from the stream; return the lines they complete."""
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            if len(line.removesuffix(b"\r")) > self.limit:
                raise LineTooLong(f"line of {len(line):,} bytes is over the {self.limit:,}-byte limit")
        if len(self._pending) > self.limit + 1:  # +1: room for a '\r' still to be followed by '\n'
            raise LineTooLong(f"over {self.limit:,} bytes without a newline")
        return [line.removesuffix(b"\r") for line in lines]

    @property
    def pending(self) -> bytes:
        """Bytes after the last newline: an unfinished line."""
        return self._pending


def read_lines(sock: socket.socket, limit: int = 4096):
    """Yield each line from sock until EOF (a last line without \\n included)."""
    buffer = LineBuffer(limit)
    while True:
        data = sock.recv(RECV_SIZE)
        if not data:
            if buffer.pending:
                yield buffer.pending.removesuffix(b"\r")
            return
        yield from buffer.feed(data)
