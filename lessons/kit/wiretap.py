"""A TCP relay that keeps a copy of every byte it passes: what someone on the wire sees.

    tap = Wiretap(server.address)
    with running(tap.serve) as wire:         # connect to wire.address instead of the server
        ...
    tap.bytes_from_client(), tap.bytes_from_server(), tap.chunks

Lesson 11 uses it to show that TLS hides the bytes (and what it does not hide: their
sizes and timing), and to count the handshake's round trips. Each direction runs in
its own thread; a half-close passes through, so does a reset (as a close).
"""
from __future__ import annotations

import contextlib
import socket
import threading

from .server import accept_until

RECV_SIZE = 65536
TO_SERVER, TO_CLIENT = "client → server", "server → client"


class Wiretap:
    """Relay each connection to ``backend`` and record (direction, bytes) as they pass."""

    def __init__(self, backend: tuple, timeout: float = 5.0):
        self.backend, self.timeout = backend, timeout
        self.chunks: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def serve(self, listener, stop, log) -> None:
        """The serve function: one thread per connection until stopped."""
        threads = []
        for conn, _ in accept_until(listener, stop, idle_timeout=self.timeout):
            thread = threading.Thread(target=self._connection, args=(conn, stop), name="wiretap",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(self.timeout)

    def _connection(self, client: socket.socket, stop) -> None:
        with client, contextlib.suppress(OSError), \
                socket.create_connection(self.backend, timeout=self.timeout) as server:
            stop.track(server)
            back = threading.Thread(target=self._pump, args=(server, client, TO_CLIENT), daemon=True,
                                    name="wiretap-back")
            back.start()
            self._pump(client, server, TO_SERVER)
            back.join(self.timeout)

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(RECV_SIZE):
                with self._lock:
                    self.chunks.append((direction, data))
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)          # pass the half-close on
        except OSError:
            for sock in (source, sink):            # one side failed: end both
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def bytes_from_client(self) -> bytes:
        with self._lock:
            return b"".join(data for direction, data in self.chunks if direction == TO_SERVER)

    def bytes_from_server(self) -> bytes:
        with self._lock:
            return b"".join(data for direction, data in self.chunks if direction == TO_CLIENT)

    def flights(self) -> list[tuple[str, int]]:
        """Consecutive chunks in one direction merged: (direction, bytes). In a handshake,
        each change of direction is half a round trip."""
        with self._lock:
            merged: list[list] = []
            for direction, data in self.chunks:
                if merged and merged[-1][0] == direction:
                    merged[-1][1] += len(data)
                else:
                    merged.append([direction, len(data)])
        return [(direction, size) for direction, size in merged]
