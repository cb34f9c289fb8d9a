"""Servers in child processes, read from outside: their port, CPU time and memory.

Used by the scaling lab (lesson 07) and the benchmarks, which measure each
server in a process of its own so that its numbers are not mixed with the
load generator's.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import platform
import signal
import subprocess
import sys
import threading
import time


def workbook_root(installed_at: pathlib.Path | None = None, here: pathlib.Path | None = None) -> pathlib.Path:
    """The checkout of the workbook: the directory that holds benchmarks/ and notebooks/.

    The README's install is editable, so the lessons are imported from the checkout
    itself. After ``pip install .`` they come from site-packages instead, and the
    checkout is where Jupyter or pytest runs: a notebook's directory, or the top."""
    installed_at = installed_at or pathlib.Path(__file__).resolve().parent.parent.parent
    here = here or pathlib.Path.cwd()
    for place in (installed_at, here, *here.parents):
        if (place / "benchmarks").is_dir() and (place / "notebooks").is_dir():
            return place
    return installed_at


ROOT = workbook_root()
MAX_LOG = 1 << 20   # bytes of a child's stderr kept (the last ones)


class ServerProcess:
    """A server in a child process, started as a learner would start it; a context manager.

        with ServerProcess.lesson("02_echo") as server:     # python -m lessons.02_echo serve --port 0
            talk_to(server.address)
        server.returncode, server.stderr                    # after it stopped

    It reads the port from the ``listening on HOST:PORT`` line, and can report
    the child's CPU time and memory. Leaving the block stops it with SIGTERM
    (then SIGKILL if it does not stop) and reaps it: nothing is left running.
    """

    def __init__(self, argv: list[str], start_timeout: float = 15.0, env: dict | None = None,
                 cpus: set[int] | None = None, python: bool = True):
        """``argv`` follows ``python`` (or is a program and its arguments, with ``python=False``);
        ``cpus`` pins the child, and every thread it starts, to those cores."""
        command = [sys.executable, *argv] if python else list(argv)
        self.proc = subprocess.Popen([*command, "--port", "0"], cwd=ROOT, text=True, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        self.address = None
        self.returncode: int | None = None
        self.stderr = ""
        # Its log is read as it comes, by a thread of ours: a pipe holds only 64 KiB, and a
        # server that fills it would block in its next log line, every client with it.
        self._log: collections.deque[str] = collections.deque()
        self._log_size = 0
        self._log_reader = threading.Thread(target=self._read_log, name="server-log", daemon=True)
        self._log_reader.start()
        try:   # whatever interrupts the start (Ctrl-C, SIGTERM made an exception), the child must not outlive us
            line = _readline(self.proc, start_timeout)
        except BaseException:
            self.stop()
            raise
        if not line.startswith("listening on "):
            self.stop()
            code = self.returncode
            detail = f": {self.stderr.strip().splitlines()[-1]}" if self.stderr.strip() else ""
            raise RuntimeError((f"did not start (exit {code})" if code is not None else "did not start in time")
                               + detail)
        host, port = line.split()[-1].rsplit(":", 1)
        self.address = (host.strip("[]"), int(port))

    def _read_log(self) -> None:
        """Keep the last MAX_LOG bytes of the child's stderr, until it closes it."""
        for line in self.proc.stderr:
            self._log.append(line)
            self._log_size += len(line)
            while self._log_size > MAX_LOG and len(self._log) > 1:
                self._log_size -= len(self._log.popleft())

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until a line of the child's stderr contains ``text``; False if none did in time.
        (What was logged long ago, beyond the last MAX_LOG bytes, is not searched.)"""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self._log)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @classmethod
    def lesson(cls, name: str, *options: str, **kwargs) -> "ServerProcess":
        """``python -m lessons.NAME serve OPTIONS --port 0``."""
        return cls(["-m", f"lessons.{name}", "serve", *options], **kwargs)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """User plus system CPU time the child has used so far."""
        try:
            fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return _ps(self.proc.pid, "time")

    def rss_kib(self) -> int:
        """The child's resident memory, in KiB."""
        try:
            for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return int(_ps(self.proc.pid, "rss"))

    def open_files(self) -> int | None:
        """How many descriptors the child has open (its sockets among them); None where unknown."""
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> tuple[int, str]:
        """Send ``sig``, wait for the exit (SIGKILL after ``timeout``); return (exit status, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log_reader.join(timeout)   # EOF once the child (and any child of its) has gone
        self.proc.stdout.close()
        if not self._log_reader.is_alive():
            self.proc.stderr.close()
        self.returncode, self.stderr = self.proc.returncode, "".join(self._log)
        return self.returncode, self.stderr

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.returncode is None:
            self.stop()


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def _ps(pid: int, field: str) -> float:
    """Portable fallback (macOS, BSD): ps's rss in KiB, or cumulative cpu time."""
    try:
        out = subprocess.run(["ps", "-o", f"{field}=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    except OSError:
        return 0.0
    if field == "rss":
        return float(out or 0)
    seconds = 0.0
    for part in out.replace("-", ":").split(":"):
        seconds = seconds * 60 + float(part or 0)
    return seconds



def machine() -> dict:
    """The OS, Python version, CPU model and core count: recorded with every measurement."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as cpuinfo:
        cpu = next(l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name"))
    return {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "cpu": cpu, "cores": os.cpu_count()}
