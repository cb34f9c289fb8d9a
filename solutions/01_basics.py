"""Answers to lesson 01's exercises."""
from __future__ import annotations

import socket


def fetch_greeting(host: str, port: int, timeout: float = 1.0) -> str:
    """Connect to (host, port) and return the server's greeting line (up to its
    newline, however many pieces it arrives in), stripped.

    Return "refused" if nobody is listening there, and "timeout" if the server
    accepts but says nothing within ``timeout`` seconds.
    """
    ### BEGIN SOLUTION
    try:
        # The timeout covers connect() and every recv() on this socket: without
        # one, a silent server holds us for as long as it likes.
        with socket.create_connection((host, port), timeout=timeout) as sock:
            data = b""
            while not data.endswith(b"\n"):   # a line may arrive in pieces: read to its end
                chunk = sock.recv(1024)
                if not chunk:          # the server hung up: take what we have
                    break
                data += chunk
    except ConnectionRefusedError:     # nothing listens: the OS answered with a reset
        return "refused"
    except socket.timeout:             # TimeoutError: waited, nothing came
        return "timeout"
    return data.decode("utf-8", errors="replace").strip()
    ### END SOLUTION


def make_listener(port: int, host: str = "127.0.0.1") -> socket.socket:
    """Return a TCP socket listening on (host, port); port 0 picks a free port.

    It must be possible to call this again with the same port right after a
    previous listener on it served a client and closed; but not while another
    listener still listens there (that must fail with EADDRINUSE).
    """
    ### BEGIN SOLUTION
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # The key step: without SO_REUSEADDR, bind() fails with EADDRINUSE for as
        # long as an old connection on this port sits in TIME_WAIT (up to minutes).
        # Not SO_REUSEPORT: it lets a second server bind the port while the first
        # still listens, and the kernel then splits new clients between them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
    except BaseException:
        sock.close()               # never leak the socket when bind fails
        raise
    return sock
    ### END SOLUTION
