"""The fast echo server (lessons/kit/fastecho.py) on each of its loops (epoll, splice, portable
selectors): backpressure, its transcript, its command line; the measured steps echo; the C
yardstick compiles and echoes. Lesson 02's contract for each loop: tests/test_echo_servers.py."""
from __future__ import annotations

import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from lessons.kit import adversary, fastecho, running
from lessons.kit.echo import echo
from lessons.kit.processes import ServerProcess
from lessons.kit.transcript import ACCEPT, CLOSE, EOF, ERROR, SERVER
from tests.conftest import ROOT, run_module

LOOPS = {"portable": fastecho.serve_portable}
if hasattr(select, "epoll"):
    LOOPS = {"epoll": fastecho.serve_epoll, **LOOPS}
if hasattr(select, "epoll") and hasattr(os, "splice"):
    LOOPS["splice"] = fastecho.serve_splice
MIB = 1024 * 1024


@pytest.fixture(params=list(LOOPS), ids=list(LOOPS))
def server(request):
    with running(LOOPS[request.param]) as srv:
        yield srv


# Lesson 02's echo contract for each loop is in tests/test_echo_servers.py (which takes
# these loops too); here, what is the fast server's own.

def test_a_client_that_never_reads_is_stopped_and_holds_up_nobody(server):
    with socket.create_connection(server.address, timeout=5) as hog:
        hog.setblocking(False)
        sent = 0
        try:
            while sent < 64 * MIB:    # its echo backs up; the server must stop reading it
                sent += hog.send(b"h" * MIB)
        except BlockingIOError:
            pass
        assert sent < 64 * MIB, "the server kept reading a client that never reads"
        assert echo(server.address, b"still answered", timeout=2) == b"still answered"


def test_the_transcript_shows_who_came_and_went_not_each_message(server):
    assert echo(server.address, b"once") == b"once"
    assert server.log.wait_for(lambda evs: any(e.kind == CLOSE for e in evs), timeout=2)
    kinds = [e.kind for e in server.log.events(SERVER)]
    assert kinds[1:] == [ACCEPT, EOF, CLOSE]    # after "listen": no recv or send events


def test_a_reset_is_recorded_as_an_error_of_that_client(server):
    adversary.reset(server.address, b"then gone")
    assert server.log.wait_for(lambda evs: any(e.kind == CLOSE for e in evs), timeout=2)
    assert [(e.kind, e.who) for e in server.log.events(SERVER) if e.kind in (ERROR, CLOSE)] \
        in ([(ERROR, "client 1"), (CLOSE, "client 1")], [(CLOSE, "client 1")])


def test_without_epoll_serve_falls_back_to_selectors(monkeypatch):
    monkeypatch.delattr(select, "epoll", raising=False)   # as on macOS or Windows
    with running(fastecho.serve) as server:
        assert echo(server.address, b"no epoll here") == b"no epoll here"
        assert adversary.flood(server.address, MIB) == adversary.flood_pattern(MIB)


def test_command_line_serves_and_stops_cleanly_on_sigterm():
    server = ServerProcess(["-m", "lessons.kit.fastecho", "--quiet"])
    try:
        assert echo(server.address, b"from the command line") == b"from the command line"
    finally:
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(10)
        server.stop()
    assert code == 0


def test_command_line_rejects_a_bad_port():
    done = run_module("lessons.kit.fastecho", "--port", "70000")
    assert done.returncode == 2
    assert "port must be between 0 and 65535" in done.stderr
    assert "Traceback" not in done.stderr


# --- The C yardstick. ---

COMPILER = shutil.which("cc") or shutil.which("gcc")


@pytest.mark.skipif(not COMPILER or not sys.platform.startswith("linux"), reason="needs a C compiler and epoll")
def test_the_c_echo_server_compiles_echoes_and_stops_on_sigterm(tmp_path: pathlib.Path):
    binary = tmp_path / "echo_c"
    built = subprocess.run([COMPILER, "-O2", "-Wall", "-Werror", "-o", str(binary),
                            str(ROOT / "benchmarks" / "echo_c.c")], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    proc = subprocess.Popen([str(binary), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        address = ("127.0.0.1", int(line.rsplit(":", 1)[1]))
        assert echo(address, b"hello from C") == b"hello from C"
        assert echo(address, b"") == b""
        adversary.reset(address, b"half a message")
        assert adversary.dribble(address, b"drip", delay=0.003) == b"drip"
        assert adversary.flood(address, 4 * MIB, timeout=20) == adversary.flood_pattern(4 * MIB)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# --- The measured steps (benchmarks/fast_echo_steps.py) echo correctly too. ---

def _steps():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import fast_echo_steps
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return fast_echo_steps.STEPS


STEPS = _steps() if hasattr(select, "epoll") else {}


@pytest.mark.parametrize("name", list(STEPS))
def test_every_measured_step_echoes(name):
    with running(STEPS[name]) as server:
        assert echo(server.address, b"step") == b"step"
        assert adversary.flood(server.address, MIB) == adversary.flood_pattern(MIB)
        adversary.reset(server.address, b"gone")
        assert echo(server.address, b"still here") == b"still here"
        assert server.errors == []


@pytest.mark.skipif(not STEPS, reason="the steps use epoll")
def test_the_benchmark_starts_a_step_as_it_runs_them():
    # fast_echo.py starts each step as "fast_echo_steps.py STEP --port 0" and reads the
    # first line: a broken command line shows here, not ten minutes into a benchmark.
    with ServerProcess([str(ROOT / "benchmarks" / "fast_echo_steps.py"), "3-quiet"]) as server:
        assert echo(server.address, b"step 3") == b"step 3"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sets a descriptor limit in a child process")
def test_out_of_descriptors_it_pauses_accepting_and_resumes_when_a_client_leaves():
    # A server process allowed 40 descriptors, and 60 clients: those it cannot
    # accept wait in the backlog until earlier ones leave; none is lost.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); "
            "from lessons.kit.fastecho import main; sys.exit(main(sys.argv[1:]))")
    server = ServerProcess(["-c", code, "--quiet"])
    clients = []
    try:
        for i in range(60):
            sock = socket.create_connection(server.address, timeout=5)
            sock.sendall(b"client %d" % i)
            clients.append(sock)
        for i, sock in enumerate(clients):
            assert sock.recv(100) == b"client %d" % i
            sock.close()
        assert echo(server.address, b"after the crowd") == b"after the crowd"
        assert server.alive()
    finally:
        for sock in clients:
            sock.close()
        server.stop()
