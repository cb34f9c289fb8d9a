"""Shared fixtures: lesson modules by name, and a leak check around every test."""
from __future__ import annotations

import gc
import importlib
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def lesson(name: str):
    """Import a lesson module whose name starts with a digit (lessons.02_echo)."""
    return importlib.import_module(f"lessons.{name}")


def solution(name: str):
    return importlib.import_module(f"solutions.{name}")


def notebook_exercise(notebook: str, function: str):
    """The stub a learner starts from: exec the notebook cell that defines it."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        defines = f"def {function}(" in source or f"class {function}" in source
        if cell["cell_type"] == "code" and defines and "TODO" in source:
            # What the notebook imported before this cell; and no inherited
            # `from __future__` flags, so the stub is compiled as in the notebook.
            namespace: dict = {"socket": socket, "struct": struct}
            exec(compile(source, f"{notebook}:{function}", "exec", dont_inherit=True), namespace)
            return namespace[function], source
    raise LookupError(f"no exercise cell defining {function}() in {notebook}")


@pytest.fixture(scope="session", autouse=True)
def frozen_heap():
    """Move everything imported so far out of the collector's sight, once.

    Installed plugins (nbval brings Jupyter's libraries) leave some 180,000
    objects, and the full gc.collect() after every test below walked them all:
    0.2 to 0.3 s a test, more than most tests take. Objects a test makes are
    still collected, so an unclosed socket still warns inside its test.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves threads running; surface unclosed sockets in it."""
    before = set(threading.enumerate())
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    # A test must leave Ctrl-C and SIGTERM as it found them: an ignored signal (SIG_IGN)
    # is inherited by every child process this worker starts afterwards.
    changed = {sig.name for sig, handler in handlers.items() if signal.getsignal(sig) != handler}
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            break
        time.sleep(0.02)
    # An unclosed socket warns here, inside this test, as an error. With the heap
    # frozen (above), a full collection walks only what the tests made: milliseconds.
    gc.collect()
    assert not extra, f"threads left running: {sorted(t.name for t in extra)}"
    assert not changed, f"the test changed the process's handlers of {sorted(changed)}"


def run_module(*args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` the way a learner would, with a deadline."""
    env = dict(os.environ, PYTHONWARNINGS="error::ResourceWarning", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, **kwargs)


def said_once_per_shortage(err: str) -> int:
    """How many times a server ran out of descriptors, checking from its log (``err``)
    that it said so once each time and that each time ended ("descriptors free again").

    A shortage can come back: clients that leave all at once free descriptors one by
    one, and the listen queue can take them all again before the last are freed. What
    must never happen is a line per failed accept() (asyncio's did: 15,536 in 5 s)."""
    said = [line for line in err.splitlines()
            if "out of file descriptors" in line or "descriptors free again" in line]
    assert said, f"the server never said it was out of descriptors:\n{err}"
    for i, line in enumerate(said):
        expected = "out of file descriptors" if i % 2 == 0 else "descriptors free again"
        assert expected in line, f"line {i + 1} of these should say {expected!r}:\n" + "\n".join(said)
    assert len(said) % 2 == 0, "the last shortage never ended:\n" + "\n".join(said)
    assert len(said) <= 10, f"{len(said) // 2} shortages: a flood, not a few:\n" + "\n".join(said)
    return len(said) // 2
