"""TLS pieces for lesson 11: a throwaway certificate authority, stable names for TLS
errors, and a reader of TLS records as they cross the wire.

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
    the full text and the reason names of other errors change between versions)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{type(exc).__name__}: {exc.verify_message} (verify code {exc.verify_code})"
    if isinstance(exc, ssl.SSLError):
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
