"""TLS pieces for lesson 11: a throwaway certificate authority, stable names for TLS
errors, a reader of TLS records as they cross the wire, and TLS in memory (a client and
a server joined by memory BIOs, no network) to count a handshake's flights and a record's bytes.

No certificate or key is ever committed: :class:`Authority` makes a fresh CA and
its certificates at run time (with ``trustme``, a package made for exactly this)
and keeps the files it writes in a temporary directory that it removes::

    with Authority() as authority:
        authority.cafile       # the CA certificate, for clients: "trust what this signed"
        authority.certfile     # the server's key and certificate chain (localhost, 127.0.0.1, ::1)
        authority.expired      # the same names, but expired yesterday (a trustme.LeafCert)

A real server gets its certificate from a public CA (Let's Encrypt, say) and clients
trust it through the system's store; the mechanics are the same.
"""
from __future__ import annotations

import datetime
import pathlib
import ssl
import struct
import tempfile

import trustme

from .check import describe_error

NAMES = ("localhost", "127.0.0.1", "::1")   # what the server's certificate vouches for


class Authority:
    """A certificate authority made now, the certificates it signs, and their files."""

    def __init__(self, names=NAMES, organization: str = "socket workbook (throwaway)"):
        self.ca = trustme.CA(organization_name=organization)
        self.server = self.ca.issue_cert(*names)
        now = datetime.datetime.now(datetime.timezone.utc)
        self.expired = self.ca.issue_cert(*names, not_before=now - datetime.timedelta(days=30),
                                          not_after=now - datetime.timedelta(days=1))
        self._dir = tempfile.TemporaryDirectory(prefix="workbook-tls-")
        self.directory = pathlib.Path(self._dir.name)
        self.cafile = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.cafile))
        self.certfile = self.directory / "server.pem"      # private key, then the chain
        self.server.private_key_and_cert_chain_pem.write_to_path(str(self.certfile))
        self.expired_certfile = self.directory / "expired.pem"
        self.expired.private_key_and_cert_chain_pem.write_to_path(str(self.expired_certfile))

    def close(self) -> None:
        """Remove the files (the key included)."""
        self._dir.cleanup()

    def __enter__(self) -> "Authority":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def explain(exc: BaseException) -> str:
    """A TLS failure in words that stay the same across OpenSSL versions: the exception's
    class, and for a certificate the X.509 verify code and its message (those are stable;
    the full text and the reason names of other errors change between versions). An alert
    from the peer is named too: alert names come from the TLS standards."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{type(exc).__name__}: {exc.verify_message} (verify code {exc.verify_code})"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if "ALERT_" in reason:   # the peer said why, in a TLS alert: names fixed by the RFCs
            alert = reason.split("ALERT_", 1)[1].lower().replace("_", " ")
            return f"{type(exc).__name__}: the peer's alert: {alert}"
        return type(exc).__name__
    return describe_error(exc)


# --- Records: what an eavesdropper sees ---

RECORD_HEADER = struct.Struct("!BHH")   # content type, legacy version, length: 5 bytes
RECORD_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


def records(stream: bytes) -> list[tuple[str, int]]:
    """Split one direction of a TLS connection into (record type, payload length).
    In TLS 1.3 everything after the hellos is sent as "application_data": the real
    type is inside, encrypted."""
    out, at = [], 0
    while at + RECORD_HEADER.size <= len(stream):
        kind, _, length = RECORD_HEADER.unpack_from(stream, at)
        out.append((RECORD_TYPES.get(kind, f"not TLS ({kind})"), length))
        if kind not in RECORD_TYPES:
            break
        at += RECORD_HEADER.size + length
    return out


# --- TLS in memory: a client and a server joined by memory BIOs, no network, every byte counted ---

class InMemory:
    """A client and a server SSLObject, each between two MemoryBIOs; ``move()`` carries bytes."""

    def __init__(self, client_context: ssl.SSLContext, server_context: ssl.SSLContext,
                 server_hostname: str = "localhost"):
        self.bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("client", "server")}
        self.client = client_context.wrap_bio(*self.bios["client"], server_hostname=server_hostname)
        self.server = server_context.wrap_bio(*self.bios["server"], server_side=True)

    def move(self, sender: str) -> bytes:
        """Take what ``sender`` ("client" or "server") has written and hand it to the other side."""
        data = self.bios[sender][1].read()
        self.bios["server" if sender == "client" else "client"][0].write(data)
        return data


def _finished(handshake) -> bool:
    try:
        handshake()
    except ssl.SSLWantReadError:   # waiting for the other side's next flight
        return False
    return True


def handshake_flights(client_context: ssl.SSLContext, server_context: ssl.SSLContext,
                      server_hostname: str = "localhost") -> tuple[list[tuple[str, bytes]], InMemory]:
    """Run a handshake in memory. Returns the flights up to the moment the client may send
    data, as (sender, bytes); each server flight the client waits for is one round trip.
    Then the pair, handshake done (the server has read the client's last flight)."""
    pair, flights = InMemory(client_context, server_context, server_hostname), []
    while True:
        done = _finished(pair.client.do_handshake)
        data = pair.move("client")
        if data:
            flights.append(("client", data))
        if done:
            break
        _finished(pair.server.do_handshake)
        data = pair.move("server")
        if not data:
            raise ssl.SSLError("the handshake made no progress")
        flights.append(("server", data))
    _finished(pair.server.do_handshake)
    return flights, pair


def on_the_wire(pair: InMemory, plaintext: bytes) -> bytes:
    """What the client sends for ``plaintext``: the TLS records, header and all."""
    pair.move("server")            # what the server had queued (TLS 1.3's session tickets)
    pair.client.write(plaintext)
    return pair.move("client")
