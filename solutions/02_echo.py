"""Answers to lesson 02's exercises."""
from __future__ import annotations

import struct

HEADER = struct.Struct("!I")   # 4-byte unsigned length, network (big-endian) order


def recv_exactly(sock, n: int) -> bytes:
    """Return exactly n bytes from sock.

    Raise EOFError if the peer closes the connection before n bytes arrive.
    """
    ### BEGIN SOLUTION
    chunks, remaining = [], n
    while remaining:
        # recv() returns whatever has arrived, up to the size asked for; never
        # ask for more than is still missing, or we eat the next message.
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:              # b'' is EOF: without this check the loop spins forever
            raise EOFError(f"peer closed after {n - remaining} of {n} bytes")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
    ### END SOLUTION


def recv_message(sock, max_size: int = 16 * 1024 * 1024):
    """Return the next length-prefixed message from sock.

    Each message is a 4-byte big-endian length, then that many bytes. Return
    None if the peer closed cleanly between messages; raise EOFError if it
    closed part-way through one, and ValueError if the length is over max_size.
    """
    ### BEGIN SOLUTION
    first = sock.recv(HEADER.size)
    if not first:                  # EOF before a header: a clean end, not an error
        return None
    header = first + recv_exactly(sock, HEADER.size - len(first))
    (length,) = HEADER.unpack(header)
    # Check the length before trusting it: a corrupt or hostile peer can claim 4 GiB.
    if length > max_size:
        raise ValueError(f"length prefix says {length:,} bytes, over the {max_size:,}-byte limit")
    return recv_exactly(sock, length)
    ### END SOLUTION
