"""The command line every lesson shares: help, demo, serve, client, bad input."""
from __future__ import annotations

import signal

import pytest

from lessons.kit import adversary
from lessons.kit.processes import ServerProcess
from lessons.kit.cli import lesson_parser
from tests.conftest import ROOT, lesson, run_module

LESSONS = sorted(path.stem for path in (ROOT / "lessons").glob("[0-9][0-9]_*.py"))
# Demos that their own lesson's tests run already, in process (no need to pay twice).
DEMO_TESTED_ELSEWHERE = {"07_scaling": "its default is the full lab: see tests/test_07_scaling.py",
                         "09_dead_peers": "tests/test_09_dead_peers.py runs it",
                         "10_messages": "tests/test_10_messages.py runs it",
                         "12_addresses": "tests/test_12_addresses.py runs it"}
DEMOS = [name for name in LESSONS if name not in DEMO_TESTED_ELSEWHERE]


def test_the_table_of_lessons():
    result = run_module("lessons")
    assert result.returncode == 0, result.stderr
    for name in LESSONS:
        assert f"lessons.{name}" in result.stdout
    assert "notebooks/02_echo.ipynb" in result.stdout


@pytest.mark.parametrize("name", LESSONS)
def test_help(name):
    result = run_module(f"lessons.{name}", "--help")
    assert result.returncode == 0
    assert "{demo,serve,client}" in result.stdout


@pytest.mark.parametrize("name", LESSONS)
def test_the_help_fits_an_80_column_terminal(name, monkeypatch):
    # The concept line (the docstring's first) was printed raw: up to 112 columns, cut mid-word.
    monkeypatch.setenv("COLUMNS", "80")
    parser, _ = lesson_parser(lesson(name).__doc__, name)
    assert max(len(line) for line in parser.format_help().splitlines()) <= 80


@pytest.mark.parametrize("command", ["demo", "serve", "client"])
@pytest.mark.parametrize("name", LESSONS)
def test_each_commands_help_fits_an_80_column_terminal(name, command, monkeypatch, capsys):
    # argparse wraps between options, not inside one: lesson 05's --selector {select,poll,...}
    # made an 81-column usage line.
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exited:
        lesson(name).main([command, "--help"])
    help_text = capsys.readouterr().out
    assert exited.value.code == 0 and help_text.startswith("usage:")
    assert max(len(line) for line in help_text.splitlines()) <= 80, help_text


@pytest.mark.parametrize("name", DEMOS)
def test_demo_runs_and_exits_zero(name):
    result = run_module(f"lessons.{name}", timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "127.0.0.1" not in result.stdout  # no addresses or ports in what a learner compares


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_address_and_stops_cleanly(sig):
    with ServerProcess.lesson("02_echo") as served:
        assert served.host == "127.0.0.1"
        result = run_module("lessons.02_echo", "client", "hello there", "--port", str(served.port))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello there\n"
        with adversary.silent(served.address):  # a client still connected
            code, err = served.stop(sig)
    assert code == 0, err
    assert "Traceback" not in err


def test_basics_serve_and_client():
    with ServerProcess.lesson("01_basics") as served:
        result = run_module("lessons.01_basics", "client", "--port", str(served.port))
        assert result.stdout.strip() == "hello from the lesson 01 server"
        code, err = served.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in err


def test_client_with_nobody_listening_says_so():
    _, port = adversary.closed_port()
    result = run_module("lessons.02_echo", "client", "hi", "--port", str(port), "--timeout", "1")
    assert result.returncode == 1
    assert "connection refused" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "70000"], "port must be between 0 and 65535"),
    (["serve", "--port", "http"], "not a port number"),
    (["client", "hi", "--timeout", "-1"], "must be more than 0 and at most 3600 seconds"),
    (["client", "hi", "--timeout", "inf"], "must be more than 0 and at most 3600 seconds"),
    (["client", "hi", "--timeout", "nan"], "must be more than 0 and at most 3600 seconds"),
    (["serve", "--host", ""], "empty host"),
    (["client", "hi", "--host", " "], "empty host"),
    (["bogus"], "invalid choice"),
])
def test_bad_arguments_get_a_clear_message(args, message):
    result = run_module("lessons.02_echo", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_fails_clearly():
    from lessons.kit import listen
    with listen() as taken:
        port = taken.getsockname()[1]
        result = run_module("lessons.02_echo", "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name, extra", [("04_nonblocking", []), ("05_select", []), ("07_scaling", []),
                                         ("05_select", ["--selector", "select"]),
                                         ("05_select", ["--selector", "poll"])])
def test_event_loop_servers_from_the_command_line(name, extra):
    with ServerProcess.lesson(name, *extra) as served:
        result = run_module(f"lessons.{name}", "client", "over the loop", "--port", str(served.port))
        assert result.returncode == 0 and result.stdout == "over the loop\n", result.stderr
        code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err


def test_an_unknown_selector_is_refused_clearly():
    result = run_module("lessons.05_select", "serve", "--selector", "iocp")
    assert result.returncode == 2 and "invalid choice: 'iocp'" in result.stderr


def test_udp_serve_with_loss_and_client_with_retries():
    with ServerProcess.lesson("06_udp", "--loss", "0.3", "--seed", "4") as served:
        for word in ("one", "two", "three"):
            result = run_module("lessons.06_udp", "client", word, "--port", str(served.port),
                                "--timeout", "0.1", "--retries", "10")
            assert result.returncode == 0 and result.stdout == word + "\n", result.stderr
        code, err = served.stop(signal.SIGINT)
    assert code == 0 and "dropped (simulated loss)" in err and "Traceback" not in err


def test_udp_client_with_nobody_answering_exits_nonzero():
    from lessons.kit.server import bind_udp
    with bind_udp() as mute:
        result = run_module("lessons.06_udp", "client", "hi", "--port", str(mute.getsockname()[1]),
                            "--timeout", "0.05", "--retries", "2")
    assert result.returncode == 1
    assert "no reply after 3 tries" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["serve", "--loss", "1.5"], "must be at least 0 and less than 1"),
    (["serve", "--loss", "lots"], "not a fraction"),
    (["client", "hi", "--retries", "99"], "--retries must be between 0 and 20, not 99"),
    (["client", "hi", "--timeout", "inf"], "at most 5 seconds"),
    (["serve", "--loss", "nan"], "must be at least 0 and less than 1"),
])
def test_udp_bad_arguments(args, message):
    result = run_module("lessons.06_udp", *args)
    assert result.returncode == 2 and message in result.stderr
