"""Lesson 05: the tutorial's select loop and its real bugs, FD_SETSIZE, level and edge triggering,
the readiness timeline, idle timeouts and running out of descriptors; the exercise's check
against the common wrong answers."""
from __future__ import annotations

import contextlib
import functools
import inspect
import select
import selectors
import socket

import pytest

from lessons.exercises import ex05
from lessons.kit import adversary, probes, running
from lessons.kit.check import run_scenario
from lessons.kit.echo import echo
from lessons.kit.server import raise_fd_limit
from lessons.kit.transcript import CLOSE, ERROR, READY, SERVER, Transcript
from tests.conftest import lesson, run_module
from tests.test_04_nonblocking import (check_idle_timeout_from_the_command_line,
                                       check_out_of_descriptors, dribble_for, exchange,
                                       silent_then_dropped)

multiplexed = lesson("05_select")
MANY = 1100   # client sockets; with their server ends, well past FD_SETSIZE


# --- Step 1: the tutorial's loop, as written, and what is wrong with it. ---

TUTORIAL = """\
inputs = [server_socket]
outputs = []

while inputs:
    readable, writable, exceptional = select.select(inputs, outputs, inputs)

    for s in readable:
        if s is server_socket:
            connection, client_address = s.accept()
            connection.setblocking(0)
            inputs.append(connection)
        else:
            data = s.recv(1024)
            if data:
                outputs.append(s)
            else:
                inputs.remove(s)
                if s in outputs:
                    outputs.remove(s)

    for s in writable:
        s.send(b'Hello, world!')
        outputs.remove(s)

    for s in exceptional:
        inputs.remove(s)
        if s in outputs:
            outputs.remove(s)
"""


def test_the_listing_is_the_tutorials_loop_line_for_line():
    source = inspect.getsource(multiplexed.tutorial_select_loop).splitlines()[2:]   # after the docstring
    lines = [line[4:].rstrip() for line in source if line.strip()]
    ours = [line for line in lines if "# (ours" in line]
    kept = [line for line in lines if "# (ours" not in line]
    changed = ["while inputs:", "    readable, writable, exceptional = select.select(inputs, outputs, inputs)"]
    # Every line not marked (ours) is the tutorial's, in its order; only the marked ones differ.
    assert kept == ["server_socket.setblocking(0)  # 设置为非阻塞"] + [   # from its previous section
        line for line in TUTORIAL.splitlines() if line.strip() and line not in changed]
    assert len(ours) == 6   # the listener, the stop flag, the timeout (2 lines), closing at stop (2)
    assert ours[1].startswith("while inputs and not stop.is_set():")


def test_the_tutorials_loop_answers_hello_not_an_echo_and_once_for_two_messages_read_at_once():
    assert probes.replies(multiplexed.tutorial_select_loop, b"echo me", quiet=0.2) == b"Hello, world!"
    reply = probes.replies(multiplexed.tutorial_select_loop, b"first message" + b"second message",
                           quiet=0.2)
    assert reply == b"Hello, world!"


def test_a_client_that_sends_and_closes_at_once_kills_the_tutorials_loop():
    seen = probes.send_and_close(multiplexed.tutorial_select_loop)
    assert seen == {"the server": "ValueError: list.remove(x): x not in list",
                    "the client waiting its turn got": "nothing within 0.5 s"}


@pytest.mark.parametrize("serve", [multiplexed.serve_select, multiplexed.serve],
                         ids=["select()", "selectors"])
def test_the_fixed_servers_survive_a_client_that_sends_and_closes_at_once(serve):
    assert probes.send_and_close(serve) == {"the server": "still running",
                                            "the client waiting its turn got": "b'my turn?'"}


def test_the_tutorials_loop_leaves_closing_to_the_garbage_collector():
    seen = probes.polite_clients(multiplexed.tutorial_select_loop, clients=6, every=3)
    assert seen["replies"] == {b"Hello, world!": 6}
    assert seen["sockets the garbage collector closed"] == 6    # not one closed by the code
    assert seen["descriptors held after every 3 clients"] == [1, 1]   # the last one, in `s`
    assert seen["server sockets by TCP state"] == {"CLOSE_WAIT": 1}


def test_with_one_more_reference_the_tutorials_loop_leaks_every_socket():
    seen = probes.polite_clients(multiplexed.tutorial_loop_remembering, clients=6, every=3)
    assert seen["descriptors held after every 3 clients"] == [3, 6]
    assert seen["server sockets by TCP state"] == {"CLOSE_WAIT": 6}


@pytest.mark.parametrize("serve", [multiplexed.serve_select, multiplexed.serve],
                         ids=["select()", "selectors"])
def test_the_fixed_servers_close_every_socket_themselves(serve):
    seen = probes.polite_clients(serve, clients=3, every=3)
    assert seen["replies"] == {b"hello": 3}
    assert seen["descriptors held after every 3 clients"] == [0]
    assert seen["server sockets by TCP state"] == {}
    assert seen["sockets the garbage collector closed"] == 0


def test_urgent_data_makes_the_tutorials_loop_drop_a_client_without_closing_it():
    assert probes.urgent_byte(multiplexed.tutorial_select_loop) == {
        "the server": "still running", "the client got": "nothing within 0.5 s"}
    assert probes.urgent_byte(multiplexed.serve) == {
        "the server": "still running", "the client got": "b'still there?'"}


# --- select()'s limit, and readiness. ---

@pytest.fixture
def enough_descriptors():
    _, limit = raise_fd_limit(4 * MANY)
    if limit and limit < 3 * MANY:
        pytest.skip(f"open-file limit {limit} is too low for this test")


