"""A fast single-threaded echo server: lesson 05's selectors loop with the Python work per message cut down.

    python -m lessons.kit.fastecho --port 0           # prints "listening on HOST:PORT"; Ctrl-C stops it
    python -m lessons.kit.fastecho --port 0 --splice  # the bytes never leave the kernel (Linux)

Same contract as every echo server in the workbook (lesson 02): every byte
comes back, whatever the size; after the client's EOF the server closes once
all of the echo is sent; a reset ends only that connection; a client that
never reads holds up nobody. Same shape too: ``serve(listener, stop, log)``.

Lesson 05's server is written to be read: a ``Connection`` object per client,
``readable()`` and ``writable()`` methods, the selectors module, an event in
the transcript for every recv and send. Each of those is Python work for every
message, and on loopback the kernel's part of an echo takes only a few
microseconds, so they add up. This variant does the same work with less
Python per message. Each change was measured on its own, with a profile
behind it (``benchmarks/fast_echo.py``; ``benchmarks/RESULTS.md`` has what
each bought):

1. ``select.epoll`` directly instead of ``selectors``: ``poll()`` returns plain
   ``(fd, events)`` pairs; no ``SelectorKey`` is looked up for each event.
2. A straight path for the common event, a message from a client with no echo
   pending: read it, send those same bytes back, done; no output buffer to
   append to and trim. Backpressure needs no bookkeeping: a client whose echo
   did not all fit in its socket buffer is watched for writing only, and not
   read again until the rest is sent. It holds at most one read of server
   memory, and the kernel's socket buffers do the queueing.
3. The transcript records accepts, EOFs, errors and closes, not each recv and
   send: even a record() that keeps nothing is a Python call per message.
4. Descriptors, not objects: ``os.read(fd)`` and ``os.write(fd)`` on the
   descriptor epoll returns are the same system calls as ``recv`` and
   ``send``, without a dictionary lookup and a method lookup first. Every
   function the loop calls is bound to a local name once.
5. Less per wake-up: a 64-event buffer (``poll()`` allocates one on every
   call), the stop flag read every 16 wake-ups instead of every one, and the
   event mask alone telling the common case apart (see ``serve_epoll``).

What is left per message: two system calls, a share of one ``epoll_wait``,
about 45 bytecodes, and, in C, the GIL released and taken back around each
system call, a tuple per event, and the 64 KiB that ``os.read`` allocates and
shrinks. Most of the time of an echo on loopback is now the kernel's.

6. Opt-in, ``serve_splice``: ``os.splice`` moves each message from the socket
   into a pipe and back out to the socket, so no bytes object is made at all:
   about a quarter less Python-side work, the same kernel work, and one more
   invariant to keep (see its docstring).

An idle timeout (``idle_timeout``, as lesson 05's ``--idle-timeout``) costs
one store per event, of a small integer in a list (no clock read): the number
of the last look for quiet clients, which runs between bursts of events, a
few times per timeout. A client is let go once it has had no event for that
many looks: after the timeout, and at most about half as long again later.

Where ``select.epoll`` is missing (macOS, Windows) the same loop runs on
``selectors.DefaultSelector`` (kqueue, poll or select): slower, same contract.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import selectors
import socket
import time
from typing import Optional

from .server import CLIENT_GAVE_UP, POLL_INTERVAL, OutOfDescriptors, raise_fd_limit
from .transcript import ACCEPT, CLOSE, EOF, ERROR, SERVER, Transcript

RECV_SIZE = 65536      # ask for a lot: a read returns what has arrived, up to this
MAX_EVENTS = 64        # events taken per epoll_wait: the buffer for them is allocated on each call
BETWEEN_STOP_CHECKS = range(16)   # wake-ups between two looks at the stop flag, when busy
SWEEP_EVERY = 1.0      # seconds between two looks for idle clients (at most)


def serve(listener: socket.socket, stop, log: Transcript, idle_timeout: Optional[float] = None) -> None:
    """Echo every client on one thread, with epoll where the platform has it. A client that
    sends nothing, or takes nothing, for ``idle_timeout`` seconds (None: never) is let go."""
    if hasattr(select, "epoll"):
        serve_epoll(listener, stop, log, idle_timeout)
    else:
        serve_portable(listener, stop, log, idle_timeout)


class Clients:
    """Everything but the common event, shared by the loops: accept, flush, close, and the
    slower chores (letting idle clients go, accepting again after a shortage of descriptors)."""

    def __init__(self, listener: socket.socket, log: Transcript, poller, IN: int, OUT: int, LISTENER: int,
                 idle_timeout: Optional[float] = None):
        self.listener, self.log = listener, log
        self.poller = poller                           # epoll or a selector: same three methods
        self.IN, self.OUT, self.LISTENER = IN, OUT, LISTENER   # what to watch clients and listener for
        self.socks: dict[int, socket.socket] = {}      # fd -> the socket that owns it
        self.names: dict[int, str] = {}                # fd -> "client N", for the transcript
        self.pending: dict[int, bytes] = {}            # fd -> echo not yet sent
        # heard[fd]: the tick of that descriptor's last event. The loops set it, one store per
        # event into a list indexed by descriptor (cheaper than a dict); chores() counts ticks
        # (looks for quiet clients) and lets go of the quiet ones.
        self.heard: list[int] = [0] * (listener.fileno() + 1)
        self.tick = 0
        self.idle_timeout = idle_timeout or None
        self.sweep_every = min(SWEEP_EVERY, self.idle_timeout / 4) if self.idle_timeout else SWEEP_EVERY
        self.next_sweep = time.monotonic() + self.sweep_every
        self.accepted = 0
        self.paused = False                            # out of descriptors: listener not watched
        self.shortage = OutOfDescriptors(log)          # says so once, and when it is over

    def accept_all(self) -> None:
        """Take every client waiting in the backlog: under load many arrive at once."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GAVE_UP:         # it reset before we got to it
                    continue
                if not self.shortage.failed(exc):
                    raise
                # Out of descriptors: stop watching the listener until a client leaves or
                # a moment has passed (chores()), rather than waking up for it meanwhile.
                self.poller.unregister(self.listener.fileno())
                self.paused = True
                return
            self.shortage.accepted()
            self.accepted += 1
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # echo each message at once
            fd = sock.fileno()
            self.socks[fd] = sock
            self.names[fd] = who = f"client {self.accepted}"
            if fd >= len(self.heard):
                self.heard.extend([0] * (fd + 1 - len(self.heard)))
            self.heard[fd] = self.tick
            self.log.record(SERVER, ACCEPT, who)
            self.poller.register(fd, self.IN)

    def hold(self, fd: int, rest: bytes) -> None:
        """The client is slow to read: keep the rest of its echo, stop reading it until sent."""
        self.pending[fd] = rest
        self.poller.modify(fd, self.OUT)

    def other(self, fd: int) -> None:
        """Any event off the straight path: writable again, or an error or a hang-up."""
        if fd in self.pending:
            return self.flush(fd)         # send() reports the error, if that is what it was
        try:
            data = self.socks[fd].recv(RECV_SIZE)   # and recv() here
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self.fail(fd, exc)
        if not data:
            return self.eof(fd)
        self.hold(fd, data)               # sent when writable: a rare path needs no shortcut

    def flush(self, fd: int) -> None:
        """Writable again (or failed: send says which): send what is left of the echo."""
        data = self.pending[fd]
        try:
            sent = self.socks[fd].send(data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            return self.fail(fd, exc)
        if sent == len(data):
            del self.pending[fd]
            self.poller.modify(fd, self.IN)   # all sent: read this client again
        else:
            self.pending[fd] = data[sent:]

    def eof(self, fd: int) -> None:
        """The client shut down its side, and its echo is all sent (else it was not read)."""
        self.log.record(SERVER, EOF, self.names[fd])
        self.close(fd)

    def fail(self, fd: int, exc: OSError) -> None:
        """A reset, or another error on one connection: forget that client, serve the rest."""
        self.log.record(SERVER, ERROR, self.names[fd], detail=type(exc).__name__)
        self.close(fd)

    def close(self, fd: int, why: str = "") -> None:
        self.poller.unregister(fd)        # before closing: the poller refers to the descriptor
        self.pending.pop(fd, None)
        self.socks.pop(fd).close()
        self.log.record(SERVER, CLOSE, self.names.pop(fd), detail=why)

    def chores(self) -> None:
        """Between bursts of events (at most every POLL_INTERVAL when idle): watch the listener
        again a moment after a shortage of descriptors (by then some clients may have left;
        if not, accept() fails again, and that is not said twice), and let go of clients
        quiet for idle_timeout seconds."""
        if self.paused and not self.shortage.paused():
            self.paused = False
            self.poller.register(self.listener.fileno(), self.LISTENER)
        if self.idle_timeout is None:
            return
        now = time.monotonic()
        if now < self.next_sweep:
            return
        # Ticks are at least sweep_every apart: a client whose last event came during tick t
        # (before tick t + 1 began) has been quiet for at least the timeout once tick t + 5.
        self.tick += 1
        self.next_sweep = now + self.sweep_every
        quiet_since = self.tick - math.ceil(self.idle_timeout / self.sweep_every) - 1
        for fd in [fd for fd in self.socks if self.heard[fd] <= quiet_since]:
            self.close(fd, f"idle for {self.idle_timeout:g} s")

    def close_all(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


def serve_epoll(listener: socket.socket, stop, log: Transcript, idle_timeout: Optional[float] = None) -> None:
    """The fast loop: epoll, descriptors, and a straight path for the common event."""
    IN = select.EPOLLIN
    # The listener is watched for EPOLLIN|EPOLLRDNORM, clients for EPOLLIN alone, and
    # epoll reports only what was asked for (plus errors): so a plain EPOLLIN always
    # means a client, and the common case needs no other test.
    LISTENER = select.EPOLLIN | select.EPOLLRDNORM
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), LISTENER)
    clients = Clients(listener, log, ep, IN, select.EPOLLOUT, LISTENER, idle_timeout)
    # Local names are the fastest Python has: look each function up once, here.
    poll, read, write, stopped = ep.poll, os.read, os.write, stop.is_set
    heard = clients.heard
    try:
        while not stopped():
            tick = clients.tick   # (chores() moves it on, between bursts)
            # A Python call on every wake-up shows in the profile: look at the
            # stop flag once every 16 wake-ups, or as soon as one finds nothing.
            for _wakeup in BETWEEN_STOP_CHECKS:
                ready = poll(POLL_INTERVAL, MAX_EVENTS)
                if not ready:
                    break
                for fd, events in ready:
                    heard[fd] = tick
                    if events == IN:
                        # The common case: a client with no echo pending (those are
                        # watched for writing only) sent something, or its EOF.
                        try:
                            data = read(fd, RECV_SIZE)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError as exc:       # a reset, say
                            clients.fail(fd, exc)
                            continue
                        if not data:
                            clients.eof(fd)
                            continue
                        try:
                            sent = write(fd, data)   # SIGPIPE is ignored in Python: EPIPE is an OSError
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError as exc:
                            clients.fail(fd, exc)
                            continue
                        if sent != len(data):
                            clients.hold(fd, data[sent:])
                    elif events == LISTENER:
                        clients.accept_all()
                    else:
                        clients.other(fd)
            clients.chores()
    finally:
        ep.close()
        clients.close_all()


