"""The command line every lesson shares: help, demo, serve, client, bad input."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from lessons.kit import adversary
from tests.conftest import ROOT, lesson, run_module

chat = lesson("03_chat")

LESSONS = ["01_basics", "02_echo", "03_chat", "04_nonblocking", "05_select", "06_udp", "07_scaling"]
DEMOS = [name for name in LESSONS if name != "07_scaling"]   # 07's default is the full lab: see its tests


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


@pytest.mark.parametrize("name", DEMOS)
def test_demo_runs_and_exits_zero(name):
    result = run_module(f"lessons.{name}", timeout=20)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "127.0.0.1" not in result.stdout  # no addresses or ports in what a learner compares


class Served:
    """A lesson's server in a child process, as a learner starts it in a terminal."""

    def __init__(self, name: str, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"lessons.{name}", "serve", "--port", "0", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()   # flushed at once even through a pipe
        assert first.startswith("listening on 127.0.0.1:"), first + self.proc.stderr.read()
        self.host, port = first.split()[-1].rsplit(":", 1)
        self.port = int(port)

    def stop(self, sig=signal.SIGINT) -> tuple[int, str]:
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=10)
        finally:
            self.proc.kill() if self.proc.poll() is None else None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_address_and_stops_cleanly(sig):
    served = Served("02_echo")
    try:
        result = run_module("lessons.02_echo", "client", "hello there", "--port", str(served.port))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hello there\n"
        with adversary.silent((served.host, served.port)):  # a client still connected
            code, err = served.stop(sig)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
    assert code == 0, err
    assert "Traceback" not in err


def test_basics_serve_and_client():
    served = Served("01_basics")
    try:
        result = run_module("lessons.01_basics", "client", "--port", str(served.port))
        assert result.stdout.strip() == "hello from the lesson 01 server"
    finally:
        code, err = served.stop()
    assert code == 0 and "Traceback" not in err


def test_client_with_nobody_listening_says_so():
    _, port = adversary.closed_port()
    result = run_module("lessons.02_echo", "client", "hi", "--port", str(port), "--timeout", "1")
    assert result.returncode == 1
    assert "connection refused" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "70000"], "port must be between 0 and 65535"),
    (["serve", "--port", "http"], "not a port number"),
    (["client", "hi", "--timeout", "-1"], "must be more than 0 seconds"),
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


def test_chat_client_with_piped_stdin():
    served = Served("03_chat")
    try:
        with chat.ChatClient((served.host, served.port), "alice") as alice:
            result = run_module("lessons.03_chat", "client", "--name", "bob", "--port", str(served.port),
                                input="hi alice\n/who\n/quit\n")
            assert result.returncode == 0, result.stderr
            assert alice.expect("bob: hi alice")[0] == "* bob joined"
            assert alice.next_line() == "* bob left"
        lines = result.stdout.splitlines()
        assert "you: hi alice" in lines
        assert "* online: alice, bob" in lines
        assert lines[-1] == "* bye"
    finally:
        code, err = served.stop()
    assert code == 0 and "Traceback" not in err


def test_chat_client_with_a_taken_name_exits_nonzero():
    served = Served("03_chat")
    try:
        with chat.ChatClient((served.host, served.port), "alice"):
            result = run_module("lessons.03_chat", "client", "--name", "Alice", "--port", str(served.port),
                                input="hello\n")
        assert result.returncode == 1
        assert "that name is taken" in result.stdout and "Traceback" not in result.stderr
    finally:
        served.stop()


def test_chat_client_stdin_ending_without_quit_leaves_cleanly():
    served = Served("03_chat")
    try:
        result = run_module("lessons.03_chat", "client", "--name", "carol", "--port", str(served.port),
                            input="just one line\n", timeout=15)
        assert result.returncode == 0, result.stderr
    finally:
        code, err = served.stop()
    assert code == 0


@pytest.mark.parametrize("name, extra", [("04_nonblocking", []), ("05_select", []), ("07_scaling", []),
                                         ("05_select", ["--selector", "select"]),
                                         ("05_select", ["--selector", "poll"])])
def test_event_loop_servers_from_the_command_line(name, extra):
    served = Served(name, *extra)
    try:
        result = run_module(f"lessons.{name}", "client", "over the loop", "--port", str(served.port))
        assert result.returncode == 0 and result.stdout == "over the loop\n", result.stderr
    finally:
        code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err


def test_an_unknown_selector_is_refused_clearly():
    result = run_module("lessons.05_select", "serve", "--selector", "iocp")
    assert result.returncode == 2 and "invalid choice: 'iocp'" in result.stderr


def test_udp_serve_with_loss_and_client_with_retries():
    served = Served("06_udp", "--loss", "0.3", "--seed", "4")
    try:
        for word in ("one", "two", "three"):
            result = run_module("lessons.06_udp", "client", word, "--port", str(served.port),
                                "--timeout", "0.1", "--retries", "10")
            assert result.returncode == 0 and result.stdout == word + "\n", result.stderr
    finally:
        code, err = served.stop()
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
    (["client", "hi", "--retries", "99"], "invalid choice"),
])
def test_udp_bad_arguments(args, message):
    result = run_module("lessons.06_udp", *args)
    assert result.returncode == 2 and message in result.stderr