@pytest.mark.parametrize("serve", [multiplexed.serve_select,
                                   functools.partial(multiplexed.serve_selectors, selector="select")],
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
    with running(multiplexed.serve) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(adversary.connect(server.address)) for _ in range(MANY)]
        for i in (0, MANY // 2, MANY - 1):
            assert exchange(clients[i], b"x%d" % i) == b"x%d" % i
    assert server.errors == []


def test_plain_select_raises_past_fd_setsize(enough_descriptors):
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(multiplexed.FD_SETSIZE + 5)]
        high = max(socks, key=lambda s: s.fileno())
        assert high.fileno() >= multiplexed.FD_SETSIZE
        with pytest.raises(ValueError, match="filedescriptor out of range"):
            select.select([high], [], [], 0)


@pytest.mark.skipif(not (hasattr(select, "epoll") or hasattr(select, "kqueue")),
                    reason="edge triggering needs epoll or kqueue")
def test_level_triggered_reports_every_time_edge_triggered_once():
    assert multiplexed.times_reported(edge=False) == 3
    assert multiplexed.times_reported(edge=True) == 1


def test_write_interest_only_while_output_waits():
    log = Transcript()
    with running(multiplexed.serve, log=log) as server:
        assert echo(server.address, b"small") == b"small"
        assert echo(server.address, b"more") == b"more"
    wakeups = [e.detail for e in log.events() if e.kind == READY]
    # Small echoes are sent at once after the read: nothing ever waits to be
    # written, so no wake-up is for writability.
    assert wakeups and not any("writable" in w for w in wakeups)


@pytest.mark.parametrize("serve", [multiplexed.serve_select, multiplexed.serve],
                         ids=["select()", "selectors"])
def test_timeline_names_sockets_without_ports(serve):
    from rich.console import Console
    log = Transcript()
    with running(serve, log=log) as server:
        echo(server.address, b"hello")
    console = Console(record=True, width=120)
    console.print(log.timeline())
    text = console.export_text()
    assert "listener readable" in text and "client 1 readable" in text and "recv 5 bytes" in text
    assert str(server.port) not in text


# --- Idle timeouts and running out of descriptors. ---

@pytest.mark.parametrize("serve", [multiplexed.serve_select, multiplexed.serve_selectors],
                         ids=["select()", "selectors"])
def test_a_silent_client_is_let_go_and_an_active_one_stays(serve):
    import threading
    log = Transcript()
    with running(functools.partial(serve, idle_timeout=0.4), log=log) as server:
        box = []
        dribbler = threading.Thread(target=lambda: box.append(dribble_for(server.address, 0.8, 0.1)))
        dribbler.start()
        assert silent_then_dropped(server.address, within=2.0)
        dribbler.join(5)
    assert box == [b"d" * 8]
    assert [e.detail for e in log.events(SERVER) if e.kind == CLOSE and e.detail] == ["idle for 0.4 s"]


@pytest.mark.parametrize("options", [(), ("--fast",)], ids=["default", "fast"])
def test_idle_timeout_from_the_command_line(options):
    check_idle_timeout_from_the_command_line("05_select", *options)


@pytest.mark.parametrize("options", [(), ("--selector", "select"), ("--fast",)],
                         ids=["default", "select", "fast"])
def test_running_out_of_descriptors_pauses_accepting_and_recovers(options):
    check_out_of_descriptors("05_select", *options)


def test_serve_help_names_every_option():
    result = run_module("lessons.05_select", "serve", "--help")
    assert result.returncode == 0
    for option in ("--selector", "--idle-timeout", "--port", "--host", "--quiet"):
        assert option in result.stdout


# --- The exercise's check catches each common mistake. ---

def unregister_after_close(sel, echoer, timeout=0.05):
    """The answer, but closing before unregistering."""
    for key, mask in sel.select(timeout):
        if key.data is None:
            conn = echoer.accept(key.fileobj)
            if conn is not None:
                sel.register(conn.sock, selectors.EVENT_READ, data=conn)
            continue
        conn = key.data
        if mask & selectors.EVENT_READ:
            echoer.readable(conn)
        if conn.output:
            echoer.writable(conn)
        if echoer.finished(conn):
            echoer.close(conn)
            sel.unregister(conn.sock)
        elif multiplexed.interest(conn) != key.events:
            sel.modify(conn.sock, multiplexed.interest(conn), data=conn)


def never_modify(sel, echoer, timeout=0.05):
    """Registered for reading once, never changed."""
    for key, mask in sel.select(timeout):
        if key.data is None:
            conn = echoer.accept(key.fileobj)
            if conn is not None:
                sel.register(conn.sock, selectors.EVENT_READ, data=conn)
            continue
        conn = key.data
        if mask & selectors.EVENT_READ:
            echoer.readable(conn)
        if conn.output:
            echoer.writable(conn)
        if echoer.finished(conn):
            sel.unregister(conn.sock)
            echoer.close(conn)


@pytest.mark.parametrize("wrong, caught_by", [
    (ex05.naive_loop_once, ["an echo", "clients come and go", "idle clients", "a client that never reads"]),
    (unregister_after_close, ["clients come and go"]),
    (never_modify, ["a client that never reads"]),
], ids=["always both, no unregister", "unregister after close", "never modify"])
def test_the_loop_check_catches_each_common_mistake(wrong, caught_by):
    for name in caught_by:
        outcome = run_scenario(ex05.LOOP[name], wrong, deadline=5.0)
        assert not outcome.ok, (name, outcome)


def test_the_lessons_interest_passes_the_exercises_check():
    assert ex05.check_interest(multiplexed.interest).ok
