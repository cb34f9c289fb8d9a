"""Lesson 09: idle timeouts, how connections end (what each side sees, and the TCP states
between), a paused server, CLOSE_WAIT under the tutorial's loop, clean shutdown, the CLI."""
from __future__ import annotations

import contextlib
import functools
import signal
import socket
import sys
import time
import warnings

import psutil
import pytest

from lessons.kit import endings, running, shutdown
from lessons.kit import states as kit_states
from lessons.kit.child import Child
from lessons.kit.endings import C, S
from lessons.kit.states import SocketStates, tcp_info
from lessons.kit.transcript import ERROR, NOTE, SERVER
from tests.conftest import lesson, solution

dead = lesson("09_dead_peers")
LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="the states and errors asserted are Linux's")
unix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGSTOP, SIGKILL and fork-free children")


def serving(idle_timeout):
    return running(functools.partial(dead.serve, idle_timeout=idle_timeout))


# --- The server: PING, echo, idle timeouts. ---

def test_ping_is_answered_and_other_lines_echoed():
    with serving(5) as server, socket.create_connection(server.address, timeout=3) as sock:
        assert dead.ping(sock, 2.0) is True
        sock.sendall(b"hello\r\nPING\r\n")
        reply = b""
        while not reply.endswith(b"PONG\n"):
            reply += sock.recv(100)
        assert reply == b"hello\r\nPONG\n"


def test_a_silent_client_is_dropped_after_the_idle_timeout_not_before():
    with serving(0.3) as server, socket.create_connection(server.address, timeout=3) as silent:
        started = time.monotonic()
        assert silent.recv(100) == dead.BYE          # within the 3 s socket timeout, or this raises
        waited = time.monotonic() - started
        assert silent.recv(100) == b""
        assert server.log.wait_for_event(SERVER, "close")
    assert waited >= 0.25
    notes = [e.detail for e in server.log.events(SERVER) if e.kind == NOTE]
    assert notes == ["idle for 0.3 s: dropped"]


def test_a_client_sending_one_byte_per_second_stays_while_a_silent_one_is_dropped():
    with serving(1.5) as server, socket.create_connection(server.address, timeout=3) as steady, \
            socket.create_connection(server.address, timeout=3) as silent:
        for byte in b"ab":
            steady.sendall(bytes([byte]))
            time.sleep(1.0)                          # 2 s in all: past the idle timeout, but never silent that long
        steady.sendall(b"\n")
        assert steady.recv(100) == b"ab\n"
        assert silent.recv(100) == dead.BYE
    assert [e.who for e in server.log.events(SERVER) if e.kind == NOTE] == ["client 2"]


def test_a_client_that_sends_but_never_reads_is_dropped_too():
    # Its echoes fill both buffers; the server's sendall() then waits, and the idle timeout ends it.
    with serving(0.3) as server, socket.create_connection(server.address, timeout=3) as hog:
        hog.settimeout(3)
        with pytest.raises(OSError):                 # reset, once the server has given up on it
            for _ in range(100_000):                  # at most 100 MB: far more than any buffers
                hog.sendall(b"x" * 1000 + b"\n")
        assert server.log.wait_for_event(SERVER, "close")
        with socket.create_connection(server.address, timeout=3) as other:
            assert dead.ping(other, 2.0)
    assert [e.detail for e in server.log.events(SERVER) if e.kind == NOTE] == ["idle for 0.3 s: dropped"]


def test_idle_timeout_zero_never_drops():
    with serving(0) as server, socket.create_connection(server.address, timeout=3) as sock:
        sock.settimeout(0.4)
        with pytest.raises(socket.timeout):
            sock.recv(100)                           # nothing came: not dropped
        assert dead.ping(sock, 2.0)


def test_a_line_too_long_is_refused_and_the_server_goes_on(monkeypatch):
    monkeypatch.setattr(dead, "MAX_CLIENTS", 1)
    with serving(5) as server:
        with socket.create_connection(server.address, timeout=3) as sock:
            sock.sendall(b"x" * (dead.MAX_LINE + 10))
            assert sock.recv(100) == b""
        assert server.log.wait_for_event(SERVER, "close")
        with socket.create_connection(server.address, timeout=3) as sock:   # a whole line, at once
            sock.sendall(b"PING\n" + b"y" * (dead.MAX_LINE + 1) + b"\n")
            assert sock.recv(100) == b""                 # not echoed: dropped
        assert server.log.wait_for_event(SERVER, "close", count=2)
        with socket.create_connection(server.address, timeout=3) as first, \
                socket.create_connection(server.address, timeout=3) as second:
            assert dead.ping(first, 2.0)
            assert second.recv(100) == b""           # refused: one client at a time here
    errors = [e.detail for e in server.log.events(SERVER) if e.kind == ERROR]
    assert errors == [f"a line over {dead.MAX_LINE} bytes: dropped"] * 2 + ["refused: too many clients"]


