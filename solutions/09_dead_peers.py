"""Answers to lesson 09's exercises."""
from __future__ import annotations

import socket
import time


def heartbeat(sock, interval: float = 0.2, deadline: float = 0.5, duration: float = 2.0) -> str:
    """Ping the server on sock every `interval` seconds, for `duration` seconds in all.

    Send b"PING\\n"; the server answers b"PONG\\n", which may arrive in pieces and
    after other lines (skip those). Return "dead" as soon as a PING has gone
    `deadline` seconds without its PONG, "closed" if the server closes or resets
    the connection, and "alive" if every PING sent during `duration` was answered.
    """
    ### BEGIN SOLUTION
    start, buffer = time.monotonic(), b""
    while time.monotonic() - start < duration:
        sent_at = time.monotonic()
        try:
            sock.sendall(b"PING\n")
            answered = False
            while not answered:
                # The deadline is for this PING's answer, not for each recv(): a server
                # that chats but never answers must not keep us waiting for ever.
                left = sent_at + deadline - time.monotonic()
                if left <= 0:
                    return "dead"
                sock.settimeout(left)
                try:
                    chunk = sock.recv(4096)
                except socket.timeout:
                    return "dead"
                if not chunk:
                    return "closed"
                buffer += chunk
                while b"\n" in buffer:     # whole lines only: PONG may come in pieces
                    line, _, buffer = buffer.partition(b"\n")
                    answered = answered or line == b"PONG"
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        time.sleep(max(0.0, sent_at + interval - time.monotonic()))
    return "alive"
    ### END SOLUTION


def leaking_servers(rows: list, min_close_wait: int = 3) -> list:
    """Return the listening ports of the servers that leak sockets, sorted.

    `rows` is a table of TCP sockets, one dict per socket, for example
    {"local": 9909, "remote": 50123, "state": "CLOSE_WAIT"} ("remote" is None
    for a listening socket). A server is a row in state LISTEN; its connections
    are the other rows with the same local port. It leaks when at least
    `min_close_wait` of them are in CLOSE_WAIT: their clients hung up, and the
    server never called close(). TIME_WAIT is not a leak, and a CLOSE_WAIT whose
    *remote* port is the server's belongs to a client that forgot to close.
    """
    ### BEGIN SOLUTION
    listening = {row["local"] for row in rows if row["state"] == "LISTEN"}
    # Count by the *local* port: CLOSE_WAIT is on the side that has not closed yet.
    waiting = {port: 0 for port in listening}
    for row in rows:
        if row["state"] == "CLOSE_WAIT" and row["local"] in listening:
            waiting[row["local"]] += 1
    return sorted(port for port, count in waiting.items() if count >= min_close_wait)
    ### END SOLUTION
