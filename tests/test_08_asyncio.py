"""Lesson 08: what is particular to the asyncio room and echo servers.

The chat conformance suite (test_chat_rooms.py) and the echo contract (test_echo_servers.py)
run against this lesson's servers too; here: lines and their limit, backpressure, the
blocking call, shutdown leaving nothing behind, descriptors running out, the command line.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest

from lessons.kit import adversary, chat, running
from lessons.kit.aio import AsyncChatClient, within
from lessons.kit.echo import echo
from lessons.kit.lineclient import ChatClient
from lessons.kit.processes import ServerProcess
from lessons.kit.stream import LineTooLong
from lessons.kit.transcript import Transcript
from tests.conftest import ROOT, lesson, run_module, said_once_per_shortage

aio = lesson("08_asyncio")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


def reader_with(data: bytes, limit: int = aio.READ_LIMIT) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def lines_of(data: bytes) -> list:
    reader, lines = reader_with(data), []
    try:
        while (line := await aio.read_line(reader)) is not None:
            lines.append(line)
    except LineTooLong:
        lines.append("too long")
    return lines


# --- Lines and their limit ---

@pytest.mark.parametrize("data, expected", [
    (b"a\nb\r\nc", [b"a", b"b", b"c"]),                                  # a last line without \n
    (b"x" * chat.MAX_LINE + b"\r\n", [b"x" * chat.MAX_LINE]),            # the limit, with \r\n
    (b"x" * chat.MAX_LINE + b"\n", [b"x" * chat.MAX_LINE]),
    (b"x" * (chat.MAX_LINE + 1) + b"\n", ["too long"]),                  # one byte over
    (b"ok\n" + b"y" * 10_000, [b"ok", "too long"]),                      # never ends
    (b"", []),
])
def test_read_line_enforces_the_limit(data, expected):
    assert asyncio.run(lines_of(data)) == expected


def test_the_stream_readers_own_limit_is_64_kib_and_readline_hides_its_error():
    async def go():
        with pytest.raises(asyncio.LimitOverrunError):
            await reader_with(b"z" * 70_000 + b"\n", limit=2 ** 16).readuntil(b"\n")
        with pytest.raises(ValueError):   # readline() turns it into a ValueError
            await reader_with(b"z" * 70_000 + b"\n", limit=2 ** 16).readline()
        return await reader_with(b"z" * 60_000 + b"\n", limit=2 ** 16).readline()
    assert len(asyncio.run(go())) == 60_001


# --- Backpressure and slow readers ---

def test_the_naive_broadcast_waits_for_a_reader_that_stopped_and_the_room_does_not():
    async def go():
        stalled = None
        listener = socket.create_server(("127.0.0.1", 0))
        writers = []

        async def keep(reader, writer, who):
            writers.append(writer)
            await reader.read()

        async with await aio.Serving.streams(keep, listener, Transcript()) as serving:
            _, sleepy = await asyncio.open_connection(*serving.address)   # never reads
            while not writers:
                await asyncio.sleep(0.01)
            line = b"x" * 65536 + b"\n"
            try:
                await within(1.0, asyncio.gather(*(aio.naive_broadcast(writers, line, None)
                                                   for _ in range(200))))
            except TimeoutError:
                stalled = writers[0].transport.get_write_buffer_size()
            outbox = aio.Outbox(writers[0], limit=1 << 20)
            refused = sum(not outbox.put(line) for _ in range(200))
            sleepy.close()
        return stalled, refused

    stalled, refused = asyncio.run(go())
    assert stalled is not None and stalled > 0       # drain() is still waiting: the sender too
    assert refused > 150                             # the outbox says "too slow" instead


def test_a_blocking_call_freezes_everyone_and_to_thread_does_not():
    async def order(blocking: bool) -> list:
        listener = socket.create_server(("127.0.0.1", 0))
        handler = lambda r, w, who: aio.answer(r, w, who, blocking=blocking)   # noqa: E731
        async with await aio.Serving.streams(handler, listener, Transcript()) as serving:
            (ra, wa), (rb, wb) = [await asyncio.open_connection(*serving.address) for _ in "ab"]
            wa.write(b"slow question\n")
            await asyncio.sleep(0.1)
            wb.write(b"quick one\n")
            replies = []

            async def hear(reader, who):
                await reader.readline()
                replies.append(who)

            await within(5, asyncio.gather(hear(ra, "alice"), hear(rb, "bob")))
            wa.close()
            wb.close()
        return replies

    assert asyncio.run(order(blocking=True)) == ["alice", "bob"]    # bob waited for alice's lookup
    assert asyncio.run(order(blocking=False)) == ["bob", "alice"]


# --- Shutdown leaves nothing behind ---

@pytest.mark.parametrize("serve", ["serve", "serve_echo", "serve_echo_protocol"])
def test_stopping_closes_every_connection_and_leaves_no_descriptor(serve):
    before = open_fds()
    with contextlib.ExitStack() as stack:
        with running(getattr(aio, serve)) as server:
            clients = [stack.enter_context(socket.create_connection(server.address, timeout=5))
                       for _ in range(10)]
            clients[0].sendall(b"alice\n")
            hog = clients[1]
            hog.setblocking(False)
            with contextlib.suppress(BlockingIOError, ConnectionResetError, BrokenPipeError):
                while True:                           # a client that sends and never reads
                    hog.send(b"h" * 65536)            # (the room hangs up on it: line too long)
            hog.setblocking(True)
            time.sleep(0.2)
        for sock in clients:                          # every connection was closed by the server
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
    if before >= 0:
        assert open_fds() == before


def test_the_async_api_cancels_every_task_on_the_running_loop():
    async def go():
        listener = socket.create_server(("127.0.0.1", 0))
        serving = await aio.start_room(listener, Transcript())
        members = [await AsyncChatClient.join(serving.address, f"p{i}") for i in range(20)]
        await members[0].say("hello")
        await members[-1].expect("p0: hello")
        tasks_while_serving = len(serving.tasks)
        await serving.close()
        ended = 0
        for m in members:
            await within(2, m.reader.read())          # returns at EOF: the server closed it
            ended += 1
            await m.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return tasks_while_serving, serving.cancelled, ended, others, listener.fileno()

    tasks, cancelled, ended, others, listener_fd = asyncio.run(go())
    assert tasks == cancelled == ended == 20
    assert others == [] and listener_fd == -1


def test_a_room_closed_under_its_members_says_nothing_wrong():
    log = Transcript()
    with running(aio.serve, log=log) as server:
        alice, bob = ChatClient(server.address, "alice"), ChatClient(server.address, "bob")
        alice.expect("* bob joined")
    assert alice.wait_closed(2) and bob.wait_closed(2)
    alice.close()
    bob.close()
    assert not [e for e in log.events() if e.kind == "error"]


# --- Descriptors running out ---

def test_running_out_of_descriptors_pauses_accepting_says_so_once_and_recovers():
    def few_descriptors():
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    proc = subprocess.Popen([sys.executable, "-m", "lessons.08_asyncio", "serve", "--port", "0",
                             "--max-members", "100"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=few_descriptors)
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        socks = []
        for i in range(60):                           # more than 40 descriptors' worth
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            socks[-1].sendall(f"p{i}\n".encode())
        time.sleep(1.5)
        for sock in socks[:40]:                       # some leave: descriptors free up
            sock.close()
        late = socks[-1]
        late.settimeout(5)
        assert late.recv(4096).startswith(chat.GREETING.encode())   # served at last
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert said_once_per_shortage(err) >= 1
    assert "Traceback" not in err


# --- The command line ---

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_a_signal_with_members_connected(sig):
    with ServerProcess.lesson("08_asyncio") as served:
        with ChatClient(served.address, "alice") as alice, ChatClient(served.address) as bob:
            code, err = served.stop(sig)                      # bob has not given a name yet
            assert alice.wait_closed(2) and bob.wait_closed(2)
    assert code == 0, err
    assert "stopped: 2 task(s) cancelled, every connection closed" in err
    assert "Traceback" not in err


def test_serve_echo_and_the_asyncio_echo_client():
    with ServerProcess.lesson("08_asyncio", "--echo") as served:
        assert echo(served.address, b"from a thread") == b"from a thread"
        result = run_module("lessons.08_asyncio", "client", "--echo", "hello there",
                            "--port", str(served.port))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello there\n"


def test_the_chat_client_from_a_pipe():
    with ServerProcess.lesson("08_asyncio") as served, ChatClient(served.address, "bob") as bob:
        result = run_module("lessons.08_asyncio", "client", "--name", "alice", "--port",
                            str(served.port), input="hi bob\n/quit\n")
        assert bob.expect("alice: hi bob")
    assert result.returncode == 0, result.stderr
    assert "* welcome, alice!" in result.stdout and "* bye" in result.stdout


def test_the_echo_client_against_a_silent_server_times_out_clearly():
    with adversary.silent_server(hold=3) as address:
        result = run_module("lessons.08_asyncio", "client", "--echo", "hi", "--port",
                            str(address[1]), "--timeout", "0.5")
    assert result.returncode == 1
    assert "timed out after 0.5 s" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["serve", "--max-members", "0"], "between 1 and 100,000"),
    (["serve", "--idle-timeout", "nan"], "must be 0 (never) or more than 0"),
    (["serve", "--naming-timeout", "inf"], "must be more than 0"),
    (["client", "--timeout", "0"], "must be more than 0"),
])
def test_bad_arguments_get_one_clear_line(args, message):
    result = run_module("lessons.08_asyncio", *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


# --- The measurements the notebook and the lab use ---

def test_fanout_counts_every_delivery_in_order_and_reports_a_full_room():
    from lessons.kit import fanout
    with running(aio.serve) as server:
        result = fanout.measure(server.address, members=6, senders=3, duration=0.3)
    assert result.error == "" and result.complete and result.sent > 0
    assert result.delivered == result.sent * 5 and result.per_second > 0   # each line to 5 others
    with running(functools.partial(aio.serve, max_members=2)) as server:
        assert fanout.measure(server.address, members=3, duration=0.1).error == chat.ROOM_FULL


def test_code_lines_follow_the_entry_point_and_skip_what_is_shared(tmp_path):
    from lessons.kit import compare
    module = tmp_path / "server.py"
    module.write_text('def serve():\n    """Doc."""\n    # a comment\n\n    return helper()\n\n\n'
                      'def helper():\n    return shared()\n\n\ndef shared():\n    return 1\n\n\n'
                      'def unused():\n    return 2\n')
    assert compare.code_lines(module, "serve") == 6          # serve 2, helper 2, shared 2
    assert compare.code_lines(module, "serve", exclude=["shared"]) == 4


def test_serve_echo_drops_a_silent_client_after_the_idle_timeout():
    from tests.test_04_nonblocking import check_idle_timeout_from_the_command_line
    check_idle_timeout_from_the_command_line("08_asyncio", "--echo")
