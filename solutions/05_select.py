"""Answer to lesson 05's exercise: lesson 03's chat on a single-threaded selectors server."""
from __future__ import annotations

from lessons.kit import chat


class SelectorChat:
    """Lesson 03's chat protocol, for the single-threaded line server.

    The server calls connected(client), line(client, text) for each line, and
    disconnected(client). client.send(text) queues a line and never blocks;
    client.close() closes after the queue is sent; client.name is yours to set.
    """

    def __init__(self):
        # One thread runs every call, so plain data structures need no lock.
        self.members = {}   # casefolded name → client

    def connected(self, client) -> None:
        """A client arrived: ask for its name."""
        ### BEGIN SOLUTION
        client.send(chat.GREETING)
        ### END SOLUTION

    def line(self, client, text: str) -> None:
        """One line from a client: its name first, then messages and commands."""
        ### BEGIN SOLUTION
        if client.name is None:
            problem = chat.name_problem(text)
            if problem is None and text.casefold() in self.members:
                problem = "! that name is taken; try another"
            if problem:
                client.send(problem)
                return
            client.name = text
            self.members[text.casefold()] = client
            client.send(f"* welcome, {text}! /who lists who is here, /quit leaves")
            self.broadcast(f"* {text} joined", sender=client)
        elif text.startswith("/"):
            command = text.split()[0]
            if command == "/quit":
                client.send("* bye")
                client.close()            # after "* bye" is sent; disconnected() follows
            elif command == "/who":
                names = sorted((c.name for c in self.members.values()), key=str.casefold)
                client.send("* online: " + ", ".join(names))
            else:
                client.send("! unknown command")
        elif text.strip():
            self.broadcast(f"{client.name}: {text}", sender=client)
        ### END SOLUTION

    def disconnected(self, client) -> None:
        """A client left, for whatever reason: tell the others."""
        ### BEGIN SOLUTION
        if client.name is not None and self.members.get(client.name.casefold()) is client:
            del self.members[client.name.casefold()]
            self.broadcast(f"* {client.name} left")
        ### END SOLUTION

    ### BEGIN SOLUTION
    def broadcast(self, text: str, sender=None) -> None:
        # The key step: send() only queues, so a slow client delays nobody; the
        # line server disconnects a client whose queue grows too long.
        for member in list(self.members.values()):
            if member is not sender:
                member.send(text)
    ### END SOLUTION
