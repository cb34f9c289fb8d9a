"""Server designs side by side, measured from outside: their code, their threads, their memory.

    code_lines(path, "serve")             # lines of code a server's entry point reaches
    threads(pid)                          # threads in a running process (None if unknown)
    with ServerProcess.lesson("03_chat") as room:
        idle_cost(room, clients=200, chat=True)    # (KiB per idle client, threads)
    hog(address)                          # a client that sends and never reads: others served?

Lesson 08's notebook compares its asyncio servers with lessons 03 and 05 with these.
Every server is read from outside (its source file, its process), so that no lesson
imports another.
"""
from __future__ import annotations

import ast
import contextlib
import pathlib
import socket
import time
from typing import Iterable, Optional

from .echo import echo
from .fanout import Members


def code_lines(path: pathlib.Path, entry: str, exclude: Iterable[str] = ()) -> int:
    """Lines of code (no blank lines, comments or docstrings) in ``entry`` and in every function
    and class of the same module that it names, and that those name in turn; not ``exclude``."""
    tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    defs = {node.name: node for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    skip, seen, todo = set(exclude), set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen or name in skip or name not in defs:
            continue
        seen.add(name)
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name)]
    total = 0
    for name in seen:
        node = defs[name]
        docstrings = {n.body[0].lineno + i for n in ast.walk(node)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)
                      and isinstance(n.body[0].value.value, str)
                      for i in range(n.body[0].end_lineno - n.body[0].lineno + 1)}
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        total += sum(1 for number in range(first, node.end_lineno + 1)
                     if number not in docstrings
                     and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#"))
    return total


def threads(pid: int) -> Optional[int]:
    """How many threads the process ``pid`` runs (Linux; None where /proc is missing)."""
    with contextlib.suppress(OSError, ValueError):
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def idle_cost(server, clients: int = 200, chat: bool = False,
              settle: float = 0.2) -> tuple[float, Optional[int]]:
    """(KiB of the server's memory per idle client, the server's threads meanwhile), for a
    server in a ServerProcess: ``clients`` connect (and join, for a chat room), then wait."""
    before = server.rss_kib()
    with contextlib.ExitStack() as stack:
        if chat:
            stack.enter_context(Members(server.address, clients, prefix="idle"))
        else:
            for _ in range(clients):
                stack.enter_context(socket.create_connection(server.address, timeout=5))
        time.sleep(settle)
        after, running = server.rss_kib(), threads(server.proc.pid)
    return (after - before) / clients, running


def hog(address, nbytes: int = 64 << 20, timeout: float = 2.0) -> dict:
    """A client sends up to ``nbytes`` to an echo server and never reads; meanwhile, is
    another client still echoed? Returns what the hog got in before the server stopped
    reading it (its bytes, and the kernels' buffers between), and the answer."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.setblocking(False)
        sent, chunk = 0, b"h" * (1 << 20)
        with contextlib.suppress(BlockingIOError):
            while sent < nbytes:
                sent += sock.send(chunk)
        time.sleep(0.1)
        with contextlib.suppress(BlockingIOError):   # it may have made more room meanwhile
            while sent < nbytes:
                sent += sock.send(chunk)
        served = echo(address, b"still here?", timeout=timeout) == b"still here?"
    return {"bytes the hog got in": sent, "another client served": served}