def serve_splice(listener: socket.socket, stop, log: Transcript, idle_timeout: Optional[float] = None) -> None:
    """serve_epoll with the bytes left in the kernel: os.splice socket -> pipe -> socket (Linux).

    Opt-in (``--splice``): it saves about a quarter of the Python-side work per
    message (no bytes object is made, so no 64 KiB allocation either; the
    kernel's work is the same), at the price of one invariant to keep. One
    pipe serves every client, so it must be empty after every event: whatever
    a partial send leaves in it is read out into that client's pending echo
    at once, or the next client would be sent this one's bytes.
    """
    if not (hasattr(select, "epoll") and hasattr(os, "splice")):
        return serve(listener, stop, log, idle_timeout)
    import fcntl
    IN, LISTENER = select.EPOLLIN, select.EPOLLIN | select.EPOLLRDNORM   # as in serve_epoll
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), LISTENER)
    clients = Clients(listener, log, ep, IN, select.EPOLLOUT, LISTENER, idle_timeout)
    pipe_out, pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError, AttributeError):   # more per splice for big messages
        fcntl.fcntl(pipe_in, fcntl.F_SETPIPE_SZ, 1 << 20)
    poll, splice, read, stopped = ep.poll, os.splice, os.read, stop.is_set
    heard = clients.heard
    try:
        while not stopped():
            tick = clients.tick
            for _wakeup in BETWEEN_STOP_CHECKS:
                ready = poll(POLL_INTERVAL, MAX_EVENTS)
                if not ready:
                    break
                for fd, events in ready:
                    heard[fd] = tick
                    if events == IN:
                        try:
                            n = splice(fd, pipe_in, RECV_SIZE)    # socket -> pipe: n bytes
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError as exc:
                            clients.fail(fd, exc)
                            continue
                        if not n:
                            clients.eof(fd)
                            continue
                        try:
                            sent = splice(pipe_out, fd, n)        # pipe -> the same socket
                        except (BlockingIOError, InterruptedError):
                            sent = 0
                        except OSError as exc:
                            read(pipe_out, n)                     # empty the pipe, then forget
                            clients.fail(fd, exc)
                            continue
                        if sent != n:
                            clients.hold(fd, read(pipe_out, n - sent))   # the pipe is empty again
                    elif events == LISTENER:
                        clients.accept_all()
                    else:
                        clients.other(fd)
            clients.chores()
    finally:
        ep.close()
        os.close(pipe_out)
        os.close(pipe_in)
        clients.close_all()


