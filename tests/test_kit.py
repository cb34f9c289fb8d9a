"""The shared kit: background servers stop, transcripts are deterministic, checks never hang."""
from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import time

import pytest

from lessons.kit import adversary, running
from lessons.kit.check import check, describe_error, expect_value, run_scenario, scenario
from lessons.kit.stream import recv_exactly, recv_message, recv_until_eof, send_message
from lessons.kit.transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, LISTEN, RECV,
                                    SEND, SERVER, SHUTDOWN, Event, causal_order)
from tests.conftest import said_once_per_shortage


def idle_server(listener, stop, log):
    from lessons.kit import accept_until
    conns = []
    for conn, _ in accept_until(listener, stop):
        conns.append(conn)
    for conn in conns:
        conn.close()


def test_running_yields_a_real_port_and_joins_the_thread():
    with running(idle_server) as server:
        assert server.host == "127.0.0.1" and server.port != 0
        assert server.thread.is_alive() and server.thread.daemon
        socket.create_connection(server.address, timeout=2).close()
    assert not server.thread.is_alive()
    with pytest.raises(OSError):  # the port is closed again
        socket.create_connection(server.address, timeout=1).close()


def test_a_crashed_server_is_reraised_on_exit():
    def broken(listener, stop, log):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with running(broken):
            time.sleep(0.05)


def test_stopping_wakes_a_handler_blocked_in_recv():
    from lessons.kit import accept_until
    woke = threading.Event()

    def blocked(listener, stop, log):
        for conn, _ in accept_until(listener, stop):
            with conn:
                conn.recv(1)   # would block forever: the client never sends
                woke.set()

    with running(blocked) as server, adversary.silent(server.address):
        time.sleep(0.1)
        started = time.monotonic()
        server.stop.set()
        assert woke.wait(2.0)
        assert time.monotonic() - started < 1.0


def sample_events():
    """One echo conversation, in a valid per-lane order."""
    return [
        Event(SERVER, LISTEN), Event(CLIENT, CONNECT, "c"), Event(CLIENT, SEND, "c", 5),
        Event(CLIENT, SHUTDOWN, "c"), Event(SERVER, ACCEPT, "c"), Event(SERVER, RECV, "c", 3),
        Event(SERVER, SEND, "c", 3), Event(SERVER, RECV, "c", 2), Event(SERVER, SEND, "c", 2),
        Event(CLIENT, RECV, "c", 5), Event(SERVER, EOF, "c"), Event(SERVER, CLOSE, "c"),
        Event(CLIENT, EOF, "c"), Event(CLIENT, CLOSE, "c"),
    ]


def interleave(events, rng):
    """Arrival order as two threads might produce it: each lane in order, mixed."""
    lanes = {CLIENT: [e for e in events if e.side == CLIENT], SERVER: [e for e in events if e.side == SERVER]}
    out = []
    while lanes[CLIENT] or lanes[SERVER]:
        side = rng.choice([s for s in lanes if lanes[s]])
        out.append(lanes[side].pop(0))
    return out


def test_causal_order_is_the_same_for_every_arrival_order():
    rng = random.Random(7)
    expected = causal_order(sample_events())
    for _ in range(200):
        assert causal_order(interleave(sample_events(), rng)) == expected


def test_causal_order_puts_every_recv_after_the_send_that_fed_it():
    order = causal_order(sample_events())
    position = {id(e): i for i, e in enumerate(order)}
    sent = received = 0
    for e in order:
        if e.side == CLIENT and e.kind == SEND:
            sent += e.nbytes
        if e.side == SERVER and e.kind == RECV:
            received += e.nbytes
            assert received <= sent
    eof = next(e for e in order if e.side == CLIENT and e.kind == EOF)
    close = next(e for e in order if e.side == SERVER and e.kind == CLOSE)
    assert position[id(close)] < position[id(eof)]


