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
