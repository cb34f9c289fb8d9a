"""Lesson 02: the transcript, the tutorial's code and its real failures, how connections end,
and what only the iterative server does (one client at a time, dropped when idle).

The echo contract itself (10 MiB, dribblers, resets, 100 clients in a row) is
tested for every server at once in test_echo_servers.py.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import socket
import threading

import pytest

from lessons.kit import adversary, running
from lessons.kit.echo import echo as kit_echo
from lessons.kit.processes import ServerProcess
from lessons.kit.stream import recv_until_eof
from lessons.kit.transcript import CLIENT, CLOSE, ERROR, SERVER
from tests.conftest import lesson, run_module

echo = lesson("02_echo")

# The tutorial's two listings (服务器端代码示例, 客户端代码示例), quoted from ../shared/seed/.
TUTORIAL_SERVER = """
import socket
# 创建TCP套接字
server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# 绑定到指定地址和端口
server_socket.bind(('localhost', 9999))
# 开始监听,最大排队数量为5
server_socket.listen(5)
print('Server listening on port 9999...')
while True:
    # 接受客户端连接
    client_socket, addr = server_socket.accept()
    print(f'Got connection from {addr}')
    # 接收数据
    data = client_socket.recv(1024)
    if not data:
        break
    # 发送回复
    client_socket.send(data)
    # 关闭连接
    client_socket.close()
"""
TUTORIAL_CLIENT = """
import socket
# 创建TCP套接字
client_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# 连接到服务器
client_socket.connect(('localhost', 9999))
# 发送消息
message = 'Hello, Server!'
client_socket.sendall(message.encode())
# 接收回复
response = client_socket.recv(1024)
print(f'Received: {response.decode()}')
# 关闭连接
client_socket.close()
"""


def unmarked_lines(fn) -> list[str]:
    """The lines of fn's body that do not say (ours): they must be the tutorial's."""
    body = inspect.getsource(fn).split('"""')[2].splitlines()   # after the docstring
    return [line.strip() for line in body if line.strip() and "(ours)" not in line]


@pytest.mark.parametrize("fn, listing", [("naive_echo_server", TUTORIAL_SERVER),
                                         ("naive_echo_client", TUTORIAL_CLIENT)])
def test_the_naive_code_is_the_tutorials_line_for_line(fn, listing):
    tutorial = [line.strip() for line in listing.strip().splitlines()]
    ours = unmarked_lines(getattr(echo, fn))
    assert ours, fn
    position = 0
    for line in ours:   # each unmarked line is the tutorial's, in the tutorial's order
        assert line in tutorial[position:], f"{fn}: {line!r} is not the tutorial's (mark it (ours))"
        position = tutorial.index(line, position) + 1
    assert "client_socket.send(data)" in ours or "client_socket.sendall(message.encode())" in ours


@pytest.fixture
def server():
    with running(echo.serve) as srv:
        yield srv


def test_hello_round_trip_and_transcript(server):
    assert echo.echo(server.address, b"hello", log=server.log) == b"hello"
    assert server.log.wait_for_event(SERVER, CLOSE)
    kinds = [(e.side, e.kind) for e in server.log.ordered()]
    assert kinds[-2:] == [(CLIENT, "eof"), (CLIENT, "close")]


def test_a_reset_in_the_middle_of_an_echo_is_logged_not_fatal(server):
    sock = adversary.connect(server.address)
    sock.sendall(b"y" * 1_000_000)   # the server is busy echoing into our unread buffer
    adversary.abort(sock)
    assert echo.echo(server.address, b"next") == b"next"
    # Served in turn, so by now the server has met the reset and logged it.
    errors = [e for e in server.log.events(SERVER) if e.kind == ERROR]
    assert [e.who for e in errors] == ["client 1"]
    assert errors[0].detail in ("ConnectionResetError", "BrokenPipeError")
    assert server.errors == []


# --- The idle timeout (issue 12): one client must not stop the server for everyone. ---

def test_the_idle_timeout_is_30_seconds_by_default():
    assert inspect.signature(echo.serve).parameters["idle_timeout"].default == 30.0


def test_without_an_idle_timeout_a_silent_client_holds_everyone():
    with running(functools.partial(echo.serve, idle_timeout=None)) as srv:
        with adversary.silent(srv.address):
            with pytest.raises(socket.timeout):   # the next client waits its turn, for ever
                echo.echo(srv.address, b"queued", timeout=0.5)


def test_a_silent_client_is_dropped_after_the_idle_timeout_and_the_next_is_served():
    with running(functools.partial(echo.serve, idle_timeout=0.3)) as srv:
        with adversary.silent(srv.address) as quiet:
            assert echo.echo(srv.address, b"my turn", timeout=3) == b"my turn"
            assert quiet.recv(10) == b""   # the server closed it
        dropped = [e for e in srv.log.events(SERVER) if e.kind == ERROR]
        assert [(e.who, e.detail) for e in dropped] == [("client 1", "timed out: idle 0.3 s, dropped")]
        assert srv.errors == []


def test_a_client_that_sends_10_MiB_and_never_reads_is_dropped():
    with running(functools.partial(echo.serve, idle_timeout=0.3)) as srv:
        with socket.create_connection(srv.address, timeout=5) as hog:
            def send_and_never_read():
                try:
                    hog.sendall(b"h" * (10 * 1024 * 1024))
                except OSError:
                    pass   # dropped by the server: reset or broken pipe
            pusher = threading.Thread(target=send_and_never_read, daemon=True)
            pusher.start()
            try:
                assert echo.echo(srv.address, b"still answered", timeout=4) == b"still answered"
            finally:
                with contextlib.suppress(OSError):   # not connected any more: the server dropped it
                    hog.shutdown(socket.SHUT_RDWR)
                pusher.join(5)
        assert any(e.kind == ERROR and e.who == "client 1" for e in srv.log.events(SERVER))