def test_causal_order_puts_a_tls_handshake_between_the_accept_and_the_servers_own():
    # The client's handshake ends with the server's answer: after the server's accept,
    # before the server's own "handshake done" (which needs the client's last message).
    from lessons.kit.transcript import HANDSHAKE_DONE, LISTEN, NOTE
    events = [Event(SERVER, LISTEN), Event(CLIENT, CONNECT, "c"),
              Event(CLIENT, NOTE, "c", detail=f"{HANDSHAKE_DONE}: TLSv1.3, verified"),
              Event(CLIENT, SEND, "c", 5), Event(SERVER, ACCEPT, "c"),
              Event(SERVER, NOTE, "c", detail=f"{HANDSHAKE_DONE}: TLSv1.3"), Event(SERVER, RECV, "c", 5)]
    order = [(e.side, e.kind) for e in causal_order(events)]
    assert order.index((SERVER, ACCEPT)) < order.index((CLIENT, NOTE)) < order.index((SERVER, NOTE))
    assert order.index((CLIENT, NOTE)) < order.index((CLIENT, SEND))


def test_transcript_render_has_no_ports_or_addresses():
    from rich.console import Console
    lesson = __import__("importlib").import_module("lessons.02_echo")
    with running(lesson.serve) as server:
        lesson.echo(server.address, b"hello", log=server.log)
        assert server.log.wait_for_event(SERVER, CLOSE)
        console = Console(record=True, width=100)
        console.print(server.log.render())
        text = console.export_text()
    assert str(server.port) not in text and "127.0.0.1" not in text
    assert "recv 5 bytes" in text and "EOF" in text


def test_stream_helpers_over_a_dribbled_connection():
    with adversary.connected_pair() as (ours, theirs):
        payload = b"\x00\x00\x00\x03abc" + b"\x00\x00\x00\x00"
        peer = adversary.play(theirs, [bytes([b]) for b in payload] + ["close"], delay=0.002)
        assert recv_message(ours) == b"abc"
        assert recv_message(ours) == b""
        assert recv_message(ours) is None
        peer.join(2)
    with adversary.connected_pair() as (ours, theirs):
        send_message(theirs, b"x" * 100)
        theirs.shutdown(socket.SHUT_WR)
        assert recv_exactly(ours, 4) == b"\x00\x00\x00\x64"
        assert recv_until_eof(ours) == b"x" * 100


def test_check_cuts_off_a_learner_loop_that_never_ends():
    def spins_on_eof(sock, n):
        data = b""
        while len(data) < n:       # the classic bug: b'' forever, never checked
            data += sock.recv(n)
        return data

    from lessons.exercises import ex02
    started = time.monotonic()
    result = check("spins", spins_on_eof, {"closes early": ex02.RECV_EXACTLY["peer closes early"]}, deadline=0.5)
    assert not result.ok and "no answer within 0.5 s" in result.lines[0][1]
    assert time.monotonic() - started < 3


def test_a_scenario_that_crashes_is_reported_not_raised():
    @scenario("f()", "42")
    def broken(fn, guard):
        raise KeyError("scenario bug")

    outcome = run_scenario(broken, lambda: 42)
    assert not outcome.ok and "KeyError" in outcome.got


def test_errors_are_named_the_same_on_every_os():
    refused = ConnectionRefusedError(111 if hasattr(socket, "AF_UNIX") else 10061, "refused")
    text = describe_error(refused)
    assert text.startswith("ConnectionRefusedError") and "111" not in text
    assert describe_error(NotImplementedError("TODO")) == "NotImplementedError: TODO"


def test_adversaries_against_a_polite_echo():
    lesson = __import__("importlib").import_module("lessons.02_echo")
    with running(lesson.serve) as server:
        assert adversary.half_close(server.address, b"abc") == b"abc"
        assert adversary.dribble(server.address, b"xyz", delay=0.001) == b"xyz"
        adversary.reset(server.address, b"gone")
        with adversary.silent(server.address):
            pass
        assert expect_value("echo", b"ok", lambda: lesson.echo(server.address, b"ok")).ok