def test_ping_says_when_the_answer_is_not_pong():
    from lessons.kit.echo import handle   # an echo server answers PING with PING
    from lessons.kit.threaded import serve_threads
    echo = functools.partial(serve_threads, handle=handle)
    with running(echo) as server, socket.create_connection(server.address, timeout=3) as sock:
        with pytest.raises(ConnectionError, match="not PONG"):
            dead.ping(sock, 2.0)


def test_ping_reports_a_drop_and_a_close():
    with serving(0.2) as server, socket.create_connection(server.address, timeout=3) as sock:
        time.sleep(0.5)
        with pytest.raises(ConnectionError, match="idle"):
            dead.ping(sock, 2.0)


# --- How a connection ends: what each side sees, and the states between. ---

@linux_only
def test_fin():
    states = SocketStates()
    endings.fin(states)
    assert states.history == [
        ("connected", {C: "ESTABLISHED", S: "ESTABLISHED"}),
        ("client: sendall(b'bye'), close()", {C: "FIN_WAIT2", S: "CLOSE_WAIT"}),
        ("server: recv() → b'bye', recv() → b'' (EOF), close()", {C: "TIME_WAIT"}),
    ]


@linux_only
def test_half_close_still_delivers_the_answer():
    states = SocketStates()
    endings.half_close(states)
    moments = [moment for moment, _ in states.history]
    assert states.history[1][1] == {C: "FIN_WAIT2", S: "CLOSE_WAIT"}
    assert "recv() → b'question', recv() → b'' (EOF)" in moments[2]
    assert moments[3] == "client: recv() → b'answer', recv() → b'' (EOF)"
    assert states.history[3][1] == {C: "TIME_WAIT"}


@linux_only
def test_a_killed_process_still_sends_fin_then_its_kernel_resets():
    states = SocketStates()
    endings.killed(states)
    assert states.history[1] == ("kill -KILL the child (its kernel closes its socket)",
                                 {C: "FIN_WAIT2", S: "CLOSE_WAIT"})
    assert states.history[2] == ("server: recv() → b'' (EOF), send(b'anyone?') → 7", {})
    assert states.history[3] == ("server: send(b'anyone?') → raises BrokenPipeError (EPIPE)", {})


@linux_only
@pytest.mark.parametrize("case, last", [
    (endings.unread_close, "client: recv() → raises ConnectionResetError (ECONNRESET)"),
    (endings.linger_zero, "server: recv() → raises ConnectionResetError (ECONNRESET)"),
    (endings.closed_port, "client: connect() → raises ConnectionRefusedError (ECONNREFUSED)"),
])
def test_three_ways_to_a_reset_and_no_time_wait_after_any(case, last):
    states = SocketStates()
    case(states)
    assert states.history[-1] == (last, {})
    assert all(moment == "connected" or not seen for moment, seen in states.history)


# --- The states view: SYN_SENT, CLOSE_WAIT piling up, TIME_WAIT and SO_REUSEADDR. ---

@linux_only
def test_a_full_backlog_leaves_a_client_in_syn_sent():
    rows = endings.full_backlog(SocketStates())
    assert {r.label: r.owner for r in rows}["server → client 1"] == "no process"   # queued, not accepted


def test_the_tutorial_loop_as_written_leans_on_the_garbage_collector():
    # Run as written, CPython closes each forgotten socket when its last reference goes,
    # with a ResourceWarning; the last one stays referenced by the loop variable.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        rows = endings.come_and_go(dead.tutorial_select_loop, SocketStates(),
                                after=[("TIME_WAIT", None)] * 2 + [("FIN_WAIT2", "CLOSE_WAIT")])
        unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert {r.label for r in rows if r.state == "CLOSE_WAIT"} == {"server → client 3"}
    assert len(unclosed) == 3


def test_the_tutorial_loop_that_remembers_its_clients_piles_up_close_wait_and_the_fix_does_not():
    leaky = endings.come_and_go(functools.partial(dead.tutorial_select_loop, clients=[]), SocketStates())
    assert {r.label for r in leaky if r.state == "CLOSE_WAIT"} == {"server → client 1", "server → client 2",
                                                                  "server → client 3"}
    fixed = endings.come_and_go(functools.partial(dead.tutorial_select_loop, clients=[], close_on_eof=True),
                             SocketStates(), after=("TIME_WAIT", None))
    assert "CLOSE_WAIT" not in {r.state for r in fixed}


def test_the_leaking_servers_answer_finds_the_live_leak():
    leaking_servers = solution("09_dead_peers").leaking_servers
    rows = endings.come_and_go(functools.partial(dead.tutorial_select_loop, clients=[]), SocketStates())
    listening = [r.local[1] for r in rows if r.state == "LISTEN"]
    assert leaking_servers([r.record() for r in rows]) == listening


