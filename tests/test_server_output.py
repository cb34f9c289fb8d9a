"""A server's own output is never a reason for it to stop, or to stall.

``serve 2>&1 | head -1`` (or a terminal that has gone) leaves the server with
nobody reading its log: its next log line meets a broken pipe. A script that
reads only the ``listening on`` line, and one that has already gone, leave it
with nobody reading stdout. Either way the clients must go on being served and
SIGTERM must still end it with status 0.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lessons.kit.adversary import closed_port
from lessons.kit.processes import ServerProcess, _readline
from tests.conftest import ROOT

TIMEOUT = 5.0
# One server of each kind: the asyncio room (kit.aio) and the thread-per-client servers (kit.cli).
SERVERS = {"08 room": ("08_asyncio",), "08 echo": ("08_asyncio", "--echo"),
           "10 JSON-RPC": ("10_messages",), "11 TLS echo": ("11_tls",)}
# What each server answers to a first line "PING": the first bytes to expect back.
ANSWERS = {"08 room": b"* welcome", "08 echo": b"PING", "10 JSON-RPC": b'{"jsonrpc"', "11 TLS echo": b""}


def broken_pipe() -> int:
    """The write end of a pipe whose read end is already closed: every write meets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def start(args, port: int = 0, **streams) -> subprocess.Popen:
    lesson, *options = args
    return subprocess.Popen([sys.executable, "-m", f"lessons.{lesson}", "serve", *options,
                             "--port", str(port)], cwd=ROOT, text=True, **streams)


def ask(port: int) -> bytes:
    """Connect, send a line, return the first bytes back (b'' if the server hung up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PING\n")
        try:
            return sock.recv(100)
        except ConnectionResetError:   # the TLS server resets a client that does not speak TLS
            return b""


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(TIMEOUT * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("name", SERVERS)
def test_a_server_whose_log_nobody_reads_goes_on(name):
    dead = broken_pipe()
    try:
        proc = start(SERVERS[name], stdout=subprocess.PIPE, stderr=dead)
    finally:
        os.close(dead)
    line = _readline(proc, 15.0)
    assert line.startswith("listening on "), (line, proc.poll())
    port = int(line.rsplit(":", 1)[1])
    # Each connection is logged: the first log line met EPIPE, and rich's answer to that is
    # to exit the process (from whichever thread was logging). Every client must be served.
    answers = [ask(port) for _ in range(3)]
    assert proc.poll() is None, f"the server exited with status {proc.returncode}"
    assert all(answer.startswith(ANSWERS[name]) for answer in answers), answers
    assert stop(proc) == 0


@pytest.mark.parametrize("name", ["10 JSON-RPC", "11 TLS echo"])
def test_a_server_whose_stdout_nobody_reads_goes_on(name):
    port = closed_port()[1]   # it cannot tell us its port: we choose it
    dead = broken_pipe()
    try:
        proc = start(SERVERS[name], port, stdout=dead, stderr=subprocess.DEVNULL)
    finally:
        os.close(dead)
    deadline = time.monotonic() + 15.0
    while True:   # until it listens (or gives up: then the assertion below says how)
        try:
            answer = ask(port)
            break
        except ConnectionRefusedError:
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert proc.poll() is None, f"the server exited with status {proc.returncode}"
    assert answer.startswith(ANSWERS[name])
    assert stop(proc) == 0


def test_server_process_reads_the_log_as_it_comes():
    # 300 KiB of log, more than a pipe holds: unread, the child would block in its next line.
    script = ("import sys; print('listening on 127.0.0.1:9', flush=True)\n"
              "for i in range(10_000): print(f'line {i:05} ' + 'x' * 20, file=sys.stderr)\n")
    with ServerProcess(["-c", script]) as child:
        deadline = time.monotonic() + 10.0
        while child.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child.alive(), "the child is blocked writing its log"
        status, log = child.stop()
    assert status == 0
    assert log.endswith("line 09999 " + "x" * 20 + "\n")
