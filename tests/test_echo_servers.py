"""Every echo server in the workbook keeps lesson 02's contract, against polite and hostile clients.

The servers come from the kit's one list (lessons/kit/echoservers.py), run in process.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import select
import socket

import pytest

from lessons.kit import adversary, fastecho, running
from lessons.kit.echo import echo
from lessons.kit.echoservers import echo_servers
from tests.conftest import lesson

SERVERS = {s.name: s for s in echo_servers(in_process=True)}
# The fast server's other loops (the list's "05 selectors --fast" is its epoll loop).
FAST_LOOPS = {"fast, portable selectors": fastecho.serve_portable}
if hasattr(select, "epoll") and hasattr(os, "splice"):
    FAST_LOOPS["fast, splice"] = fastecho.serve_splice
CONCURRENT = [name for name, s in SERVERS.items() if s.concurrent] + list(FAST_LOOPS)
MIB = 1024 * 1024


def serve_function(name: str):
    if name in FAST_LOOPS:
        return FAST_LOOPS[name]
    entry = SERVERS[name]
    return functools.partial(getattr(lesson(entry.lesson), entry.function), **entry.kwargs)


@pytest.fixture(params=[*SERVERS, *FAST_LOOPS])
def server(request):
    with running(serve_function(request.param)) as srv:
        yield srv


@pytest.fixture(params=CONCURRENT)
def concurrent_server(request):
    with running(serve_function(request.param)) as srv:
        yield srv


def test_round_trip_empty_and_binary(server):
    assert echo(server.address, b"hello") == b"hello"
    assert echo(server.address, b"") == b""
    assert echo(server.address, bytes(range(256)) * 3) == bytes(range(256)) * 3


def test_ten_mebibytes(server):
    assert adversary.flood(server.address, 10 * MIB, timeout=20) == adversary.flood_pattern(10 * MIB)


def test_one_byte_at_a_time(server):
    assert adversary.dribble(server.address, b"drip, drip", delay=0.003) == b"drip, drip"


def test_resets_do_not_stop_the_server(server):
    adversary.reset(server.address)
    adversary.reset(server.address, b"half a message")
    assert echo(server.address, b"still serving") == b"still serving"
    assert server.errors == []


def test_a_hundred_clients_in_a_row(server):
    for i in range(100):
        assert echo(server.address, b"n%d" % i) == b"n%d" % i


def test_two_hundred_concurrent_clients_each_echo_256_kib(concurrent_server):
    # Concurrency, with data enough that sends are partial; test_ten_mebibytes is the big one.
    expected = adversary.flood_pattern(MIB // 4)
    with concurrent.futures.ThreadPoolExecutor(max_workers=200) as pool:
        replies = list(pool.map(lambda _: adversary.flood(concurrent_server.address, MIB // 4, timeout=30), range(200)))
    assert all(reply == expected for reply in replies)
    assert concurrent_server.errors == []


def test_a_silent_client_does_not_hold_up_the_others(concurrent_server):
    with adversary.silent(concurrent_server.address), adversary.silent(concurrent_server.address):
        assert echo(concurrent_server.address, b"not blocked", timeout=2) == b"not blocked"


def test_a_client_that_never_reads_does_not_hold_up_the_others(concurrent_server):
    with socket.create_connection(concurrent_server.address, timeout=5) as hog:
        hog.setblocking(False)
        sent = 0
        try:
            while sent < 64 * MIB:    # its echo backs up; the server must stop reading it
                sent += hog.send(b"h" * MIB)
        except BlockingIOError:
            pass
        assert echo(concurrent_server.address, b"still answered", timeout=2) == b"still answered"


def test_every_process_server_in_the_list_starts_and_echoes():
    for entry in echo_servers():
        with entry.start() as server:
            assert echo(server.address, entry.name.encode()) == entry.name.encode(), entry.name


# Every server a person can start with `serve --idle-timeout` lets go of a client that sends
# nothing, or takes nothing, for that long: else a few thousand of them hold every descriptor
# (and, for one that never reads, its echo in the server's memory) for good.
IDLE_TIMEOUT_SERVERS = [name for name, s in SERVERS.items()
                        if s.lesson in ("02_echo", "04_nonblocking", "05_select")
                        or s.function == "serve_echo"]


@pytest.mark.parametrize("name", IDLE_TIMEOUT_SERVERS)
def test_a_silent_client_and_one_that_never_reads_are_let_go_after_the_idle_timeout(name):
    from lessons.kit.transcript import CLOSE, SERVER, Transcript
    log = Transcript()
    with running(functools.partial(serve_function(name), idle_timeout=0.3), log=log) as server:
        with adversary.connect(server.address) as silent:
            assert silent.recv(1) == b""                         # let go (recv waits at most 5 s)
        with adversary.connect(server.address) as hog:
            hog.setblocking(False)
            try:
                while True:                                      # until the buffers are full
                    hog.send(b"h" * MIB)
            except BlockingIOError:
                pass
            assert log.wait_for_event(SERVER, CLOSE, count=2, timeout=5.0)
            assert echo(server.address, b"next", timeout=2) == b"next"