@linux_only
def test_so_reuseaddr_lets_a_server_restart_over_time_wait():
    assert endings.restart(SocketStates(), reuse=False) == "bind() raises OSError (EADDRINUSE)"
    states = SocketStates()
    assert endings.restart(states, reuse=True).startswith("bind() and listen() work")
    assert states.history == [("server closed first, then stopped (SO_REUSEADDR on)", {"server → client": "TIME_WAIT"})]


def test_the_view_falls_back_to_its_own_sockets_and_says_what_is_missing(monkeypatch):
    def denied(kind="inet"):
        raise psutil.AccessDenied()
    monkeypatch.setattr(psutil, "net_connections", denied)
    monkeypatch.setattr(kit_states, "LINUX_TABLES", [])   # as on macOS: no /proc/net/tcp
    states = SocketStates()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        states.name(listener, "server")
        with socket.create_connection(listener.getsockname(), timeout=3) as client:
            states.name(client, "client")
            conn, _ = listener.accept()
            with conn:
                rows = states.settle({"server (listening)": "LISTEN", "client → server": "ESTABLISHED",
                                      "server → client": "ESTABLISHED"})
                conn.close()
                # TIME_WAIT cannot be seen here: its absence is accepted, and said.
                states.settle({"server (listening)": "LISTEN", "client → server": "CLOSE_WAIT",
                               "server → client": "TIME_WAIT"})
    assert {r.owner for r in rows} == {"this process"}
    assert "TIME_WAIT" in states.missing


@linux_only
def test_the_proc_table_reader_sees_what_psutil_sees():
    """The Linux reader (/proc/net/tcp, and only our own descriptors) against psutil's
    whole-system view: same addresses, states and owners, IPv4 and IPv6, an orphan too."""
    states = SocketStates()
    with contextlib.ExitStack() as stack:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            listener = stack.enter_context(socket.create_server((host, 0), family=family))
            client = socket.create_connection(listener.getsockname()[:2], timeout=3)
            stack.enter_context(listener.accept()[0])
            states.name(listener, f"server {host}")
            states.name(client, f"client {host}")
            if family == socket.AF_INET:
                client.close()                # FIN_WAIT2 and no process: an orphan
            else:
                stack.enter_context(client)
        states.settle({"server 127.0.0.1 (listening)": "LISTEN", "server ::1 (listening)": "LISTEN",
                       "client 127.0.0.1 → server 127.0.0.1": "FIN_WAIT2",
                       "server 127.0.0.1 → client 127.0.0.1": "CLOSE_WAIT",
                       "client ::1 → server ::1": "ESTABLISHED", "server ::1 → client ::1": "ESTABLISHED"})
        ports = {port for _, port in states._names}
        by_psutil = {((c.laddr.ip, c.laddr.port), (c.raddr.ip, c.raddr.port) if c.raddr else None,
                      c.status, c.pid) for c in psutil.net_connections(kind="tcp")
                     if c.laddr.port in ports or (c.raddr and c.raddr.port in ports)}
        assert set(states._linux_connections()) == by_psutil
        assert {row.owner for row in states.rows()} == {"this process", "no process"}


def test_settle_says_what_differs():
    states = SocketStates()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        states.name(listener, "server")
        with pytest.raises(TimeoutError, match="LISTEN"):
            states.settle({"server (listening)": "CLOSE_WAIT"}, timeout=0.1)


@linux_only
def test_tcp_info_counts_time_since_data():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname(), timeout=3) as client:
        conn, _ = listener.accept()
        with conn:
            info = tcp_info(client)
    assert set(info) == {"unanswered probes", "ms since data received", "ms since ACK received"}


# --- Child processes are always reaped. ---

@unix_only
def test_a_child_is_reaped_even_when_left_paused():
    with Child.run(endings.connect_and_wait, 9) as child:   # port 9: refused, so it exits with an error
        child.wait()
    assert child.proc.returncode not in (None, 0)
    with Child(["-c", "import time; print('up', flush=True); time.sleep(30)"]) as child:
        assert child.expect("up") == "up"
        child.pause()
    assert child.proc.returncode == -signal.SIGKILL


@unix_only
def test_a_child_that_prints_nothing_times_out():
    with Child(["-c", "import time; time.sleep(30)"]) as child:
        with pytest.raises(TimeoutError):
            child.line(timeout=0.2)


# --- Clean shutdown. ---

@unix_only
@pytest.mark.parametrize("where", ["accept", "recv"])
def test_ctrl_c_interrupts_accept_and_recv_in_the_main_thread(where):
    code, lines = shutdown.signal_child(shutdown.ctrl_c_in, signal.SIGINT, where)
    assert (code, lines) == (0, [f"blocked in {where}()", f"KeyboardInterrupt raised in {where}()",
                                 "closed everything; exiting"])


