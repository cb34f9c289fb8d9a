"""Stopping a server whatever it is blocked in: each tool small enough to show (lesson 09).

A server must stop when asked (Ctrl-C sends SIGINT; ``kill`` and service
managers send SIGTERM), close what it holds and exit 0. What wakes it depends
on where it waits::

    where it waits             what wakes it                                shown by
    accept() or recv(),        Ctrl-C: Python raises KeyboardInterrupt      ctrl_c_in
      in the main thread         in the main thread
    the same, in a worker      not a signal (only the main thread gets it)  ctrl_c_with_a_worker
      thread                   shutdown(SHUT_RDWR) on its socket            wake_blocked_recv
    select() in a loop         a byte on a socketpair that it watches       select_with_a_waker
                               signal.set_wakeup_fd: the signal writes it   wakeup_fd
    socketserver's loop        server.shutdown() from another thread        socketserver_shutdown
    an asyncio event loop      loop.add_signal_handler()                    asyncio_signals

Functions that take a signal run in a child process (:func:`signal_child`):
a signal sent to a notebook's kernel would interrupt the kernel itself. They
are self-contained (their imports inside) because ``Child.run`` sends their
source to a fresh Python.
"""
from __future__ import annotations

import selectors
import signal
import socket
import socketserver
import threading
import time

from .child import Child
from .endings import attempt
from .server import JOIN_TIMEOUT

TIMEOUT = 5.0


def ctrl_c_in(where="accept"):
    """Ctrl-C (SIGINT) against a server blocked in accept() or recv(), in the main thread."""
    import socket   # inside: Child.run runs this function's source alone
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)      # long: a signal, not the timeout, ends this wait
    client = conn = None
    try:
        if where == "recv":
            client = socket.create_connection(listener.getsockname(), timeout=30)
            conn, _ = listener.accept()
        print(f"blocked in {where}()", flush=True)
        if where == "accept":
            listener.accept()
        else:
            conn.recv(100)
    except KeyboardInterrupt:    # Python's SIGINT handler raises it in the main thread
        print(f"KeyboardInterrupt raised in {where}()", flush=True)
    finally:
        for sock in (conn, client, listener):
            if sock is not None:
                sock.close()
        print("closed everything; exiting", flush=True)


def ctrl_c_with_a_worker():
    """Ctrl-C when a worker thread is blocked in accept(): only the main thread hears it."""
    import socket   # inside: Child.run runs this function's source alone
    import threading
    import time
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    worker = threading.Thread(target=listener.accept, daemon=True)
    worker.start()
    try:
        print("worker blocked in accept(); main thread sleeps", flush=True)
        time.sleep(30)
    except KeyboardInterrupt:
        time.sleep(0.2)
        blocked = worker.is_alive()
        print("main thread: KeyboardInterrupt; worker still blocked:", blocked, flush=True)
    # The daemon worker dies with the process; a server must wake it instead (below).


def wake_blocked_recv(how: str) -> tuple[bool, str]:
    """Block a thread in recv(), then call shutdown(SHUT_RDWR) or close() on its socket
    from another thread: (woke within 0.3 s?, what recv() ended with)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as peer:
        conn, _ = listener.accept()
        conn.settimeout(0.6)       # bounds the wait if nothing wakes it
        ended: list = []
        blocking = threading.Event()

        def read():
            blocking.set()
            ended.append(attempt(lambda: conn.recv(100)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        blocking.wait(TIMEOUT)
        time.sleep(0.1)            # let it block in recv()
        if how == "shutdown":
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.close()           # frees the descriptor; the blocked recv() does not notice
        reader.join(0.3)
        woke = not reader.is_alive()
        reader.join(JOIN_TIMEOUT)
        conn.close()
        return woke, ended[0]


def select_with_a_waker() -> tuple[str, float]:
    """A select loop that sleeps with no polling: a byte on a socketpair wakes it to stop."""
    wake_r, wake_w = socket.socketpair()
    woken_by: list = []

    def loop(listener):
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ, "a client")
            sel.register(wake_r, selectors.EVENT_READ, "the waker")
            while not woken_by:
                for key, _ in sel.select(timeout=30):      # long: the waker ends the wait
                    if key.data == "the waker":
                        woken_by.append(key.data)
                    else:
                        listener.accept()[0].close()

    with wake_r, wake_w, socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=loop, args=(listener,), daemon=True)
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        wake_w.send(b"x")          # from any thread, or a signal handler
        thread.join(JOIN_TIMEOUT)
        return (woken_by or ["nothing"])[0], time.monotonic() - started


def wakeup_fd():
    """signal.set_wakeup_fd: a signal writes a byte to a socket, and select() wakes for it."""
    import selectors   # inside: Child.run runs this function's source alone
    import signal
    import socket
    listener = socket.create_server(("127.0.0.1", 0))
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: None)   # a handler, so Python catches it
    with selectors.DefaultSelector() as sel:
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        print("blocked in select()", flush=True)
        sel.select(timeout=30)
    print(f"select() woke: {signal.Signals(wake_r.recv(1)[0]).name} arrived", flush=True)
    for sock in (listener, wake_r, wake_w):
        sock.close()
    print("closed everything; exiting", flush=True)


def socketserver_shutdown() -> tuple[bytes, bool]:
    """socketserver: serve_forever() in a thread, shutdown() from another; (a reply, stopped?)."""

    class Echo(socketserver.StreamRequestHandler):
        timeout = 2    # a silent client cannot hold its thread for ever (server_close joins them)

        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True)
        thread.start()
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
            sock.sendall(b"hi\n")
            reply = sock.recv(100)
        server.shutdown()    # never from the serve_forever thread itself: it would wait for ever
        thread.join(JOIN_TIMEOUT)
    return reply, not thread.is_alive()   # leaving the with block called server_close()


def asyncio_signals():
    """asyncio: add_signal_handler runs the handler inside the loop, which then closes cleanly."""
    import asyncio   # inside: Child.run runs this function's source alone
    import signal

    async def main():
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        print("serving", flush=True)
        await asyncio.wait_for(stop.wait(), 30)
        print("signal received: closing the server", flush=True)
        server.close()
        await server.wait_closed()
        print("closed everything; exiting", flush=True)

    asyncio.run(main())


def signal_child(fn, sig=signal.SIGINT, *args) -> tuple[int, list[str]]:
    """Run fn(*args) in a child process; send it sig once it says it waits (its first line).
    Returns (its exit status, every line it printed)."""
    with Child.run(fn, *args) as child:
        first = child.line()
        child.signal(sig)
        lines = [first, *child.rest()]
        return child.wait(), lines
