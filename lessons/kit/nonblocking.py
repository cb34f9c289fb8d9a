"""One non-blocking connection's state, as lesson 04 builds it: the tested copy for later lessons.

An event loop serves many sockets from one thread, so what a blocking server
keeps on its stack (the bytes still to send, whether the client has finished)
has to live in an object per connection instead.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field

RECV_SIZE = 65536
OUTPUT_LIMIT = 1 << 20   # stop reading from a client with this much echo still unsent


@dataclass(eq=False)
class Connection:
    """A client of an event-loop server: its socket, its name, and its unsent output."""
    sock: socket.socket
    who: str
    output: bytearray = field(default_factory=bytearray)   # echo not yet taken by send()
    client_done: bool = False                              # recv() returned b'': EOF