@unix_only
def test_ctrl_c_reaches_the_child_even_when_this_process_ignores_it():
    # A child inherits an ignored SIGINT (a shell's background job; Jupyter's machinery in a
    # test worker): the Ctrl-C experiments reset it, or they fail only on some machines.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code, lines = shutdown.signal_child(shutdown.ctrl_c_in, signal.SIGINT, "accept")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 0 and "KeyboardInterrupt raised in accept()" in lines


@unix_only
def test_ctrl_c_does_not_reach_a_worker_thread():
    code, lines = shutdown.signal_child(shutdown.ctrl_c_with_a_worker, signal.SIGINT)
    assert code == 0 and lines[-1] == "main thread: KeyboardInterrupt; worker still blocked: True"


def test_shutdown_wakes_a_blocked_recv():
    assert shutdown.wake_blocked_recv("shutdown") == (True, "b'' (EOF)")


@linux_only
def test_close_does_not_wake_a_blocked_recv_on_linux():
    woke, ended = shutdown.wake_blocked_recv("close")
    assert woke is False and ended.startswith("raises")


def test_a_socketpair_wakes_a_select_loop():
    assert shutdown.select_with_a_waker()[0] == "the waker"


@unix_only
def test_set_wakeup_fd_wakes_select_on_a_signal():
    code, lines = shutdown.signal_child(shutdown.wakeup_fd, signal.SIGTERM)
    assert (code, lines[1:]) == (0, ["select() woke: SIGTERM arrived", "closed everything; exiting"])


def test_socketserver_shutdown_stops_serve_forever():
    assert shutdown.socketserver_shutdown() == (b"hi\n", True)


@unix_only
def test_asyncio_signal_handler_closes_cleanly():
    code, lines = shutdown.signal_child(shutdown.asyncio_signals, signal.SIGTERM)
    assert (code, lines) == (0, ["serving", "signal received: closing the server", "closed everything; exiting"])


# --- The command line. ---

def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        dead.main(["serve", "--help"])
    assert exited.value.code == 0 and "--idle-timeout" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["serve", "--idle-timeout", "-1"], "must be 0 (never) or more than 0 and at most 86400 seconds"),
    (["serve", "--idle-timeout", "soon"], "not a number of seconds"),
    (["serve", "--idle-timeout", "nan"], "not nan"),
    (["client", "--count", "0"], "the count must be between 1 and 100,000"),
    (["client", "--interval", "0"], "more than 0.01 and at most 3600 seconds"),
    (["client", "--deadline", "inf"], "at most 600 seconds, not inf"),
])
def test_bad_options_get_one_clear_line(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        dead.main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and message in err and "Traceback" not in err


@linux_only
def test_the_demo_exits_zero_and_its_paused_server_fools_keepalive_but_not_a_heartbeat(monkeypatch, capsys):
    # One run of the demo (in-process, to save a second paused server) checked twice:
    # what it prints, and what its paused-server experiment measured.
    seen = {}
    measure = dead.paused_server
    monkeypatch.setattr(dead, "paused_server", lambda: seen.update(measure()) or seen)
    assert dead.demo() == 0
    out = capsys.readouterr().out
    assert "127.0.0.1" not in out and "BrokenPipeError (EPIPE)" in out
    assert seen["PONG before the pause"] is True
    assert seen["PONG after the pause"] is False
    assert seen["keepalive error"] == 0
    assert {row.state for row in seen["rows"]} == {"ESTABLISHED", "LISTEN"}
    assert {row.owner for row in seen["rows"] if row.label.startswith("server")} == {"paused child"}
    info = seen["tcp_info"]
    assert info["unanswered probes"] == 0
    # The paused kernel acknowledged a probe since the last data: keepalive was satisfied.
    assert info["ms since ACK received"] < info["ms since data received"]


@unix_only
def test_serve_and_client_and_a_paused_server(capsys):
    # The server as a learner runs it (its own process, to be paused); the client in-process.
    with Child(["-m", "lessons.09_dead_peers", "serve", "--port", "0", "--idle-timeout", "5"]) as server:
        port = server.expect("listening on 127.0.0.1:").rsplit(":", 1)[1]
        assert dead.main(["client", "--port", port, "--count", "2", "--interval", "0.1"]) == 0
        assert [line.split(" in ")[0] for line in capsys.readouterr().out.splitlines()] == ["PONG 1", "PONG 2"]
        server.pause()
        assert dead.main(["client", "--port", port, "--deadline", "0.3"]) == 1
        assert "no PONG within 0.3 s" in capsys.readouterr().err
        server.resume()
        server.signal(signal.SIGTERM)                    # as kill and service managers stop it
        assert server.wait() == 0
