"""The steps from lesson 05's selectors echo server to lessons/kit/fastecho.py, one change each.

    python benchmarks/fast_echo_steps.py STEP [--host H] [--port P]   # serve one step

Each step is lesson 02's echo server with the same contract, and removes one
piece of Python work per message from the step before. benchmarks/fast_echo.py
measures them (instructions per request, the profile, requests per second);
the last step is the kit's server itself. The intermediate steps live here,
not in the kit: they are measurements, not servers to use.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import select
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessons.kit import fastecho                                  # noqa: E402
from lessons.kit.nonblocking import RECV_SIZE, Connection          # noqa: E402
from lessons.kit.server import POLL_INTERVAL                       # noqa: E402
from lessons.kit.transcript import EOF, RECV, SEND, SERVER         # noqa: E402

lesson05 = importlib.import_module("lessons.05_select")
IN, OUT = select.EPOLLIN, select.EPOLLOUT


# Step 0 is lesson 05's selectors server itself: lesson05.serve.


def step1_epoll(listener, stop, log):
    """Lesson 05's server with select.epoll in place of selectors (same Echoer)."""
    loop = lesson05.Echoer(log)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, IN)
    by_fd: dict[int, Connection] = {}
    try:
        while not stop.is_set():
            for fd, mask in ep.poll(POLL_INTERVAL):
                if fd == lfd:
                    conn = loop.accept(listener)
                    if conn is not None:
                        by_fd[conn.sock.fileno()] = conn
                        ep.register(conn.sock, IN)
                    continue
                conn = by_fd[fd]
                was = (IN if lesson05.wants_to_read(conn) else 0) | (OUT if conn.output else 0)
                if mask & (IN | select.EPOLLERR | select.EPOLLHUP):
                    loop.readable(conn)
                if conn.output:   # try at once: usually the whole echo fits
                    loop.writable(conn)
                if conn.client_done and not conn.output:
                    ep.unregister(fd)
                    del by_fd[fd]
                    loop.close(conn)
                    continue
                wanted = (IN if lesson05.wants_to_read(conn) else 0) | (OUT if conn.output else 0)
                if wanted != was:
                    ep.modify(fd, wanted)
    finally:
        ep.close()
        loop.close_all()


def step2_straight(listener, stop, log):
    """A straight path for the common event: recv, send from those bytes, done.

    No output buffer to append to and trim, no interest to recompute: a client
    whose echo did not all fit is watched for writing only, until it has.
    Connection objects, socket methods and the per-message transcript stay.
    """
    loop = lesson05.Echoer(log)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, IN)
    by_fd: dict[int, Connection] = {}

    def close(fd, conn):
        ep.unregister(fd)
        del by_fd[fd]
        conn.client_done, conn.output = True, bytearray()
        loop.close(conn)

    try:
        while not stop.is_set():
            for fd, mask in ep.poll(POLL_INTERVAL):
                if fd == lfd:
                    conn = loop.accept(listener)
                    if conn is not None:
                        by_fd[conn.sock.fileno()] = conn
                        ep.register(conn.sock, IN)
                    continue
                conn = by_fd[fd]
                if conn.output:                       # watched for writing: flush
                    loop.writable(conn)
                    if conn.client_done:              # a send failed
                        close(fd, conn)
                    elif not conn.output:
                        ep.modify(fd, IN)
                    continue
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    loop._failed(conn, exc)
                    close(fd, conn)
                    continue
                if not data:
                    log.record(SERVER, EOF, conn.who)
                    close(fd, conn)
                    continue
                log.record(SERVER, RECV, conn.who, len(data))
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    loop._failed(conn, exc)
                    close(fd, conn)
                    continue
                log.record(SERVER, SEND, conn.who, sent)
                if sent != len(data):
                    conn.output += data[sent:]
                    ep.modify(fd, OUT)
    finally:
        ep.close()
        loop.close_all()


def step3_quiet(listener, stop, log):
    """Step 2 without the transcript's recv and send events (accepts, EOFs, errors, closes stay)."""
    loop = lesson05.Echoer(log)
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, IN)
    by_fd: dict[int, Connection] = {}

    def close(fd, conn):
        ep.unregister(fd)
        del by_fd[fd]
        conn.client_done, conn.output = True, bytearray()
        loop.close(conn)

    try:
        while not stop.is_set():
            for fd, mask in ep.poll(POLL_INTERVAL):
                if fd == lfd:
                    conn = loop.accept(listener)
                    if conn is not None:
                        by_fd[conn.sock.fileno()] = conn
                        ep.register(conn.sock, IN)
                    continue
                conn = by_fd[fd]
                if conn.output:
                    loop.writable(conn)
                    if conn.client_done:
                        close(fd, conn)
                    elif not conn.output:
                        ep.modify(fd, IN)
                    continue
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    loop._failed(conn, exc)
                    close(fd, conn)
                    continue
                if not data:
                    log.record(SERVER, EOF, conn.who)
                    close(fd, conn)
                    continue
                try:
                    sent = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    loop._failed(conn, exc)
                    close(fd, conn)
                    continue
                if sent != len(data):
                    conn.output += data[sent:]
                    ep.modify(fd, OUT)
    finally:
        ep.close()
        loop.close_all()


