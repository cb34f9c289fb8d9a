"""Answers to lesson 05's exercises: the selector's half of an event-loop echo server."""
from __future__ import annotations

import selectors


def interest(conn, limit: int = 1 << 20) -> int:
    """The events to wait for on one connection of an echo server.

    conn.output holds the echo that send() has not taken yet; conn.client_done
    is True once recv() returned b''. Wait to read (selectors.EVENT_READ) while
    the client may send more and fewer than limit bytes wait in conn.output.
    Wait to write (selectors.EVENT_WRITE) while output waits. Neither: 0.
    """
    ### BEGIN SOLUTION
    events = 0
    if not conn.client_done and len(conn.output) < limit:
        events |= selectors.EVENT_READ    # backpressure: stop reading while the echo piles up
    if conn.output:
        events |= selectors.EVENT_WRITE   # the key step: only while output waits, or it spins
    return events
    ### END SOLUTION


def loop_once(sel, echoer, timeout: float = 0.05) -> None:
    """One pass of a selectors echo server: wait up to timeout, then serve every ready socket.

    The listener is registered for EVENT_READ with data None; register each new
    connection for EVENT_READ with the Connection as its data. echoer does the
    work on each socket: echoer.accept(listener) returns a new Connection (or
    None), echoer.readable(conn) reads, echoer.writable(conn) sends what it can,
    echoer.finished(conn) says when to close and echoer.close(conn) closes.
    Keep each connection registered for interest(conn), and take it out of the
    selector before it is closed.
    """
    ### BEGIN SOLUTION
    for key, mask in sel.select(timeout):
        if key.data is None:                    # the listener: a client is waiting
            conn = echoer.accept(key.fileobj)
            if conn is not None:
                sel.register(conn.sock, selectors.EVENT_READ, data=conn)
            continue
        conn = key.data
        if mask & selectors.EVENT_READ:
            echoer.readable(conn)
        if conn.output:
            echoer.writable(conn)               # right after a read, all of it usually fits
        if echoer.finished(conn):
            sel.unregister(conn.sock)           # the key step: out of the selector, then close
            echoer.close(conn)
        elif interest(conn) != key.events:      # ask for what it needs now, and only that
            sel.modify(conn.sock, interest(conn), data=conn)
    ### END SOLUTION
