"""Servers in child processes, read from outside: their port, CPU time and memory.

Used by the scaling lab (lesson 07) and the benchmarks, which measure each
server in a process of its own so that its numbers are not mixed with the
load generator's.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import subprocess
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent


class ServerProcess:
    """A server in a child process; reads its port, CPU time and memory."""

    def __init__(self, argv: list[str], start_timeout: float = 15.0):
        self.proc = subprocess.Popen([sys.executable, *argv, "--port", "0"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.address = None
        line = _readline(self.proc, start_timeout)
        if not line.startswith("listening on "):
            self.stop()
            code = self.proc.returncode
            raise RuntimeError(f"did not start (exit {code})" if code is not None else "did not start in time")
        host, port = line.split()[-1].rsplit(":", 1)
        self.address = (host, int(port))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        try:
            fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return _ps(self.proc.pid, "time")

    def rss_kib(self) -> int:
        try:
            for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return int(_ps(self.proc.pid, "rss"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


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
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as cpuinfo:
        cpu = next(l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name"))
    return {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "cpu": cpu, "cores": os.cpu_count()}
