"""Answers to lesson 03's exercises."""
from __future__ import annotations

import threading


def private_message(room, sender, line: str) -> str:
    """Handle "/msg NAME TEXT": deliver "SENDER (private): TEXT" to NAME only.

    Return the line to send back to the sender: "* sent to NAME" on success,
    "! no such user: NAME" if nobody by that name is here, and
    "! usage: /msg NAME TEXT" if the line has no name or no text.
    """
    ### BEGIN SOLUTION
    parts = line.split(maxsplit=2)          # "/msg", NAME, and the rest, spaces kept
    if len(parts) < 3:
        return "! usage: /msg NAME TEXT"
    _, name, text = parts
    target = room.find(name)                # looks up under the room's lock
    if target is None:
        return f"! no such user: {name}"
    # The key step: put the line in the target's outbox only. Its writer thread
    # sends it, so we never block on the target, just as a broadcast doesn't.
    # put() is False if the target is too slow, or leaving (its outbox is closed).
    if not target.outbox.put(f"{sender.name} (private): {text}"):
        return f"! {target.name} is leaving or not keeping up; not sent"
    return f"* sent to {target.name}"
    ### END SOLUTION


def broadcast(clients: list, lock: threading.Lock, message: bytes, sender) -> None:
    """Send message to every socket in clients except sender.

    Other threads add and remove clients while this runs, holding lock when
    they change the list. A client whose socket fails (it reset or vanished)
    is closed and removed; every other client still gets the whole message.
    """
    ### BEGIN SOLUTION
    with lock:                              # the key step: read the list only under the lock
        others = [c for c in clients if c is not sender]
    for client in others:                   # send outside it: a slow client blocks no join
        try:
            client.sendall(message)         # sendall: send() may take only part
        except OSError:                     # only network errors; a bug should still show
            client.close()
            with lock:
                if client in clients:       # its own thread may have removed it already
                    clients.remove(client)
    ### END SOLUTION
