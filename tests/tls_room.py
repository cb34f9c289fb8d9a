"""Lesson 03's room behind lesson 11's TLS terminator, for the chat conformance suite.

The suite's clients speak plain TCP (raw sockets, resets, a selector over 200 of
them), so each reaches the room the way a plaintext program reaches a TLS server
through stunnel in client mode: a relay that originates TLS and verifies the
certificate. Every byte the suite sends and receives crosses a real TLS connection:

    suite's client --TCP--> originating relay ==TLS==> lesson 11's relay --TCP--> lesson 03's room
                            (verifies "localhost")     (terminates TLS)

The room runs in this process, so that the suite's options (max_members, ...) reach it.
Two things differ from a room reached directly, both properties of any relay:

- names arrive later than connections (each waits for two TLS handshakes, in this
  process, behind the others): a burst of 200 clients that give their names at once
  finds up to 200 nameless connections at the room, so the room lets that many wait
  (``max_waiting`` defaults to ``chat.MAX_MEMBERS`` here, unless a test sets it);
- the relays keep small socket buffers (``RELAY_BUFFER``), as ``serve --chat`` does, so
  that a client who stops reading still fills the room's outbox (with the kernel's
  default buffers, three hops can hold more than the 16 MB the sleeper test sends).
"""
from __future__ import annotations

import functools

from lessons.kit import chat, running
from lessons.kit.tls import Authority
from lessons.kit.transcript import Transcript
from tests.conftest import lesson

_authority = None


def authority() -> Authority:
    """One throwaway CA per process (its files go with the process's temp dir)."""
    global _authority
    if _authority is None:
        _authority = Authority()
    return _authority


def tls_room(listener, stop, log, **options) -> None:
    """A serve function with the room's options, like the rooms in ROOMS."""
    tls, room_lesson = lesson("11_tls"), lesson("03_chat")
    ca = authority()
    options.setdefault("max_waiting", chat.MAX_MEMBERS)
    with running(functools.partial(room_lesson.serve, **options), log=log) as room, \
            running(functools.partial(tls.relay, backend=room.address, buffer=tls.RELAY_BUFFER,
                                      accept_tls=tls.server_context(ca.certfile)),
                    log=Transcript(), name="tls-terminator") as terminator:
        tls.relay(listener, stop, Transcript(), backend=terminator.address, buffer=tls.RELAY_BUFFER,
                  connect_tls=tls.client_context(ca.cafile), server_hostname="localhost")
