"""Answers to lesson 04's exercises."""
from __future__ import annotations


def flush(sock, output: bytearray) -> bool:
    """Send as much of output as a non-blocking sock takes right now.

    Remove what was sent from the front of output. Return True once output
    is empty, False if some is left for later. Never wait, never raise
    BlockingIOError.
    """
    ### BEGIN SOLUTION
    while output:
        try:
            sent = sock.send(output)
        except BlockingIOError:          # the buffers are full: try again when writable
            return False
        del output[:sent]                # the key step: keep exactly what was not taken
    return True
    ### END SOLUTION


def read_available(sock) -> tuple[bytes, bool]:
    """Read everything that has arrived on a non-blocking sock, without waiting.

    Return (data, closed): the bytes read (maybe b'') and whether the peer has
    closed its side (recv returned b'').
    """
    ### BEGIN SOLUTION
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:          # nothing more for now: not an error, not EOF
            return b"".join(chunks), False
        if not chunk:                    # b'' is EOF, which is different from "nothing yet"
            return b"".join(chunks), True
        chunks.append(chunk)
    ### END SOLUTION
