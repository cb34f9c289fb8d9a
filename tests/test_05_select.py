"""Lesson 05 specifics: the tutorial's flaws, FD_SETSIZE, and the readiness timeline."""
from __future__ import annotations

import contextlib
import socket

import pytest

from lessons.kit import adversary, running
from lessons.kit.server import raise_fd_limit
from lessons.kit.transcript import ERROR, READY, Transcript
from tests.conftest import lesson

multiplexed = lesson("05_select")
echo = lesson("02_echo")
MANY = 1100   # client sockets; with their server ends, well past FD_SETSIZE


@pytest.fixture
def enough_descriptors():
    _, limit = raise_fd_limit(4 * MANY)
    if limit and limit < 3 * MANY:
        pytest.skip(f"open-file limit {limit} is too low for this test")


def exchange(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return sock.recv(len(data) + 10)


@pytest.mark.parametrize("serve", [multiplexed.serve_select, multiplexed.make_serve("select")],
                         ids=["select()", "selectors/select"])
def test_select_refuses_what_it_cannot_watch_and_keeps_serving(serve, enough_descriptors):
    log = Transcript()
    with running(serve, log=log) as server, contextlib.ExitStack() as stack:
        first = stack.enter_context(adversary.connect(server.address))
        assert exchange(first, b"before") == b"before"
        clients = [stack.enter_context(adversary.connect(server.address)) for _ in range(MANY)]
        assert exchange(first, b"during") == b"during"     # still serving the early ones
        refused = [e for e in log.events() if e.kind == ERROR and "FD_SETSIZE" in e.detail]
        assert refused, "expected some clients refused past FD_SETSIZE"
        last = clients[-1]                                  # its server end was beyond the limit
        last.settimeout(2)
        assert last.recv(10) == b""                         # refused: closed, not crashed
    assert server.errors == []


def test_epoll_or_default_serves_past_fd_setsize(enough_descriptors):
    with running(multiplexed.make_serve("default")) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(adversary.connect(server.address)) for _ in range(MANY)]
        for i in (0, MANY // 2, MANY - 1):
            assert exchange(clients[i], b"x%d" % i) == b"x%d" % i
    assert server.errors == []


def test_plain_select_raises_past_fd_setsize(enough_descriptors):
    import select
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(multiplexed.FD_SETSIZE + 5)]
        high = max(socks, key=lambda s: s.fileno())
        assert high.fileno() >= multiplexed.FD_SETSIZE
        with pytest.raises(ValueError, match="filedescriptor out of range"):
            select.select([high], [], [], 0)


def test_the_tutorial_loop_is_not_an_echo_and_spins_after_a_client_leaves():
    flaws = multiplexed.naive_flaws()
    assert flaws["reply"] == b"Hello, world!"
    assert flaws["wake-ups in 0.05 s"] > 100
    assert flaws["woken by the dead socket"]


def test_write_interest_only_while_output_waits():
    log = Transcript()
    with running(multiplexed.make_serve("default"), log=log) as server:
        assert echo.echo(server.address, b"small") == b"small"
        assert echo.echo(server.address, b"more") == b"more"
    wakeups = [e.detail for e in log.events() if e.kind == READY]
    # Small echoes are sent at once from the read handler: nothing ever waits to be
    # written, so no wake-up is for writability.
    assert wakeups and not any("writable" in w for w in wakeups)


def test_timeline_names_sockets_without_ports():
    from rich.console import Console
    log = Transcript()
    with running(multiplexed.make_serve("default"), log=log) as server:
        echo.echo(server.address, b"hello")
    console = Console(record=True, width=120)
    console.print(log.timeline())
    text = console.export_text()
    assert "listener readable" in text and "client 1 readable" in text and "recv 5 bytes" in text
    assert str(server.port) not in text
