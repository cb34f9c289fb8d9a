"""Lesson 04: the tutorial's one line, what a non-blocking socket does, what the polling loop costs,
and a server that lets go of silent clients and survives running out of descriptors."""
from __future__ import annotations

import contextlib
import functools
import signal
import socket
import sys
import threading
import time

import pytest

from lessons.kit import adversary, running
from lessons.kit.echo import echo
from lessons.kit.processes import ServerProcess
from lessons.kit.transcript import CLOSE, READY, SERVER, Transcript
from tests.conftest import lesson, run_module, said_once_per_shortage

polling = lesson("04_nonblocking")


def test_the_tutorial_line_ends_the_server_when_nobody_is_waiting():
    replies, ended = polling.run_tutorial_line(waiting=0)
    assert replies == [] and ended == "BlockingIOError (EAGAIN)"


def test_the_tutorial_line_serves_who_was_queued_then_ends():
    replies, ended = polling.run_tutorial_line(waiting=2)
    assert replies == [b"message 1", b"message 2"] and ended == "BlockingIOError (EAGAIN)"


def test_the_tutorial_listing_is_the_tutorials_code():
    import inspect
    code = inspect.getsource(polling.tutorial_server_nonblocking)
    for line in ["server_socket.setblocking(0)  # 设置为非阻塞", "client_socket, addr = server_socket.accept()",
                 "data = client_socket.recv(1024)", "if not data:", "client_socket.send(data)",
                 "client_socket.close()"]:
        assert line in code
    changed = [l for l in code.splitlines()[2:] if l.strip() and not l.strip().startswith("#")
               and l.strip() not in {"server_socket.setblocking(0)  # 设置为非阻塞", "break",
                                     "client_socket, addr = server_socket.accept()",
                                     "data = client_socket.recv(1024)", "if not data:",
                                     "client_socket.send(data)", "client_socket.close()"}]
    assert changed and all("# (ours" in l for l in changed), changed


def test_would_block_examples():
    assert polling.would_block_examples() == {
        "accept() with no client waiting": "BlockingIOError (EAGAIN)",
        "recv() with nothing arrived": "BlockingIOError (EAGAIN)",
        "send() once the buffers are full": "BlockingIOError (EAGAIN)",
        "a send() took only part of the megabyte first": True,
        "recv() after the peer's FIN": "b''",
    }


@pytest.mark.parametrize("mode, flag, took", [("blocking", False, "all of it"),
                                              ("timeout", True, "part of it"),
                                              ("non-blocking", True, "part of it")])
def test_one_big_send_waits_only_on_a_blocking_socket(mode, flag, took):
    seen = polling.one_big_send(mode)
    assert seen["send() took"] == took
    if sys.platform != "win32":   # a timeout is a non-blocking descriptor inside
        assert seen["O_NONBLOCK set on the descriptor"] is flag


def test_the_loop_keeps_trying_while_everyone_is_idle():
    counters = polling.Counters()
    log = Transcript()
    with running(functools.partial(polling.serve, nap=0, counters=counters), log=log) as server:
        with adversary.silent(server.address), adversary.silent(server.address):
            assert echo(server.address, b"hi") == b"hi"
            passes, deadline = counters.passes, time.monotonic() + 5
            while counters.passes < passes + 1000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert counters.passes >= passes + 1000
    # Nearly every pass found nothing: that is the cost of polling.
    assert counters.idle_passes > 0.9 * counters.passes
    busy = [e for e in log.events(SERVER) if e.kind == READY]
    assert busy and all(e.detail.startswith("tried all; ") for e in busy)


def test_idle_cost_reports_a_measurement():
    result = polling.idle_cost(nap=0.001, clients=3, seconds=0.1)
    assert set(result) == {"cpu per second", "passes per second"}
    assert result["passes per second"] > 0


def test_output_limit_stops_reading_from_a_client_that_does_not_read():
    with running(polling.serve) as server, socket.create_connection(server.address, timeout=5) as hog:
        hog.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 256 * 1024 * 1024:
                sent += hog.send(b"h" * (1 << 20))
        # It stopped reading us long before 256 MB: the server holds at most its limit.
        assert sent < 64 * 1024 * 1024


# --- Idle timeout (issue 15), in process and from the command line. ---

def dribble_for(address, seconds: float, gap: float) -> bytes:
    """Send a byte every ``gap`` seconds for ``seconds``, half-close, return the whole echo."""
    count = int(seconds / gap)
    return adversary.dribble(address, b"d" * count, delay=gap, timeout=seconds + 3)


