"""A TLS connection that one thread may read while other threads write (lesson 11).

An ``ssl.SSLSocket`` may not be used that way: OpenSSL forbids two threads inside
one SSL object at once, and a client with a reader thread (``LineClient``) calls
SSL_read in that thread while its caller calls SSL_write in another. So here the
TLS state is an ``ssl.SSLObject`` on two memory buffers (``ssl.MemoryBIO``), the
way asyncio does TLS: it never touches the network itself. Every use of it is
short and under a lock; the socket's recv() and sendall() happen outside the lock,
so a reader waiting for data never blocks a writer::

    socket.recv() -> incoming BIO -> SSLObject.read()   -> plaintext   (the reader)
    plaintext     -> SSLObject.write() -> outgoing BIO  -> socket.sendall() (writers)

It behaves like the socket it wraps: ``recv`` returns b'' at the peer's
close_notify (a clean end) and raises ``ssl.SSLEOFError`` if the TCP connection
ends without one (the stream may have been cut short); ``shutdown(SHUT_WR)`` sends
close_notify, TLS's half-close, and reading goes on.
"""
from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Optional

RECV_SIZE = 65536
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)   # Linux, macOS; elsewhere a plain send


class TLSStream:
    """TLS over a connected socket; the handshake happens here, on the caller's thread."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: Optional[str] = None, server_side: bool = False):
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                    server_hostname=None if server_side else server_hostname)
        self._lock = threading.Lock()      # the SSL object: one thread at a time, never across a wait
        self._sending = threading.Lock()   # ciphertext leaves in the order it was made
        self._early = b""                  # plaintext taken out of TLS before our close_notify
        self._ended = False                # the peer's close_notify was among it
        self._handshake()

    def _handshake(self) -> None:
        while True:
            try:
                with self._lock:
                    self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._flush()    # the alert that tells the peer why (say, "unknown ca")
                raise
        self._flush()

    def _feed(self) -> None:
        """One recv() from the network into the incoming buffer (EOF marks it)."""
        data = self.sock.recv(RECV_SIZE)
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def _flush(self, flags: int = 0) -> None:
        """Send whatever TLS has produced (records, alerts, close_notify), in order."""
        with self._sending:
            with self._lock:
                out = self._outgoing.read()
            if out:
                if flags:
                    self.sock.send(out, flags)
                else:
                    self.sock.sendall(out)

    # --- the socket's interface ---

    def recv(self, size: int = RECV_SIZE) -> bytes:
        """Plaintext, up to size bytes; b'' after the peer's close_notify."""
        while True:
            with self._lock:
                if self._early or self._ended:
                    data, self._early = self._early[:size], self._early[size:]
                    return data
                try:
                    data: Optional[bytes] = self.tls.read(size)
                except ssl.SSLWantReadError:   # a record is not complete yet
                    data = None
                except ssl.SSLZeroReturnError:  # close_notify: the peer ended cleanly
                    data = b""
                produced = self._outgoing.pending
            if produced:                        # reading can make TLS answer (a key update)
                self._flush()
            if data is not None:
                return data
            self._feed()

    def _drain(self) -> None:
        """(Under the lock.) Decrypt whatever the incoming buffer holds into _early."""
        while not self._ended:
            try:
                data = self.tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self._ended = True
                return
            if not data:        # the TCP connection ended with no close_notify (or after ours)
                return
            self._early += data

    def sendall(self, data: bytes) -> None:
        """Encrypt all of data and send it."""
        with self._sending:
            with self._lock:
                view = memoryview(data)
                while view:
                    view = view[self.tls.write(view):]
                out = self._outgoing.read()
            self.sock.sendall(out)

    def shutdown(self, how: int) -> None:
        """SHUT_WR: send close_notify (and a TCP FIN); reading goes on until the peer's.
        SHUT_RDWR: the same, without waiting if the peer is not reading, then shut the socket."""
        with contextlib.suppress(ssl.SSLError, OSError):
            with self._lock:
                # unwrap() sends close_notify, then reads on to find the peer's: data found
                # there is an error (APPLICATION_DATA_AFTER_CLOSE_NOTIFY). So first take out
                # everything already received; what arrives later, recv() reads as usual.
                self._drain()
                with contextlib.suppress(ssl.SSLWantReadError):   # the peer's close_notify comes later
                    self.tls.unwrap()
            self._flush(DONTWAIT if how == socket.SHUT_RDWR else 0)
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def gettimeout(self) -> Optional[float]:
        return self.sock.gettimeout()

    def version(self) -> Optional[str]:
        """The TLS version agreed on ("TLSv1.3")."""
        return self.tls.version()

    def cipher(self):
        return self.tls.cipher()

    def getpeercert(self) -> Optional[dict]:
        return self.tls.getpeercert()

    def __enter__(self) -> "TLSStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