def serve_portable(listener: socket.socket, stop, log: Transcript, idle_timeout: Optional[float] = None) -> None:
    """The same loop on selectors.DefaultSelector, for platforms without epoll."""
    listener.setblocking(False)
    lfd = listener.fileno()
    sel = selectors.DefaultSelector()
    sel.register(lfd, selectors.EVENT_READ)
    clients = Clients(listener, log, sel, selectors.EVENT_READ, selectors.EVENT_WRITE, selectors.EVENT_READ,
                      idle_timeout)
    pending, socks, heard = clients.pending, clients.socks, clients.heard
    try:
        while not stop.is_set():
            tick = clients.tick
            for key, _ in sel.select(POLL_INTERVAL):
                fd = key.fd
                heard[fd] = tick
                if fd == lfd:
                    clients.accept_all()
                elif fd in pending:
                    clients.flush(fd)
                else:   # socket methods, not os.read/os.write: those fail on sockets on Windows
                    sock = socks[fd]
                    try:
                        data = sock.recv(RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        clients.fail(fd, exc)
                        continue
                    if not data:
                        clients.eof(fd)
                        continue
                    try:
                        sent = sock.send(data)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        clients.fail(fd, exc)
                        continue
                    if sent != len(data):
                        clients.hold(fd, data[sent:])
            clients.chores()
    finally:
        sel.close()
        clients.close_all()


def main(argv=None) -> int:
    import functools
    from .cli import DEFAULT_HOST, host_name, port_number, seconds, serve_forever
    parser = argparse.ArgumentParser(prog="python -m lessons.kit.fastecho", description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=host_name, default=DEFAULT_HOST,
                        help="address to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=port_number, default=9905,
                        help="TCP port to listen on, 0 to pick a free one (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="do not log connections to stderr (for benchmarks)")
    parser.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"), default=60.0,
                        metavar="SECONDS", help="close a connection that sends and takes nothing for "
                                                "this long (0: never; default %(default)g)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--portable", action="store_true",
                     help="use selectors.DefaultSelector even where epoll exists (to compare)")
    how.add_argument("--splice", action="store_true",
                     help="keep the bytes in the kernel with os.splice (Linux; see serve_splice)")
    args = parser.parse_args(argv)
    raise_fd_limit()   # every client is a descriptor: allow more than the usual 1,024
    if not args.quiet and (args.portable or not hasattr(select, "epoll")):
        from .cli import stderr
        stderr.print(f"[dim]the portable loop, on {selectors.DefaultSelector.__name__}[/]")
    chosen = serve_portable if args.portable else serve_splice if args.splice else serve
    return serve_forever(functools.partial(chosen, idle_timeout=args.idle_timeout or None), args, "fastecho")


if __name__ == "__main__":
    from .cli import main_guard
    main_guard(main)
