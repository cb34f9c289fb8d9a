"""Run a lesson's server in a background thread, and stop it cleanly.

Every server in the workbook is a plain function with one shape::

    def serve(listener: socket.socket, stop: Stopper, log: Transcript) -> None

It runs until ``stop`` is set. One class, :class:`BackgroundServer`, runs it in
a daemon thread, for notebooks, tests and demos (through :func:`running`) and
for ``python -m lessons.NN serve`` in the foreground (``kit.cli``)::

    with running(echo.serve) as server:     # binds 127.0.0.1, port 0
        talk_to(server.address)              # the real (host, port)
    # here the server has stopped and its thread has been joined

Stopping a thread that is blocked in accept() or recv() is the hard part.
Python cannot interrupt another thread, and closing a socket that another
thread is blocked on does not wake it on Linux. So, like socketserver's
``poll_interval``, the accept loop wakes every ``POLL_INTERVAL`` seconds to
look at the stop flag, and the stopper shuts down (``SHUT_RDWR``) every
connection it handed out, which makes a blocked recv() return b'' at once.
(Lesson 09 teaches these techniques by hand.)
"""
from __future__ import annotations

import contextlib
import errno
import socket
import sys
import threading
import time
from typing import Callable, Iterator, Optional

from .transcript import ERROR, LISTEN, NOTE, SERVER, Transcript

POLL_INTERVAL = 0.05   # how often an idle accept loop looks at the stop flag
JOIN_TIMEOUT = 5.0     # how long stopping may take before we call it a bug
ACCEPT_BACKOFF = 0.1   # out of descriptors: wait this long before accepting again

# accept() fails with these when the process (EMFILE) or the system (ENFILE) has
# no descriptor left for the new connection, or the kernel is short of memory.
OUT_OF_DESCRIPTORS = {getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
                      if hasattr(errno, name)}
# ... and with these when the client gave up between its handshake and our accept(), or
# its connection failed there: Linux's accept(2) passes such a connection's network error
# on ("treat them like EAGAIN by retrying"), and EPERM when a firewall refused it. (Not its
# EOPNOTSUPP: that is also what accept() on a socket that is not a listener says, for ever.)
CLIENT_GAVE_UP = {getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ECONNRESET", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
    "EHOSTUNREACH", "ENETUNREACH", "EPERM") if hasattr(errno, name)}


class Stopper:
    """A stop flag that also wakes up connections blocked in recv()."""

    def __init__(self) -> None:
        self._event = threading.Event()
        # Strong references, so that a connection a buggy server dropped without
        # closing is still closed at stop (instead of leaking until garbage collection).
        self._conns: set[socket.socket] = set()
        self._prune_at = 64
        self._lock = threading.Lock()

    def is_set(self) -> bool:
        """Whether the server has been asked to stop."""
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleep until asked to stop or ``timeout`` passes; return is_set()."""
        return self._event.wait(timeout)

    def track(self, conn: socket.socket) -> socket.socket:
        """Remember a connection, so that stopping can wake whoever is blocked on it."""
        with self._lock:
            if len(self._conns) >= self._prune_at:   # forget the ones already closed
                self._conns = {c for c in self._conns if c.fileno() != -1}
                self._prune_at = max(64, 2 * len(self._conns))
            self._conns.add(conn)
        if self._event.is_set():  # stopped while we were accepting it
            _shutdown_quietly(conn)
        return conn

    def set(self) -> None:
        """Ask the server to stop, and shut down every tracked connection."""
        self._event.set()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown_quietly(conn)

    def close_all(self) -> None:
        """Close what a finished server left open (a crashed handler, say).
        Only call this once the server's threads have been joined."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()


def _shutdown_quietly(conn: socket.socket) -> None:
    if conn.fileno() == -1:  # already closed by its owner
        return
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


# --- Sockets to serve on ---