def silent_then_dropped(address, within: float) -> bool:
    """Connect, say nothing; True if the server closes the connection within ``within`` s."""
    with adversary.connect(address, timeout=within) as sock:
        try:
            return sock.recv(1) == b""
        except socket.timeout:
            return False


def test_a_silent_client_is_let_go_and_an_active_one_stays():
    log = Transcript()
    with running(functools.partial(polling.serve, idle_timeout=0.5), log=log) as server:
        box = []
        dribbler = threading.Thread(target=lambda: box.append(dribble_for(server.address, 1.0, 0.1)))
        dribbler.start()
        assert silent_then_dropped(server.address, within=2.0)
        dribbler.join(5)
    assert box == [b"d" * 10]   # a byte every 0.1 s for 1 s: two timeouts long, never idle
    idle = [e for e in log.events(SERVER) if e.kind == CLOSE and "idle" in e.detail]
    assert [e.detail for e in idle] == ["idle for 0.5 s"]


def check_idle_timeout_from_the_command_line(name: str, *options: str) -> None:
    """``serve --idle-timeout 1``: a silent client is dropped; one that sends a byte every
    0.25 s for 1.5 s (longer than the timeout, never silent for it) stays."""
    with ServerProcess.lesson(name, "--idle-timeout", "1", *options) as served:
        box = []
        dribbler = threading.Thread(target=lambda: box.append(dribble_for(served.address, 1.5, 0.25)))
        dribbler.start()
        assert silent_then_dropped(served.address, within=3.0)
        dribbler.join(6)
        code, err = served.stop(signal.SIGTERM)
    assert box == [b"d" * 6]
    assert code == 0 and "idle for 1 s" in err and "Traceback" not in err


def test_idle_timeout_from_the_command_line():
    check_idle_timeout_from_the_command_line("04_nonblocking")


@pytest.mark.parametrize("value", ["-1", "inf", "soon"])
def test_idle_timeout_out_of_range_is_refused(value):
    result = run_module("lessons.04_nonblocking", "serve", "--idle-timeout", value)
    assert result.returncode == 2 and "--idle-timeout" in result.stderr
    assert "Traceback" not in result.stderr


# --- Out of descriptors (issue 12): keep serving, refuse nobody for good, say so once. ---

LOW_LIMIT = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
runpy.run_module("lessons.{name}", run_name="__main__", alter_sys=True)
"""


def with_fd_limit(name: str, soft: int, hard: int, *options: str) -> ServerProcess:
    """``python -m lessons.NAME serve OPTIONS`` in a child whose open-file limit is (soft, hard)."""
    return ServerProcess(["-c", LOW_LIMIT.format(soft=soft, hard=hard, name=name), "serve", *options])


def check_out_of_descriptors(name: str, *options: str) -> None:
    """60 descriptors for 80 clients: the first keep being served, the rest wait in the
    listen queue, the server says so once, and serves them as soon as others leave."""
    if sys.platform == "win32":
        pytest.skip("no RLIMIT_NOFILE on Windows")
    with with_fd_limit(name, 60, 60, "--idle-timeout", "0", *options) as served, \
            contextlib.ExitStack() as stack:
        clients = [stack.enter_context(adversary.connect(served.address, timeout=3)) for _ in range(80)]
        first, last = clients[0], clients[-1]
        assert exchange(first, b"still served") == b"still served"   # the first ones: served
        last.sendall(b"waiting")                                      # the last: queued, unserved
        last.settimeout(0.3)
        with pytest.raises(socket.timeout):
            last.recv(100)
        for sock in clients[1:41]:                                    # 40 leave...
            sock.close()
        last.settimeout(3)
        assert last.recv(100) == b"waiting"                           # ...and the last is served
        assert exchange(first, b"and again") == b"and again"
        code, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    assert said_once_per_shortage(err) >= 1 and "Traceback" not in err


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(len(data) + 10)


def test_running_out_of_descriptors_pauses_accepting_and_recovers():
    check_out_of_descriptors("04_nonblocking")


def test_serve_raises_its_own_descriptor_limit():
    if sys.platform == "win32":
        pytest.skip("no RLIMIT_NOFILE on Windows")
    with with_fd_limit("04_nonblocking", 60, 4096) as served, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(adversary.connect(served.address, timeout=3)) for _ in range(80)]
        assert exchange(clients[-1], b"last") == b"last"   # room for every one at once
        code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "raised this process's open-file limit from 60 to 4096" in err
    assert "out of file descriptors" not in err
