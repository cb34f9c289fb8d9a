"""Answers to lesson 08's exercises."""
from __future__ import annotations

import asyncio

from lessons.kit.aio import within


async def ask(address, line: str, timeout: float = 1.0, tries: int = 3) -> str:
    """Send one line to the line server at address; return its one-line reply, without the
    newline. Try again when a try fails.

    A try connects, sends the line and reads the reply, all within timeout seconds. A try
    fails if it times out, is refused, or the server closes before a whole reply (raise
    ConnectionError for that). After a failed try, wait (0.1 s, then twice as long each
    time) and try again, tries times in all; then raise the last try's error (TimeoutError
    if it timed out). Close every connection you open, whatever happens.
    """
    ### BEGIN SOLUTION
    loop = asyncio.get_running_loop()
    pause = 0.1
    for attempt in range(1, tries + 1):
        # The key step: one deadline for the whole try. Each wait gets what is left of it,
        # and a wait that runs out is cancelled where it stands.
        deadline = loop.time() + timeout
        try:
            reader, writer = await within(timeout, asyncio.open_connection(*address[:2]))
            try:
                writer.write(line.encode("utf-8") + b"\n")
                reply = await within(deadline - loop.time(), reader.readline())
            finally:
                writer.close()              # whatever happened
            if not reply.endswith(b"\n"):   # EOF before a whole line
                raise ConnectionError("the server closed the connection without a reply")
            return reply.decode("utf-8", errors="replace").rstrip("\r\n")
        except (OSError, TimeoutError):     # refused, reset, closed early, or too slow
            if attempt == tries:
                raise
        await asyncio.sleep(pause)
        pause *= 2
    raise ValueError("tries must be at least 1")
    ### END SOLUTION


def broadcast(writers: dict, line: bytes, sender=None, limit: int = 1048576) -> list:
    """Send line to every writer in writers (a dict: name -> asyncio.StreamWriter) except
    the sender's (a name, or None), and never wait; return the names of those too slow.

    A writer is too slow when the bytes already waiting in its transport's buffer
    (writer.transport.get_write_buffer_size()) and this line would pass limit: it does
    not get the line. A writer that is closing (writer.is_closing()) is skipped.
    """
    ### BEGIN SOLUTION
    too_slow = []
    for name, writer in writers.items():
        if name == sender or writer.is_closing():
            continue
        if writer.transport.get_write_buffer_size() + len(line) > limit:
            too_slow.append(name)           # the room drops it: it is not keeping up
            continue
        # The key step: write() and no drain(). write() never blocks: the transport
        # sends what the socket takes and keeps the rest, which we have just bounded.
        writer.write(line)
    return too_slow
    ### END SOLUTION
