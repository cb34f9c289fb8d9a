"""Answer to lesson 06's exercise: stop-and-wait over UDP."""
from __future__ import annotations

import socket
import struct
import time

SEQ = struct.Struct("!I")   # 4-byte sequence number, network byte order


def reliable_request(sock, message: bytes, seq: int, timeout: float = 0.1, retries: int = 20) -> bytes:
    """Send SEQ + message on a connected UDP socket; return the reply's message.

    The reply is the datagram that starts with the same 4-byte sequence number
    (struct "!I"); drop any other. Resend after ``timeout`` seconds of silence,
    at most ``retries`` times, then raise TimeoutError.
    """
    ### BEGIN SOLUTION
    datagram = SEQ.pack(seq) + message
    for _ in range(retries + 1):
        sock.send(datagram)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)          # never wait past this try's deadline
            try:
                reply = sock.recv(65536)   # big enough for any datagram
            except socket.timeout:
                break
            # The key step: a reply for another sequence number is a duplicate or a
            # late answer to an earlier request. Ignore it and keep waiting.
            if reply[:SEQ.size] == datagram[:SEQ.size]:
                return reply[SEQ.size:]
    raise TimeoutError(f"no reply to request {seq} after {retries + 1} tries")
    ### END SOLUTION
