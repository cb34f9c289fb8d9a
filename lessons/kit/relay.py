"""A TCP relay that loses replies on purpose: the network's worst habit, on loopback.

    with lossy_relay(server.address, lose=1) as relay:   # on the first connection, every reply is lost
        call(relay.address, "deposit", 100)               # the server ran it; the caller cannot know

    client ──► relay ──► server       the request gets through, the server acts on it,
    client  ✗  relay ◄── server       and its reply is thrown away

For the first ``lose`` connections, whatever the server sends back is dropped:
silently (the client waits until its timeout), or with ``hang_up=True`` by
closing the client's connection as soon as the reply arrives (the client sees
the connection close without an answer). Later connections pass untouched.
That is exactly the case a client cannot tell apart from a lost request.
"""
from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Iterator, Optional

from .server import POLL_INTERVAL, BackgroundServer, running
from .threaded import serve_threads
from .transcript import NOTE, SERVER, Transcript

TIMEOUT = 5.0


@contextlib.contextmanager
def lossy_relay(target: tuple, lose: int = 1, hang_up: bool = False,
                log: Optional[Transcript] = None) -> Iterator[BackgroundServer]:
    """Relay connections to ``target``, losing every reply on the first ``lose`` of them."""
    budget = {"left": lose}
    lock = threading.Lock()

    def take() -> bool:
        with lock:
            if budget["left"] > 0:
                budget["left"] -= 1
                return True
            return False

    def serve(listener, stop, log):
        def one(conn, log, who):
            relay(conn, stop, log, take(), who)
        serve_threads(listener, stop, log, one)

    def relay(client: socket.socket, stop, log: Transcript, losing: bool, who: str) -> None:
        with client, contextlib.suppress(OSError):
            upstream = stop.track(socket.create_connection(target[:2], timeout=TIMEOUT))
            with upstream, selectors.DefaultSelector() as selector:
                selector.register(client, selectors.EVENT_READ, upstream)
                selector.register(upstream, selectors.EVENT_READ, client)
                while len(selector.get_map()) and not stop.is_set():
                    for key, _ in selector.select(POLL_INTERVAL):
                        source, sink = key.fileobj, key.data
                        data = source.recv(65536)
                        if not data:        # one side is done: pass its FIN on
                            selector.unregister(source)
                            with contextlib.suppress(OSError):
                                sink.shutdown(socket.SHUT_WR)
                        elif source is upstream and losing:
                            log.record(SERVER, NOTE, who, detail=f"lost a reply ({len(data):,} bytes)")
                            if hang_up:
                                return      # closes both: the client sees the connection end, no reply
                        else:
                            sink.sendall(data)

    with running(serve, log=log, name="lossy-relay") as server:
        yield server