def step4_descriptors(listener, stop, log):
    """Descriptors, not objects: os.read/os.write on the fd that epoll returns, functions in locals.

    No Connection object and no socket method per message: the fd is the key,
    and the common path is a handful of bytecodes. The slow paths (accept,
    flush, EOF, errors) are the kit's (fastecho.Clients).
    """
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, IN)
    clients = fastecho.Clients(listener, log, ep, IN, OUT, IN)
    pending = clients.pending
    poll, read, write, stopped = ep.poll, os.read, os.write, stop.is_set
    try:
        while not stopped():
            for fd, _ in poll(POLL_INTERVAL, 1024):
                if fd == lfd:
                    clients.accept_all()
                elif fd in pending:
                    clients.flush(fd)
                else:
                    try:
                        data = read(fd, RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        clients.fail(fd, exc)
                        continue
                    if not data:
                        clients.eof(fd)
                        continue
                    try:
                        sent = write(fd, data)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        clients.fail(fd, exc)
                        continue
                    if sent != len(data):
                        clients.hold(fd, data[sent:])
    finally:
        ep.close()
        clients.close_all()


# Step 5 is the kit's server, lessons/kit/fastecho.py: step 4 with less work per
# wake-up (a 64-event buffer instead of 1,024, the stop flag read every 16
# wake-ups) and the event mask, not two lookups, telling the common case apart.
# Step 6 is the kit's opt-in serve_splice: step 5 with os.splice, no bytes objects.


# --- Tried, not kept. ---

def _step4_reading_into_a_buffer(how: str):
    """Step 4 reading into one reused buffer (recv_into or os.readv) and sending a memoryview slice."""
    def serve(listener, stop, log):
        listener.setblocking(False)
        lfd = listener.fileno()
        ep = select.epoll()
        ep.register(lfd, IN)
        clients = fastecho.Clients(listener, log, ep, IN, OUT, IN)
        pending, socks = clients.pending, clients.socks
        poll, write, readv, stopped = ep.poll, os.write, os.readv, stop.is_set
        buf = bytearray(RECV_SIZE)
        view = memoryview(buf)
        bufs = (buf,)
        try:
            if how == "readv":
                while not stopped():
                    for fd, _ in poll(POLL_INTERVAL, 1024):
                        if fd == lfd:
                            clients.accept_all()
                        elif fd in pending:
                            clients.flush(fd)
                        else:
                            try:
                                n = readv(fd, bufs)
                            except (BlockingIOError, InterruptedError):
                                continue
                            except OSError as exc:
                                clients.fail(fd, exc)
                                continue
                            if not n:
                                clients.eof(fd)
                                continue
                            try:
                                sent = write(fd, view[:n])
                            except (BlockingIOError, InterruptedError):
                                sent = 0
                            except OSError as exc:
                                clients.fail(fd, exc)
                                continue
                            if sent != n:
                                clients.hold(fd, buf[sent:n])
            else:
                while not stopped():
                    for fd, _ in poll(POLL_INTERVAL, 1024):
                        if fd == lfd:
                            clients.accept_all()
                        elif fd in pending:
                            clients.flush(fd)
                        else:
                            sock = socks[fd]
                            try:
                                n = sock.recv_into(buf)
                            except (BlockingIOError, InterruptedError):
                                continue
                            except OSError as exc:
                                clients.fail(fd, exc)
                                continue
                            if not n:
                                clients.eof(fd)
                                continue
                            try:
                                sent = sock.send(view[:n])
                            except (BlockingIOError, InterruptedError):
                                sent = 0
                            except OSError as exc:
                                clients.fail(fd, exc)
                                continue
                            if sent != n:
                                clients.hold(fd, buf[sent:n])
        finally:
            ep.close()
            clients.close_all()
    serve.__name__ = f"step4_{how}"
    return serve


STEPS = {
    "0-lesson05": lesson05.serve,
    "1-epoll": step1_epoll,
    "2-straight": step2_straight,
    "3-quiet": step3_quiet,
    "4-descriptors": step4_descriptors,
    "5-final": fastecho.serve,
    "6-splice": fastecho.serve_splice,
    "x-recv_into": _step4_reading_into_a_buffer("recv_into"),
    "x-readv": _step4_reading_into_a_buffer("readv"),
}


def main(argv=None) -> int:
    import argparse
    from lessons.kit.cli import DEFAULT_HOST, host_name, port_number, serve_forever
    from lessons.kit.server import raise_fd_limit
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("--host", type=host_name, default=DEFAULT_HOST)
    parser.add_argument("--port", type=port_number, default=9905)
    parser.add_argument("--quiet", action="store_true", help="accepted for symmetry: steps never log")
    args = parser.parse_args(argv)
    args.quiet = True                  # a log line costs more than an echo
    raise_fd_limit()
    return serve_forever(STEPS[args.step], args, args.step)


if __name__ == "__main__":
    raise SystemExit(main())