def test_equal_events_keep_their_own_place_in_arrival_order():
    # Two UDP round trips whose client lane records nothing to pair them by
    # (who=""): the fallback must place each event by its own arrival, even
    # though the two client recvs are equal as values.
    events = [Event(CLIENT, SEND, "", 17), Event(SERVER, RECV, "client 1", 17), Event(SERVER, SEND, "client 1", 17),
              Event(CLIENT, RECV, "", 17), Event(CLIENT, SEND, "", 17), Event(SERVER, RECV, "client 2", 17),
              Event(SERVER, SEND, "client 2", 17), Event(CLIENT, RECV, "", 17)]
    ordered = causal_order(events)
    assert [e.who for e in ordered if e.side == SERVER] == ["client 1"] * 2 + ["client 2"] * 2
    assert ordered.index(events[6]) < max(i for i, e in enumerate(ordered) if e.side == CLIENT and e.kind == RECV)
    second_reply = [i for i, e in enumerate(ordered) if e.side == CLIENT and e.kind == RECV][1]
    assert second_reply > ordered.index(events[6])   # the reply comes after the server sent it


# --- The command line's host names: anything a person may type gets one line, never a traceback ---

@pytest.mark.parametrize("typed", ["a" * 300, "a..b", ".", "\udcff"])
def test_a_host_name_the_resolver_cannot_even_encode_is_refused_in_one_line(typed):
    import argparse
    from lessons.kit.cli import host_name
    with pytest.raises(argparse.ArgumentTypeError, match="not a host name or address") as refused:
        host_name(typed)
    assert len(str(refused.value)) < 80   # a 300-character name is not repeated in full


def test_a_client_given_an_impossible_host_says_so_without_a_traceback():
    from tests.conftest import run_module
    result = run_module("lessons.02_echo", "client", "hi", "--host", "a" * 300, timeout=20)
    assert result.returncode == 2, result.stderr
    assert "not a host name or address" in result.stderr and "Traceback" not in result.stderr


def test_an_ipv6_address_in_brackets_as_serve_prints_it_is_accepted():
    from lessons.kit.cli import describe_address, host_name
    assert host_name("[::1]") == "::1"
    assert host_name(describe_address(("::1", 9902)).rsplit(":", 1)[0]) == "::1"
    assert host_name(" 127.0.0.1 ") == "127.0.0.1"


# --- What a person types on the command line goes out as typed, even when it is not UTF-8 ---

NOT_UTF8 = "caf\udce9"   # b"caf\xe9" (Latin-1 'café') as Python decodes it from argv


@pytest.mark.parametrize("name, args", [("02_echo", []), ("05_select", []), ("08_asyncio", ["--echo"])])
def test_an_echo_client_sends_argv_bytes_that_are_not_utf8_as_they_came(name, args):
    from tests.conftest import lesson, run_module
    serve = lesson("08_asyncio").serve_echo if name == "08_asyncio" else lesson("02_echo").serve
    log = __import__("lessons.kit.transcript", fromlist=["Transcript"]).Transcript()
    with running(serve, log=log) as server:
        result = run_module(f"lessons.{name}", "client", *args, NOT_UTF8, "--port", str(server.port),
                            timeout=20)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "caf\ufffd\n"
    assert [e.nbytes for e in log.events() if e.kind == RECV] == [4]   # b"caf\xe9", not 5 bytes


def test_the_udp_client_sends_argv_bytes_that_are_not_utf8_as_they_came():
    from tests.conftest import lesson, run_module
    with running(lesson("06_udp").serve, transport="udp") as server:
        result = run_module("lessons.06_udp", "client", NOT_UTF8, "--port", str(server.port), timeout=20)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "caf\ufffd\n"


def test_a_chat_name_from_argv_that_is_not_utf8_is_sent_and_judged_by_the_room():
    from lessons.kit.lineclient import ChatClient
    from tests.conftest import lesson, run_module
    with running(lesson("03_chat").serve) as room, ChatClient(room.address, "watcher") as watcher:
        result = run_module("lessons.03_chat", "client", "--name", NOT_UTF8, "--port", str(room.port),
                            input="/quit\n", timeout=20)
        assert watcher.next_line() == "* caf\ufffd joined"   # the room replaced the byte it could not read
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


# --- The line client holds a bounded backlog: a server faster than its reader is slowed down ---

