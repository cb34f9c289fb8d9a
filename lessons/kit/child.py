"""A peer in a child process that you can pause, resume, signal and kill; always reaped.

    with Child.run(connect_and_wait, port) as child:   # connect_and_wait(port), in a fresh Python
        child.expect("connected")                      # its first line, within a timeout
        child.kill()                                   # SIGKILL: its kernel still closes its sockets
    # here the child is gone and reaped, whatever happened in the block

``Child.run`` sends a function's *source* to ``python -c``, so the function must
be self-contained (its imports inside it): what a notebook shows is exactly what
runs. ``Child(argv)`` runs any ``python`` command line instead. ``isolated=True``
runs it as ``python -I`` from ``/``: deaf to PYTHON* variables, the user's
site-packages and this workbook, so it behaves the same for any user (even one
who cannot read the workbook); ``pass_fds`` hands it open descriptors (one end
of a socketpair, say).

Leaving the block always ends the child: SIGCONT first (a stopped process cannot
act on anything else), then SIGKILL, then a bounded wait. Unix only: Windows has
no SIGSTOP, SIGCONT or SIGKILL.
"""
from __future__ import annotations

import inspect
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from typing import Callable, Optional

import psutil

from .processes import ROOT

TIMEOUT = 5.0   # how long any wait on a child may take


class Child:
    """A Python child process with its stdout read line by line, each read with a timeout."""

    def __init__(self, argv: list[str], timeout: float = TIMEOUT, isolated: bool = False,
                 pass_fds: tuple = ()):
        self.timeout = timeout
        flags = ["-I", "-u"] if isolated else ["-u"]
        self.proc = subprocess.Popen([sys.executable, *flags, *argv], cwd="/" if isolated else ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, pass_fds=pass_fds)
        self._buffer = b""
        self._eof = False

    @classmethod
    def run(cls, fn: Callable, *args, timeout: float = TIMEOUT, **options) -> "Child":
        """Run ``fn(*args)`` in a child process; args must be literals (their repr is sent)."""
        # Ctrl-C raises KeyboardInterrupt in the child, as in a program started from a terminal,
        # whatever this process does with SIGINT (ignored, say: a child inherits SIG_IGN).
        code = (f"import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                f"{textwrap.dedent(inspect.getsource(fn))}\n{fn.__name__}(*{args!r})\n")
        return cls(["-c", code], timeout=timeout, **options)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def line(self, timeout: Optional[float] = None) -> Optional[str]:
        """The child's next line of output, without its newline; None once it has
        exited and every line has been read. TimeoutError if no line comes in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer and not self._eof:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"no line from the child within {self.timeout if timeout is None else timeout:g} s")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                self._buffer += chunk
                self._eof = not chunk
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, start: str, timeout: Optional[float] = None) -> str:
        """Read the next line and check that it starts with ``start``; return it."""
        line = self.line(timeout)
        if line is None or not line.startswith(start):
            self.kill()
            raise RuntimeError(f"expected {start!r} from the child, got {line!r}; stderr: {self.stderr()!r}")
        return line

    def signal(self, sig: int) -> None:
        """Send the child a signal, if it is still running."""
        if self.alive():
            self.proc.send_signal(sig)

    def pause(self, timeout: Optional[float] = None) -> None:
        """SIGSTOP: the process stops running, but its kernel keeps its sockets (and ACKs).
        Returns once every thread of it has stopped (a signal arrives a moment after kill())."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._stopped():
            if time.monotonic() > deadline:
                raise TimeoutError("the child did not stop")
            time.sleep(0.002)

    def _stopped(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            tasks = [psutil.Process(t.id) for t in process.threads()] if sys.platform.startswith("linux") else [process]
            return all(task.status() == psutil.STATUS_STOPPED for task in tasks)
        except psutil.NoSuchProcess:
            return True

    def resume(self) -> None:
        """SIGCONT: a paused child runs again."""
        self.signal(signal.SIGCONT)

    def kill(self) -> int:
        """SIGKILL and reap; return the exit status (negative: the signal's number)."""
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        return self.wait()

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the child to exit; kill it if it takes longer than the timeout."""
        try:
            return self.proc.wait(self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            return self.proc.wait(self.timeout)

    def rest(self, timeout: Optional[float] = None) -> list[str]:
        """Every line the child prints until it exits (killed if it overruns the timeout)."""
        lines = []
        try:
            while (line := self.line(timeout)) is not None:
                lines.append(line)
        except TimeoutError:
            self.kill()
        self.wait()
        return lines

    def stderr(self) -> str:
        """What the child wrote to stderr; only once it has exited (kills it if not)."""
        if self.alive():
            self.kill()
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        """End the child if it is still running, reap it, close the pipes."""
        self.kill()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
