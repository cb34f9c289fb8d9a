"""A thread per client, as lesson 03 serves its chat room: the skeleton later servers stand on.

    def serve(listener, stop, log):
        serve_threads(listener, stop, log, handle, max_clients=100)

``handle(conn, log, who)`` serves one client ("client 1", "client 2", ...). Whatever
way it ends, the socket is closed and "close" recorded. A reset, a broken pipe or a
timeout ends that client only: it is recorded, and the others go on. At most
``max_clients`` are served at once: one more is turned away (``refuse``) at once
instead of costing a thread, and its place is free again the moment a client's
socket is closed. Stopping shuts every connection down (kit.server's stopper), so
every handler returns, and every thread is joined.

``recorded(target, log)`` is the smallest guard a thread can have: an exception
escaping ``target`` is recorded in the transcript instead of printed.
"""
from __future__ import annotations

import socket
import threading
from typing import Callable, Optional

from .check import describe_error
from .server import JOIN_TIMEOUT, Stopper, accept_until
from .transcript import ACCEPT, CLOSE, ERROR, NOTE, SERVER, Transcript

Handler = Callable[[socket.socket, Transcript, str], None]


def recorded(target: Callable, log: Transcript) -> Callable:
    """target, wrapped so that an exception escaping it is recorded, not printed by its thread
    (lesson 03 runs the tutorial's handler in it)."""
    def run(*args):
        try:
            target(*args)
        except Exception as exc:
            log.record(SERVER, ERROR, detail=f"thread crashed: {type(exc).__name__}")
    return run


def turn_away(conn: socket.socket, log: Transcript, who: str) -> None:
    """The default ``refuse``: record why, and close (the client sees EOF)."""
    log.record(SERVER, ERROR, who, detail="refused: too many clients")
    conn.close()


def serve_threads(listener: socket.socket, stop: Stopper, log: Transcript, handle: Handler, *,
                  max_clients: int = 100, idle_timeout: Optional[float] = None,
                  refuse: Handler = turn_away,
                  admit: Optional[Callable[[tuple], Optional[str]]] = None,
                  describe: Optional[Callable[[tuple], str]] = None) -> None:
    """Serve each client with ``handle`` in a daemon thread of its own, until stopped.

    ``idle_timeout``: each socket's timeout (None: none). ``admit(peer)``: a reason
    to hang up on that peer at once, or None to serve it. ``describe(peer)``: a few
    words for the "accept" row (never an address: transcripts must not change).
    """
    places = threading.BoundedSemaphore(max_clients)
    threads: list[threading.Thread] = []

    def run(conn: socket.socket, who: str) -> None:
        try:
            handle(conn, log, who)
        except socket.timeout:      # silent, or not reading, for idle_timeout seconds
            log.record(SERVER, NOTE, who, detail=f"silent for {idle_timeout:g} s: dropped")
        except OSError as exc:      # reset, broken pipe: this client's problem only
            if not stop.is_set():
                log.record(SERVER, ERROR, who, detail=describe_error(exc))
        except Exception as exc:    # a bug in handle(): said, and it costs this client only
            log.record(SERVER, ERROR, who, detail=f"the handler failed: {describe_error(exc)}")
        finally:
            conn.close()
            places.release()        # before "close" is recorded: whoever waits for it finds a place
            log.record(SERVER, CLOSE, who)

    for number, (conn, peer) in enumerate(accept_until(listener, stop, log, idle_timeout), 1):
        who = f"client {number}"
        reason = admit(peer) if admit else None
        if reason:
            log.record(SERVER, NOTE, who, detail=f"{reason}: closed")
            conn.close()
            continue
        if not places.acquire(blocking=False):
            refuse(conn, log, who)
            continue
        log.record(SERVER, ACCEPT, who, detail=describe(peer) if describe else "")
        thread = threading.Thread(target=run, args=(conn, who), name=who, daemon=True)
        try:
            thread.start()
        except RuntimeError:        # "can't start new thread": turn this one away, keep the rest
            places.release()
            refuse(conn, log, who)
            continue
        threads = [t for t in threads if t.is_alive()] + [thread]
    for thread in threads:          # stopping shut every connection down, so each ends soon
        thread.join(JOIN_TIMEOUT)