def test_a_server_flooding_lines_fills_a_bounded_backlog_then_waits_and_nothing_is_lost():
    from lessons.kit.lineclient import QUEUE_LIMIT, LineClient
    line = b"%09d" + b"x" * 990 + b"\n"            # 1,000 bytes each
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        with LineClient(listener.getsockname(), timeout=2) as client:
            server, _ = listener.accept()
            with server:
                server.settimeout(1.0)            # it waits for the client at most this long
                sent = 0
                with contextlib.suppress(socket.timeout):
                    for start in range(0, 100_000, 100):   # 100 MB offered, in batches of 100 lines
                        server.sendall(b"".join(line % n for n in range(start, start + 100)))
                        sent = start + 100
                backlog = client.unread()
                assert sent < 100_000                         # the server was made to wait...
                assert sum(map(len, backlog)) <= QUEUE_LIMIT + len(line)   # ...and the client kept little
                for n in range(sent):                          # every line is there, in order
                    assert client.next_line()[:9] == "%09d" % n


# --- An echo client stops at the first byte more than it sent: an endless stream is not an echo ---

@contextlib.contextmanager
def endless_server(seconds: float = 3.0):
    """A server that sends without end (for at most ``seconds``), whatever it is sent."""
    def serve(listener, stop, log):
        from lessons.kit import accept_until
        for conn, _ in accept_until(listener, stop, idle_timeout=1.0):
            with conn, contextlib.suppress(OSError):
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and not stop.is_set():
                    conn.sendall(b"x" * 65536)

    with running(serve) as server:
        yield server.address


def _asyncio_echo_client(address, message, timeout):
    import asyncio
    from tests.conftest import lesson
    return asyncio.run(lesson("08_asyncio").echo_client(address, message, timeout))


@pytest.mark.parametrize("client", ["lessons.kit.echo:echo", "lessons.02_echo:echo", "08 asyncio"])
def test_an_echo_client_refuses_a_reply_longer_than_its_message(client):
    import importlib
    if client == "08 asyncio":
        echo = _asyncio_echo_client
    else:
        module, name = client.split(":")
        echo = getattr(importlib.import_module(module), name)
    with endless_server() as address:   # (its first 64 KiB are already too many)
        with pytest.raises(ConnectionError, match="more than the 5 bytes sent"):
            echo(address, b"hello", timeout=2.0)


# --- accept() errors that belong to one connection, not to the server (Linux's accept(2)) ---

@pytest.mark.parametrize("name", ["ENETDOWN", "EPROTO", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
                                  "EHOSTUNREACH", "ENETUNREACH", "EPERM"])
def test_accept_until_goes_on_after_an_error_of_one_pending_connection(name):
    import errno
    from lessons.kit.server import Stopper, accept_until
    if not hasattr(errno, name):
        pytest.skip(f"no {name} here")

    class Listener:   # accept() fails once as Linux may ("treat them like EAGAIN"), then serves
        def __init__(self):
            self.calls = 0

        def settimeout(self, _):
            pass

        def accept(self):
            self.calls += 1
            if self.calls == 1:
                raise OSError(getattr(errno, name), name)
            return socket.socket(), ("127.0.0.1", 1)

    stop = Stopper()
    arrivals = accept_until(Listener(), stop)
    conn, _ = next(arrivals)          # the failure was skipped, the next client came
    conn.close()
    stop.set()


# --- Ctrl-C pressed twice, or SIGTERM sent again, while a server stops: still exit 0 ---

@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("name, options", [("02_echo", ()), ("06_udp", ()), ("08_asyncio", ()),
                                           ("08_asyncio", ("--echo",))])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_second_stop_signal_while_stopping_changes_nothing(name, options, sig):
    from lessons.kit.processes import ServerProcess
    with ServerProcess.lesson(name, *options) as served:
        with adversary.connect(served.address) if name != "06_udp" else contextlib.nullcontext():
            for _ in range(30):               # one to stop it, then more while it stops and exits
                if not served.alive():
                    break
                served.proc.send_signal(getattr(signal, sig))
                time.sleep(0.005)
            code, err = served.stop(getattr(signal, sig))
    assert code == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


# --- The checkout is found after `pip install .` too (lessons in site-packages). ---

