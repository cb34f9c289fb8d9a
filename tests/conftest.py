"""Shared fixtures: lesson modules by name, and a leak check around every test."""
from __future__ import annotations

import gc
import importlib
import itertools
import json
import os
import pathlib
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


_tests = itertools.count(1)


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves threads running; surface unclosed sockets in it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            break
        time.sleep(0.02)
    # An unclosed socket warns here, inside this test, as an error. Most are freed
    # by their reference count already; a young cycle is found by collecting the
    # two younger generations (2 ms); a full collection (70 ms) now and then finds the rest.
    gc.collect(2 if next(_tests) % 25 == 0 else 1)
    assert not extra, f"threads left running: {sorted(t.name for t in extra)}"


def run_module(*args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` the way a learner would, with a deadline."""
    env = dict(os.environ, PYTHONWARNINGS="error::ResourceWarning", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env, **kwargs)
