"""The lab's load generators and yardsticks: C programs when a compiler is present, Python otherwise.

A load generator written in Python tops out near the rate of the Python
servers it measures, so a benchmark of a fast server would measure the
generator. Where a C compiler is present (and the platform has epoll),
``benchmarks/loadgen.c`` does the work instead: the same protocol and the
same byte-for-byte checks as :mod:`.loadgen`, in a fraction of the CPU. Where
the platform allows, the server gets one core and the load generator another
(``os.sched_setaffinity``), so that they do not take turns on one.

    generator = load_generator()                 # C if it builds, else Python
    with pinned(generator.cpus):                 # (the Python one runs in this process)
        result = generator.run(address, connections=10, size=1024, duration=3, idle=1000)
    result.requests_per_second, result.generator_cpu_seconds

:func:`build` compiles a C program from ``benchmarks/`` once (kept in a cache
folder by a hash of its source) and returns its path, or None.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .loadgen import LoadResult, require_loopback, run_load
from .processes import ROOT

BENCHMARKS = ROOT / "benchmarks"   # the C sources: in the checkout, not in the package
FAILURES = {   # loadgen.c's one-word failures, as the Python generator words them
    "server_stopped_answering": "server stopped answering", "timed_out_connecting": "timed out connecting",
    "connect:ECONNREFUSED": "connect failed: ECONNREFUSED", "connect": "connect failed",
    "out_of_descriptors": "the load generator ran out of file descriptors", "socket": "socket() failed",
    "not_started": "the load generator was not told to start",
}


def compiler() -> Optional[str]:
    """A C compiler on PATH, or None."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(source: str) -> Optional[str]:
    """Compile ``benchmarks/SOURCE`` with -O2 (once: cached by a hash of the source); its path or None.

    None where there is no compiler, no epoll (the programs use it: Linux
    only), no benchmarks folder (an installed copy) or the build fails.
    """
    path = BENCHMARKS / source
    cc = compiler()
    if not cc or not sys.platform.startswith("linux") or not path.exists():
        return None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = pathlib.Path(tempfile.gettempdir()) / f"socket-workbook-{os.getuid()}"
    binary = cache / f"{path.stem}-{digest}"
    if binary.exists():
        return str(binary)
    cache.mkdir(mode=0o700, exist_ok=True)
    partial = cache / f"{binary.name}.{os.getpid()}.part"   # then renamed: a parallel build never sees half a file
    done = subprocess.run([cc, "-O2", "-o", str(partial), str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return None
    os.replace(partial, binary)
    return str(binary)


def core_plan() -> tuple[Optional[set], Optional[set]]:
    """(server cores, load generator cores): one core for the server, the others for the load;
    (None, None) where there is one core or no way to pin (macOS, Windows)."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, set(cores[1:])


@contextlib.contextmanager
def pinned(cpus: Optional[set]):
    """Run this process on ``cpus`` for the duration of the block (nothing if None)."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class LoadGenerator:
    """One way to make load: ``loadgen.c`` (``binary`` set) or :func:`.loadgen.run_load` in this process."""
    name: str
    binary: Optional[str] = None
    cpus: Optional[set] = None          # the cores it runs on, when pinned

    def run(self, address, connections: int, size: int = 1024, duration: float = 3.0, idle: int = 0,
            on_opened: Optional[Callable[[], None]] = None, stall_timeout: float = 10.0,
            connect_timeout: float = 30.0, on_done: Optional[Callable[[], None]] = None) -> LoadResult:
        """``connections`` busy (one message in flight on each) for ``duration`` s while ``idle`` others
        stay open; ``on_opened()`` runs once all are open, before the load starts, and ``on_done()``
        after the last reply, before any connection closes."""
        if self.binary is None:
            with pinned(self.cpus):
                return run_load(address, connections, size=size, duration=duration, idle=idle,
                                on_opened=on_opened, stall_timeout=stall_timeout, connect_timeout=connect_timeout,
                                on_done=on_done)
        return _run_c(self.binary, self.cpus, address, connections, size, duration, idle, on_opened,
                      stall_timeout, connect_timeout, on_done)


def load_generator(prefer_c: bool = True) -> LoadGenerator:
    """``loadgen.c`` if it builds here (and ``prefer_c``), else the Python one; pinned where possible."""
    _, load_cpus = core_plan()
    binary = build("loadgen.c") if prefer_c else None
    if binary:
        return LoadGenerator("loadgen.c (C, epoll)", binary, load_cpus)
    return LoadGenerator("the Python load generator (lessons/kit/loadgen.py)", None, load_cpus)


def _run_c(binary, cpus, address, connections, size, duration, idle, on_opened, stall_timeout,
           connect_timeout, on_done) -> LoadResult:
    host, port = address[:2]
    require_loopback(host)
    command = [binary, host, str(port), str(connections), str(size), f"{duration:g}", "--idle", str(idle),
               "--stall", f"{stall_timeout:g}", "--connect-timeout", f"{connect_timeout:g}", "--wait"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    try:   # the child never outlives this call: an exception here (SIGTERM made one, say) kills it
        # The conversation: "opened" -> on_opened(), "go"; the result line -> on_done(), "bye".
        line = _readline(proc, connect_timeout + 10)
        if line.strip() == "opened":
            if on_opened:
                on_opened()
            _tell(proc, "go")
            line = _readline(proc, duration + stall_timeout + 30)
        if line.startswith("requests="):
            if on_done:
                on_done()
            _tell(proc, "bye")
        else:   # no result in time: stop it (which also ends the reader)
            proc.kill()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    fields = dict(pair.split("=", 1) for pair in (line + out).split() if "=" in pair)
    result = LoadResult(connections, size, idle=idle)
    try:
        result.requests, result.wrong_replies = int(fields["requests"]), int(fields["wrong"])
        result.errors, result.seconds = int(fields["errors"]), float(fields["seconds"])
        result.answered, result.opened = int(fields["answered"]), int(fields["opened"])
        result.idle_opened, result.idle_closed = int(fields["idle_opened"]), int(fields["idle_closed"])
        result.generator_cpu_seconds = float(fields["cpu_s"])
        result.failure = "" if fields["failure"] == "none" else FAILURES.get(fields["failure"], fields["failure"])
        if result.requests:
            result.quantiles = {0.5: float(fields["p50_us"]) / 1e6, 0.99: float(fields["p99_us"]) / 1e6}
    except (KeyError, ValueError):
        result.failure = f"loadgen.c failed: {(err or out).strip()[:200] or f'exit {proc.returncode}'}"
    return result


def _tell(proc: subprocess.Popen, word: str) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        proc.stdin.write(word + "\n")
        proc.stdin.flush()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""
