"""Run a lesson's server in a background thread, and stop it cleanly.

Every server in the workbook is a plain function with one shape::

    def serve(listener: socket.socket, stop: Stopper, log: Transcript) -> None

It runs until ``stop`` is set. The same function runs in the foreground for
``python -m lessons.NN serve`` and in a daemon thread for notebooks, tests and
demos, through :func:`running`::

    with running(echo.serve) as server:     # binds 127.0.0.1, port 0
        talk_to(server.address)              # the real (host, port)
    # here the server has stopped and its thread has been joined

Stopping a thread that is blocked in accept() or recv() is the hard part.
Python cannot interrupt another thread, and closing a socket that another
thread is blocked on does not wake it on Linux. So, like socketserver's
``poll_interval``, the accept loop wakes every ``POLL_INTERVAL`` seconds to
look at the stop flag, and the stopper shuts down (``SHUT_RDWR``) every
connection it handed out, which makes a blocked recv() return b'' at once.
"""
from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from .transcript import LISTEN, SERVER, Transcript

POLL_INTERVAL = 0.05   # how often an idle accept loop looks at the stop flag
JOIN_TIMEOUT = 5.0     # how long stopping may take before we call it a bug


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
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._event.wait(timeout)

    def track(self, conn: socket.socket) -> socket.socket:
        with self._lock:
            if len(self._conns) >= self._prune_at:   # forget the ones already closed
                self._conns = {c for c in self._conns if c.fileno() != -1}
                self._prune_at = max(64, 2 * len(self._conns))
            self._conns.add(conn)
        if self._event.is_set():  # stopped while we were accepting it
            _shutdown_quietly(conn)
        return conn

    def set(self) -> None:
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


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = socket.SOMAXCONN,
           family: int = socket.AF_INET) -> socket.socket:
    """A listening TCP socket. SO_REUSEADDR lets a restarted server rebind at
    once, while the old connections sit in TIME_WAIT (lesson 01 shows why)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR") and not _is_windows():
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_udp(host: str = "127.0.0.1", port: int = 0, family: int = socket.AF_INET) -> socket.socket:
    """A UDP socket bound to (host, port): a datagram server needs no listen() or accept()."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bound_socket(transport: str, host: str, port: int, family: int = socket.AF_INET) -> socket.socket:
    if transport == "udp":
        return bind_udp(host, port, family)
    return listen(host, port, family=family)


def _is_windows() -> bool:
    # On Windows SO_REUSEADDR lets a second server steal a port that is in use,
    # which is not what we want; binding over TIME_WAIT already works there.
    import sys
    return sys.platform == "win32"


def accept_until(listener: socket.socket, stop: Stopper) -> Iterator[tuple[socket.socket, tuple]]:
    """Yield (conn, address) for each new client until stop is set.

    Accepted sockets are blocking, whatever the listener's timeout, and are
    tracked by the stopper so that stopping wakes their handlers.
    """
    listener.settimeout(POLL_INTERVAL)
    while not stop.is_set():
        try:
            conn, addr = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            if stop.is_set():  # the listener was closed under us while stopping
                return
            raise
        conn.settimeout(None)
        yield stop.track(conn), addr


@dataclass
class RunningServer:
    address: tuple
    log: Transcript
    stop: Stopper
    thread: threading.Thread
    errors: list = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]


@contextlib.contextmanager
def running(serve: Callable[[socket.socket, Stopper, Transcript], None],
            host: str = "127.0.0.1", port: int = 0, log: Optional[Transcript] = None,
            name: str = "server", transport: str = "tcp") -> Iterator[RunningServer]:
    """Run ``serve`` in a daemon thread on a fresh port; stop and join it on exit.

    An exception that ends the server thread is kept in ``server.errors`` and
    raised again when the block exits, so a crashed server never goes unnoticed.
    """
    log = log if log is not None else Transcript()
    listener = bound_socket(transport, host, port)   # for UDP, the one socket it serves on
    stop = Stopper()
    errors: list = []

    def target() -> None:
        try:
            serve(listener, stop, log)
        except BaseException as exc:  # kept and re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    server = RunningServer(listener.getsockname()[:2], log, stop, thread, errors)
    if transport == "tcp":
        log.record(SERVER, LISTEN)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT)
        listener.close()
        if not thread.is_alive():
            stop.close_all()
        if thread.is_alive():
            raise RuntimeError(f"{name} thread did not stop within {JOIN_TIMEOUT:g} s")
    if errors:
        raise errors[0]


def raise_fd_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise this process's soft limit on open files towards ``wanted`` (never past
    the hard limit); return (old, new). Every socket is an open file, so a
    server for thousands of clients needs more than the usual 1024 (256 on macOS)."""
    try:
        import resource
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