def resolve(host: str, port: int, kind: int = socket.SOCK_STREAM) -> tuple[int, tuple]:
    """(family, address) to bind for a host name or literal: IPv4, IPv6 or a name like localhost."""
    if not host:
        raise ValueError("an empty host would mean every interface; say 0.0.0.0 or :: if you mean it")
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind, flags=socket.AI_PASSIVE)[0]
    return family, address


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """A listening TCP socket. SO_REUSEADDR lets a restarted server rebind at
    once, while the old connections sit in TIME_WAIT (lesson 01 shows why)."""
    family, address = resolve(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR") and sys.platform != "win32":
            # (On Windows SO_REUSEADDR lets a second server steal a port in use;
            # binding over TIME_WAIT already works there without it.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_udp(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A UDP socket bound to (host, port): a datagram server needs no listen() or accept()."""
    family, address = resolve(host, port, socket.SOCK_DGRAM)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_socket(transport: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a bound UDP socket, on (host, port)."""
    return bind_udp(host, port) if transport == "udp" else listen(host, port)


# --- Accepting clients ---

class OutOfDescriptors:
    """What a server does when accept() finds no descriptor for a new client.

    The kernel keeps the new connection waiting in the listen queue, so the
    right answer is to keep serving the clients we have, try again a little
    later, and say so once (not once per attempt, which would flood the log
    while the condition lasts), then once more when it is over.
    """

    def __init__(self, log: Optional[Transcript] = None):
        self.log = log
        self.starved = False
        self.resume_at = 0.0

    def failed(self, exc: OSError) -> bool:
        """True if accept() failed for want of descriptors (then wait before the next try)."""
        if exc.errno not in OUT_OF_DESCRIPTORS:
            return False
        if not self.starved and self.log is not None:
            self.log.record(SERVER, ERROR, detail=f"out of file descriptors ({errno.errorcode[exc.errno]}): "
                                                  "new clients wait until some leave")
        self.starved = True
        self.resume_at = time.monotonic() + ACCEPT_BACKOFF
        return True

    def paused(self) -> bool:
        """Whether to leave the listener alone for now (an event loop stops watching it)."""
        return time.monotonic() < self.resume_at

    def accepted(self) -> None:
        """A new client got a descriptor: the shortage, if there was one, is over."""
        if self.starved:
            self.starved = False
            if self.log is not None:
                self.log.record(SERVER, NOTE, detail="descriptors free again: accepting new clients")


def accept_until(listener: socket.socket, stop: Stopper, log: Optional[Transcript] = None,
                 idle_timeout: Optional[float] = None) -> Iterator[tuple[socket.socket, tuple]]:
    """Yield (conn, address) for each new client until stop is set.

    Each accepted socket gets ``idle_timeout`` (None: wait forever), so that a
    recv() or send() that waits longer raises socket.timeout: a client that
    goes silent cannot hold its handler for ever. Accepted sockets are tracked
    by the stopper, so that stopping wakes their handlers. Running out of file
    descriptors pauses accepting instead of ending the server.
    """
    listener.settimeout(POLL_INTERVAL)
    shortage = OutOfDescriptors(log)
    while not stop.is_set():
        try:
            conn, addr = listener.accept()
        except socket.timeout:
            continue
        except OSError as exc:
            if stop.is_set():  # the listener was closed under us while stopping
                return
            if shortage.failed(exc):
                stop.wait(ACCEPT_BACKOFF)
                continue
            if exc.errno in CLIENT_GAVE_UP:
                continue
            raise
        shortage.accepted()
        conn.settimeout(idle_timeout)
        yield stop.track(conn), addr


# --- Running a server ---

class BackgroundServer:
    """A serve() function running in a daemon thread on its own socket.

    ``start()`` starts it; ``shutdown()`` sets the stop flag, joins the thread,
    closes the socket and whatever the server left open, and raises again an
    exception that ended the server thread, so a crash never goes unnoticed.
    As a context manager it does both.
    """

    def __init__(self, serve: Callable[[socket.socket, Stopper, Transcript], None],
                 listener: socket.socket, log: Optional[Transcript] = None, name: str = "server",
                 transport: str = "tcp"):
        self.serve, self.listener, self.transport = serve, listener, transport
        self.log = log if log is not None else Transcript()
        self.stop = Stopper()
        self.errors: list[BaseException] = []
        # What a client connects to: (host, port), or a Unix socket's path.
        unix = getattr(socket, "AF_UNIX", None)
        self.address = listener.getsockname() if listener.family == unix else listener.getsockname()[:2]
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def _run(self) -> None:
        try:
            self.serve(self.listener, self.stop, self.log)
        except BaseException as exc:  # kept, and raised again in the caller's thread
            self.errors.append(exc)
            self.stop.set()

    def start(self) -> "BackgroundServer":
        """Start serving in the background."""
        if self.transport == "tcp":
            self.log.record(SERVER, LISTEN)
        self.thread.start()
        return self

    def shutdown(self, reraise: bool = True) -> None:
        """Stop, join, clean up; raise the server's own exception if it crashed."""
        self.stop.set()
        self.thread.join(JOIN_TIMEOUT)
        self.listener.close()
        if self.thread.is_alive():
            raise RuntimeError(f"{self.thread.name} thread did not stop within {JOIN_TIMEOUT:g} s")
        self.stop.close_all()
        if reraise and self.errors:
            raise self.errors[0]

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.shutdown()


def running(serve: Callable[[socket.socket, Stopper, Transcript], None],
            host: str = "127.0.0.1", port: int = 0, log: Optional[Transcript] = None,
            name: str = "server", transport: str = "tcp") -> BackgroundServer:
    """Run ``serve`` in a daemon thread on a fresh port; use it in a ``with`` block.

    An exception that ends the server thread is raised again when the block exits.
    """
    listener = bound_socket(transport, host, port)   # for UDP, the one socket it serves on
    return running_on(listener, serve, log, name, transport)


def running_on(listener: socket.socket, serve: Callable[[socket.socket, Stopper, Transcript], None],
               log: Optional[Transcript] = None, name: str = "server", transport: str = "tcp") -> BackgroundServer:
    """Like :func:`running`, on a socket already bound (and listening) of any family:
    IPv6, dual stack, a Unix socket path. The server owns the socket from here on."""
    try:
        return BackgroundServer(serve, listener, log, name, transport)
    except BaseException:
        listener.close()
        raise


def raise_fd_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit on open files towards ``wanted`` (never past
    the hard limit); return (old, new). Every socket is an open file, so a
    server for thousands of clients needs more than the usual 1024 (256 on macOS)."""
    try:
        import resource   # Unix only: imported here so that the kit still loads on Windows
    except ImportError:   # Windows: no such limit to raise
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return (soft, target)
        except (ValueError, OSError):
            pass
    return (soft, soft)


def fd_limit() -> Optional[int]:
    """This process's soft limit on open files, or None where there is none to read."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft
