"""Lesson 01: socket anatomy, the three errors, SO_REUSEADDR, and the greeting server."""
from __future__ import annotations

import socket

import pytest

from lessons.exercises import ex01
from lessons.kit import adversary, running
from lessons.kit.transcript import Transcript
from tests.conftest import lesson

basics = lesson("01_basics")
HELLO = basics.GREETING.decode().strip()


def test_anatomy_in_one_thread():
    log = Transcript()
    assert basics.anatomy(log) == basics.GREETING
    kinds = [e.kind for e in log.events()]
    assert kinds == ["listen", "connect", "accept", "send", "close", "recv", "eof", "close"]


def test_accept_returns_a_new_socket_on_the_same_port():
    assert all(basics.accept_shares_the_port().values())


def test_the_three_errors_look_as_the_lesson_says():
    seen = basics.three_errors()
    assert seen == {
        "bind to a port in use": "OSError (EADDRINUSE)",
        "connect where nobody listens": "ConnectionRefusedError (ECONNREFUSED)",
        "recv from a silent server": "TimeoutError",
    }


def test_so_reuseaddr_lets_a_server_restart_at_once():
    assert basics.restart_on_same_port(False) == "bind failed: EADDRINUSE"
    assert basics.restart_on_same_port(True) == "bind succeeded"


@pytest.fixture
def server():
    with running(basics.serve) as srv:
        yield srv


def test_greeting_for_a_hundred_clients_in_a_row(server):
    for _ in range(100):
        assert basics.greet(server.address) == HELLO


def test_greeting_server_survives_resets_floods_and_dribblers(server):
    adversary.reset(server.address)
    adversary.reset(server.address, b"junk")
    # It greets whoever connects, whatever they send; 10 MiB of input changes nothing.
    with pytest.raises(OSError):  # the server hangs up while we are still sending
        adversary.flood(server.address, 10 * 1024 * 1024)
    assert adversary.dribble(server.address, b"hi", delay=0.01).startswith(basics.GREETING)
    assert basics.greet(server.address) == HELLO
    assert server.errors == []


def test_greet_reports_a_refused_connection():
    with pytest.raises(ConnectionRefusedError):
        basics.greet(adversary.closed_port(), timeout=1)


def test_a_second_live_server_can_share_the_port_only_with_so_reuseport():
    assert basics.second_server_on_the_port("SO_REUSEADDR") == "bind failed: EADDRINUSE"
    if hasattr(socket, "SO_REUSEPORT"):
        assert basics.second_server_on_the_port("SO_REUSEPORT") == \
            "bind succeeded: new clients go to both servers"


# The checks of the exercises: the generic test (test_exercises.py) proves that each
# fails on the stub and on the tutorial's code and passes on the answer; here, that
# each also fails on a tempting wrong answer, and on the scenario meant to catch it.

@pytest.mark.parametrize("name, wrong", ex01.WRONG_ANSWERS, ids=[n for n, _ in ex01.WRONG_ANSWERS])
def test_each_check_fails_on_its_tempting_wrong_answer(name, wrong, capsys):
    result = getattr(ex01, f"check_{name}")(wrong)
    failed = [text for ok, text in result.lines if not ok]
    assert len(failed) == 1, capsys.readouterr().out
    catches = {"fetch_greeting": "a greeting that arrives in pieces",
               "make_listener": "a second server while the first runs"}[name]
    assert failed[0].startswith(f"✗ {catches}:"), failed


def test_the_wrong_answers_are_declared_for_both_exercises():
    names = {name for name, _ in ex01.WRONG_ANSWERS}
    assert "fetch_greeting" in names
    assert "make_listener" in names or not hasattr(socket, "SO_REUSEPORT")


@pytest.mark.parametrize("name, caught_by", [
    ("fetch_greeting", {"a greeting that arrives in pieces", "nobody listening",
                        "a server that never speaks"}),
    ("make_listener", {"restart on the same port"}),
])
def test_the_tutorials_code_fails_where_the_lesson_says(name, caught_by, capsys):
    result = getattr(ex01, f"check_{name}")(getattr(ex01, f"naive_{name}"))
    failed = {text[2:].split(":")[0] for ok, text in result.lines if not ok}
    assert caught_by <= failed, capsys.readouterr().out
