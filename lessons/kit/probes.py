"""Careless and hostile clients run against a serve function, and what they leave behind, measured.

For "Break it" sections that show a server's real bugs live. Each probe runs
the server in a background thread, plays one kind of client, and returns
what happened as plain values (no ports, no timings), so a notebook shows the
same thing on every run:

- :func:`replies`: everything a server answers to one write.
- :func:`polite_clients`: clients that send, read the reply and close. Are the
  server's sockets closed, or left in CLOSE_WAIT? How many descriptors are
  still open? How many did the garbage collector have to close?
- :func:`send_and_close`: a client that sends and closes at once (as lesson
  02's echo client and ``printf hi | nc -N`` do), while another waits its turn.
- :func:`urgent_byte`: a client that sends one byte of TCP urgent data, which
  select() reports as "exceptional".

The TCP states come from the operating system through psutil (what ``ss -tan``,
``netstat -an`` or ``lsof -iTCP`` show from a shell). Without psutil the probes
still count descriptors, and say that they cannot show states.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import os
import socket
import time
import traceback
import warnings
from typing import Callable, Optional

from .adversary import connect
from .server import POLL_INTERVAL, BackgroundServer, listen, running

try:
    import psutil
except ImportError:   # declared in requirements.txt; the probes say what is missing without it
    psutil = None

NO_STATES = "psutil is not installed: TCP states cannot be shown (pip install psutil)"


def tcp_states(port: int) -> Optional[collections.Counter]:
    """How many of this process's TCP sockets on local ``port`` are in each state, or None without psutil."""
    if psutil is None:
        return None
    process = psutil.Process()
    read = getattr(process, "net_connections", None) or process.connections   # psutil < 6
    return collections.Counter(c.status for c in read(kind="tcp") if c.laddr and c.laddr[1] == port)


def open_descriptors() -> Optional[int]:
    """How many file descriptors this process has open (None where the OS does not say)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(where)) - 1   # listing the directory opened one more
    return None


@contextlib.contextmanager
def closed_by_the_collector():
    """Count the sockets that the garbage collector closed inside the block: each one
    was dropped by code that never called close(), and Python says so with a ResourceWarning
    (hidden unless warnings are on: ``python -W default`` or ``-X dev``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        found: list = []
        yield found
        found.extend(w for w in caught if issubclass(w.category, ResourceWarning)
                     and "socket" in str(w.message))


def how_it_ended(server: BackgroundServer) -> str:
    """'still running', or the exception that ended the server thread, in one line.
    Clears the dead thread's frames, so the sockets it held are let go now."""
    if server.thread.is_alive() or not server.errors:
        return "still running"
    error = server.errors[0]
    traceback.clear_frames(error.__traceback__)
    return f"{type(error).__name__}: {error}"


def replies(serve: Callable, data: bytes, quiet: float = 0.3) -> bytes:
    """One client sends ``data`` in one write, then collects all that comes back
    until ``quiet`` seconds pass without a byte."""
    with closed_by_the_collector(), running(serve) as server:
        with connect(server.address, timeout=quiet) as sock:
            sock.sendall(data)
            got = bytearray()
            with contextlib.suppress(socket.timeout):
                while chunk := sock.recv(65536):
                    got += chunk
    gc.collect()
    return bytes(got)


def polite_clients(serve: Callable, clients: int = 20, every: int = 5,
                   message: bytes = b"hello") -> dict:
    """``clients`` clients one after another: connect, send, read the reply, close.
    Every ``every`` clients, count the descriptors the server still holds open;
    at the end, its sockets' TCP states and how many the garbage collector closed."""
    with closed_by_the_collector() as collected:
        gc.collect()
        with running(serve) as server:
            time.sleep(2 * POLL_INTERVAL)   # let it open what it needs for itself (a selector)
            before = open_descriptors()
            replies, held = collections.Counter(), []
            for number in range(1, clients + 1):
                with connect(server.address, timeout=2) as sock:
                    sock.sendall(message)
                    replies[sock.recv(1024)] += 1
                if number % every == 0:
                    _settle(server.port)
                    held.append(None if before is None else open_descriptors() - before)
            states = tcp_states(server.port)
        gc.collect()
    if states is not None:
        states -= collections.Counter({"LISTEN": 1})
    return {"replies": dict(replies),
            f"descriptors held after every {every} clients": held,
            "server sockets by TCP state": NO_STATES if states is None else dict(sorted(states.items())),
            "sockets the garbage collector closed": len(collected)}


def _settle(port: int, timeout: float = 2.0) -> None:
    """Wait until the clients' FINs have reached the server's sockets, then give the
    server a moment to act on them (a state changes a moment after its cause)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = tcp_states(port)
        if states is None or not states.get("ESTABLISHED"):
            break
        time.sleep(0.02)
    time.sleep(3 * POLL_INTERVAL)


def send_and_close(serve: Callable, message: bytes = b"bye") -> dict:
    """A client sends and closes its side at once while another waits its turn, both before
    the server starts (so the order is the same on every run). How does the server end up?"""
    with closed_by_the_collector(), listen() as listener, contextlib.ExitStack() as stack:
        address = listener.getsockname()[:2]
        waiting = stack.enter_context(connect(address, timeout=0.5))
        quick = stack.enter_context(connect(address, timeout=0.5))
        quick.sendall(message)
        quick.shutdown(socket.SHUT_WR)
        server = BackgroundServer(serve, listener).start()
        server.thread.join(0.5)   # a healthy server is still running after this
        waiting.sendall(b"my turn?")
        got = _reply(waiting)
        ended = how_it_ended(server)
        server.shutdown(reraise=False)
    return {"the server": ended, "the client waiting its turn got": got}


def urgent_byte(serve: Callable) -> dict:
    """A client sends one byte of urgent data (MSG_OOB), then an ordinary message."""
    with closed_by_the_collector():
        server = running(serve).start()
        with connect(server.address, timeout=0.5) as sock:
            sock.send(b"!", socket.MSG_OOB)
            sock.sendall(b"still there?")
            got = _reply(sock)
        ended = how_it_ended(server)
        server.shutdown(reraise=False)
        gc.collect()
    return {"the server": ended, "the client got": got}


def _reply(sock: socket.socket) -> str:
    """What a client got: the reply, EOF, a reset, or nothing within its timeout."""
    try:
        data = sock.recv(1024)
    except socket.timeout:
        return f"nothing within {sock.gettimeout():g} s"
    except ConnectionResetError:
        return "a reset"
    return repr(data) if data else "EOF: the server closed the connection"