def test_a_client_that_trickles_within_the_timeout_stays():
    with running(functools.partial(echo.serve, idle_timeout=0.5)) as srv:
        assert adversary.dribble(srv.address, b"drip", delay=0.2) == b"drip"
        assert not [e for e in srv.log.events(SERVER) if e.kind == ERROR]


def test_serve_idle_timeout_on_the_command_line():
    with ServerProcess.lesson("02_echo", "--idle-timeout", "0.3") as served:
        with adversary.silent(served.address):
            assert kit_echo(served.address, b"served", timeout=5) == b"served"
        code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "timed out: idle 0.3 s, dropped" in err


@pytest.mark.parametrize("argv, idle", [(["serve"], 30.0), (["serve", "--idle-timeout", "0"], None),
                                        (["serve", "--idle-timeout", "2.5"], 2.5)])
def test_serve_passes_the_idle_timeout_to_the_server(monkeypatch, argv, idle):
    started = []
    monkeypatch.setattr(echo, "serve_forever", lambda fn, args, name: started.append(fn) or 0)
    assert echo.main(argv) == 0
    assert started[0].func is echo.serve and started[0].keywords == {"idle_timeout": idle}


@pytest.mark.parametrize("value, message", [("-1", "must be 0 (never) or more than 0"),
                                            ("nan", "must be 0 (never)"), ("inf", "must be 0 (never)"),
                                            ("7200", "at most 3600 seconds"),
                                            ("soon", "not a number of seconds")])
def test_serve_refuses_a_nonsense_idle_timeout(capsys, value, message):
    with pytest.raises(SystemExit) as exit:
        echo.main(["serve", "--idle-timeout", value])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err and "Traceback" not in err


# --- The tutorial's server and client, and their real bugs. ---

def test_one_client_that_says_nothing_ends_the_tutorial_server_for_everyone():
    with running(echo.naive_echo_server) as srv:
        with socket.create_connection(srv.address, timeout=2):
            pass                                   # a port check: connect, close
        srv.thread.join(2)
        assert not srv.thread.is_alive()           # `if not data: break` left the accept loop
        with pytest.raises(socket.timeout):        # the kernel still queues the next client...
            echo.naive_echo_client(srv.address, "anyone?", timeout=0.5)   # ...nobody accepts it
    assert srv.errors == []


def test_the_tutorial_server_truncates_a_dribbled_message():
    with running(echo.naive_echo_server) as srv:
        reply = adversary.dribble(srv.address, b"one byte at a time", delay=0.02)
    assert 0 < len(reply) < len(b"one byte at a time")


def test_the_tutorial_server_closes_with_data_unread_so_the_client_gets_a_reset():
    with running(echo.naive_echo_server) as srv:
        with socket.create_connection(srv.address, timeout=2) as sock:
            sock.sendall(b"x" * 5000)              # one recv(1024) takes at most 1,024 of these
            assert 0 < len(sock.recv(65536)) <= 1024
            with pytest.raises(ConnectionResetError):
                sock.recv(65536)


def test_the_tutorial_server_dies_on_a_reset():
    with pytest.raises(ConnectionResetError):
        with running(echo.naive_echo_server) as srv:
            adversary.reset(srv.address)
            srv.thread.join(2)
            assert not srv.thread.is_alive()


def test_the_tutorial_client_gets_at_most_1024_bytes(server):
    reply = echo.naive_echo_client(server.address, "z" * 5000)
    assert len(reply) == 1024


def test_the_tutorial_client_cuts_a_character_in_two(server):
    with pytest.raises(UnicodeDecodeError):   # 1,024 is not a multiple of 3 bytes
        echo.naive_echo_client(server.address, "你好" * 200)


def test_the_tutorial_client_sends_with_sendall():
    source = inspect.getsource(echo.naive_echo_client)
    assert "sendall(" in source and ".send(" not in source


# --- What the notebook says about send() and about how connections end. ---

def test_a_send_with_a_timeout_may_send_only_part():
    # A timeout makes the socket non-blocking underneath: Python waits for room,
    # then makes one send() that takes what fits.
    with adversary.connected_pair() as (ours, theirs):
        assert not os.get_blocking(ours.fileno())
        payload = b"p" * (64 * 1024 * 1024)
        sent = ours.send(payload)
        assert 0 < sent < len(payload)


def test_a_blocking_send_waits_until_everything_is_queued():
    with adversary.connected_pair() as (ours, theirs):
        payload = b"p" * (8 * 1024 * 1024)
        got = []
        reader = threading.Thread(target=lambda: got.append(recv_until_eof(theirs)),
                                  daemon=True)
        reader.start()
        ours.settimeout(None)
        assert os.get_blocking(ours.fileno())
        sent = ours.send(payload)          # plain blocking: returns once all of it is queued
        ours.shutdown(socket.SHUT_WR)
        reader.join(10)
    assert sent == len(payload) and got == [payload]


def test_how_connections_end():
    seen = echo.how_connections_end(wait=0.2)
    assert seen == {
        "the client calls close()": "b'': a FIN came",
        "the client's process is killed": "b'': a FIN came",
        "the client closes with data unread": "ConnectionResetError: an RST came",
        "the client closes with SO_LINGER 0": "ConnectionResetError: an RST came",
        "the server writes to a closed client":
            "send() took it; a later send() raised BrokenPipeError: an RST came",
        "a client connects where nobody listens": "ConnectionRefusedError: an RST came",
        "the client is gone, or silent": "TimeoutError after 0.2 s: nothing came",
    }
