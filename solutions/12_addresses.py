"""Answers to lesson 12's exercises."""
from __future__ import annotations

import os
import socket
import stat


def connect_any(addresses, timeout: float = 1.0) -> socket.socket:
    """Try each address in order; return a socket connected to the first that accepts.

    addresses is what socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    returns: (family, type, proto, canonname, sockaddr) tuples. Each attempt
    waits at most timeout seconds, and the socket returned keeps that timeout.
    Close the socket of every attempt that fails. If none connects (or the list
    is empty), raise OSError with a message that names every address tried
    (host and port) and what went wrong there.
    """
    ### BEGIN SOLUTION
    errors = []
    for family, type_, proto, _, sockaddr in addresses:
        sock = socket.socket(family, type_, proto)
        sock.settimeout(timeout)   # per attempt: a silent address costs `timeout`, not minutes
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()           # or every failed attempt leaks a descriptor
            why = exc.strerror or str(exc) or type(exc).__name__   # a timeout has no strerror
            errors.append(f"{sockaddr[0]} port {sockaddr[1]}: {why}")
            continue
        return sock
    # Every error, not only the last: "::1 refused, 127.0.0.1 timed out" is what a person needs to fix it.
    raise OSError("could not connect: " + ("; ".join(errors) if errors else "no addresses to try"))
    ### END SOLUTION


def bind_unix(path: str, timeout: float = 1.0) -> socket.socket:
    """Return an AF_UNIX stream socket bound to path and listening.

    If a socket file is already at path, find out whether a server still uses
    it: if connecting is refused, nobody does (a crashed server left it), so
    remove it and bind. If a server accepts, or anything else happens, raise
    FileExistsError and leave the file alone. If path is something other than a
    socket (a regular file, say), raise FileExistsError and never delete it.
    """
    ### BEGIN SOLUTION
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        # Look before probing: connect() to a regular file is refused too, and
        # "refused" must not become "delete someone's file".
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{path} is not a socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)     # refused: nobody listens; the file is stale
            except FileNotFoundError:
                pass                # gone meanwhile: nothing to remove
            except OSError as exc:  # busy (EAGAIN), no permission...: not provably stale
                raise FileExistsError(f"{path}: {exc}") from None
            else:
                raise FileExistsError(f"{path}: a server is listening there")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock
    ### END SOLUTION