def test_the_workbook_root_is_the_checkout_wherever_the_lessons_are_installed(tmp_path):
    from lessons.kit.processes import ROOT, workbook_root
    assert (ROOT / "benchmarks" / "loadgen.c").exists()           # this checkout, editable
    checkout, site = tmp_path / "clone", tmp_path / "site-packages"
    for folder in (checkout / "benchmarks", checkout / "notebooks", site):
        folder.mkdir(parents=True)
    assert workbook_root(site, here=checkout / "notebooks") == checkout   # Jupyter's directory
    assert workbook_root(site, here=checkout) == checkout                 # pytest's
    assert workbook_root(site, here=tmp_path) == site     # no checkout anywhere: as before


def test_recorded_records_what_escapes_a_thread_and_prints_nothing(capsys):
    from lessons.kit.threaded import recorded
    from lessons.kit.transcript import Transcript
    log = Transcript()
    thread = threading.Thread(target=recorded(lambda x: [][x], log), args=(3,), daemon=True)
    thread.start()
    thread.join(2)
    assert [e.detail for e in log.events()] == ["thread crashed: IndexError"]
    assert capsys.readouterr().err == ""


# --- Stopping an asyncio server after a connection ended by sending the last of its data ---

def test_stopping_after_a_protocol_closed_with_data_queued_and_then_sent_it():
    """transport.close() with data queued, then sent: asyncio lets go of the transport's loop
    without counting the connection lost, so abort() on it raised AttributeError, and
    Serving.close() with it (test_ten_mebibytes[08 asyncio Protocol], 1 run in 2 on 6 workers)."""
    import asyncio

    from lessons.kit.aio import Serving
    from lessons.kit.transcript import Transcript

    data = b"x" * (32 << 20)   # more than loopback's buffers take at once: close() has some queued

    class SayAndLeave(asyncio.Protocol):
        def connection_made(self, transport):
            transport.write(data)
            transport.close()

        def connection_lost(self, exc):
            lost.set()

    async def go():
        listener = socket.create_server(("127.0.0.1", 0))
        async with await Serving.protocols(lambda who: SayAndLeave(), listener, Transcript()) as serving:
            reader, writer = await asyncio.open_connection(*serving.address)
            received = await asyncio.wait_for(reader.read(), 20)   # until EOF: every byte was sent
            await asyncio.wait_for(lost.wait(), 5)
            assert [t.is_closing() and t.get_write_buffer_size() for t in serving.transports] == [0]
            writer.close()
        return len(received)

    lost = asyncio.Event()
    assert asyncio.run(go()) == len(data)


def test_a_connection_task_cancelled_before_it_ran_closes_its_socket():
    """Serving.close() can cancel a client's task that the loop has not run yet (accepted
    just before): its coroutine then never runs a line, and its socket was left open."""
    import asyncio

    from lessons.kit.aio import Serving
    from lessons.kit.transcript import Transcript

    ran = []

    async def connected(conn, who):
        ran.append(who)
        conn.close()

    async def go():
        with socket.create_server(("127.0.0.1", 0)) as listener:
            serving = Serving(listener, Transcript())
            ours, theirs = socket.socketpair()
            with ours:
                first = serving._spawn(connected, theirs, "client 1")
                first.cancel()                      # before its first step
                await asyncio.gather(first, return_exceptions=True)
                assert theirs.fileno() == -1 and ran == [] and not serving.unstarted
                ours2, theirs2 = socket.socketpair()
                with ours2:
                    await serving._spawn(connected, theirs2, "client 2")   # ran: its own to close
                assert ran == ["client 2"] and not serving.unstarted

    asyncio.run(go())


@pytest.mark.parametrize("log, episodes", [
    ("error  out of file descriptors (EMFILE)\nnote   descriptors free again\n", 1),
    ("error  out of file descriptors\nnote   descriptors free again\n" * 2, 2),
    ("", None),                                                             # never said
    ("error  out of file descriptors\n" * 2 + "note   descriptors free again\n", None),   # twice
    ("error  out of file descriptors\n", None),                            # never over
    ("error  out of file descriptors\nnote   descriptors free again\n" * 6, None),       # a flood
])
def test_said_once_per_shortage_checks_what_a_server_logged(log, episodes):
    if episodes is None:
        with pytest.raises(AssertionError):
            said_once_per_shortage(log)
    else:
        assert said_once_per_shortage(log) == episodes
