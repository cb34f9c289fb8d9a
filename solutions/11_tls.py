"""Answers to lesson 11's exercises."""
from __future__ import annotations

import ssl


def pinned_client_context(cafile: str) -> ssl.SSLContext:
    """A client context for a private service: trust only the CA certificate in cafile
    (not the system's CAs), check the server's certificate and its host name, and speak
    TLS 1.2 or newer.
    """
    ### BEGIN SOLUTION
    # Given a cafile, create_default_context() trusts that file *instead of* the system's
    # store, and keeps the two checks on: CERT_REQUIRED and check_hostname=True.
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
    ### END SOLUTION


def modern_server_context(certfile: str) -> ssl.SSLContext:
    """A server context with the private key and certificate chain in certfile, that
    refuses every client older than TLS 1.2 (TLS 1.0 and 1.1 have known attacks).
    """
    ### BEGIN SOLUTION
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)   # a server's defaults
    # The floor, said out loud: today's default, and it must stay whatever someone asks
    # of "compatibility" (an old client should fail, not pull everyone down with it).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile)
    return context
    ### END SOLUTION
