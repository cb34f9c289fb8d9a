"""Lesson 03 only: the tutorial's server and its real bugs, the Outbox, the threads, the command line.
The protocol and the room's robustness are tested for every room in test_chat_rooms.py."""
from __future__ import annotations

import contextlib
import functools
import ast
import inspect
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from lessons.kit import adversary, chat as protocol, running
from lessons.kit.lineclient import ChatClient
from lessons.kit.processes import ServerProcess
from lessons.kit.stream import read_lines
from tests.conftest import ROOT, lesson, run_module

chat = lesson("03_chat")


# --- The tutorial's server, run as written ---

def connect_three(server, clients):
    """alice, bob, carol, each accepted before the next connects (so clients is in that order)."""
    socks = []
    for n in range(1, 4):
        socks.append(socket.create_connection(server.address, timeout=2))
        server.log.wait_for_event("server", "accept", count=n)
    deadline = time.monotonic() + 2
    while len(clients) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    return socks


def test_a_client_that_leaves_is_never_removed_and_its_thread_spins():
    clients: list = []
    with running(functools.partial(chat.naive_chat_server, clients=clients)) as server:
        alice, bob, carol = connect_three(server, clients)
        with alice, carol:
            start = time.process_time()
            time.sleep(0.5)
            idle = time.process_time() - start
            bob.close()                          # an ordinary goodbye: FIN, recv() -> b''
            start = time.process_time()
            time.sleep(0.5)
            spinning = time.process_time() - start
            assert len(clients) == 3 and clients[1].fileno() != -1   # bob is still "here"
            assert spinning > max(0.05, 2 * idle)   # broadcasting b'' in a loop, as fast as it can


def test_a_sender_is_thrown_out_because_a_receiver_left():
    clients: list = []
    with running(functools.partial(chat.naive_chat_server, clients=clients)) as server:
        alice, bob, carol = connect_three(server, clients)
        server_side = list(clients)
        with alice, carol:
            bob.close()
            time.sleep(0.1)
            alice.sendall(b"one\n")              # reaches carol; bob's kernel answers with RST
            assert carol.recv(100) == b"one\n"
            time.sleep(0.1)
            alice.sendall(b"two\n")              # send() to bob fails in ALICE's thread...
            assert alice.recv(100) == b""        # ...whose bare except closes alice
            carol.settimeout(0.3)
            with pytest.raises(socket.timeout):  # and carol, after bob in the list, never gets it
                carol.recv(100)
            assert server_side[0] not in clients and server_side[2] in clients   # alice is out
            # (bob may be gone too, or not: his spinning thread races alice's, with no lock)


def test_one_recv_is_not_one_line_so_two_senders_garble_each_other():
    clients: list = []
    with running(functools.partial(chat.naive_chat_server, clients=clients)) as server:
        alice, bob, carol = connect_three(server, clients)
        with alice, bob, carol:
            alice.sendall(b"hello, every")       # alice pauses mid-line...
            assert carol.recv(100) == b"hello, every"
            bob.sendall(b"bob here\n")           # ...bob speaks...
            assert carol.recv(100) == b"bob here\n"
            alice.sendall(b"one\n")              # ...alice finishes
            assert carol.recv(100) == b"one\n"
    # What carol's screen shows, line by line:
    assert b"hello, every" + b"bob here\n" + b"one\n" == b"hello, everybob here\none\n"


def test_the_naive_server_stalls_behind_a_slow_reader():
    with running(chat.naive_chat_server) as server:
        result = adversary.talk_past_a_sleeper(server.address)
    assert result == {"listener got every message": False, "talker was blocked": True,
                      "sleepy was dropped": False}


def test_the_naive_listing_is_the_tutorials():
    """Every line of the tutorial's server is in ours, in order, apart from those marked (ours)."""
    places = [up / "shared" / "seed" / "000_dc65efe78563428a.txt" for up in ROOT.parents[:2]]
    seed = next((place for place in places if place.exists()), None)
    if seed is None:
        pytest.skip("the tutorial's text (shared/seed) is not beside the repository")
    text = seed.read_text(encoding="utf-8")
    tutorial = text[text.index("clients = []"):text.index('if __name__ == "__main__":')]
    ours = [line.strip() for line in inspect.getsource(chat.naive_chat_server).splitlines()
            if "# (ours)" not in line and line.strip()]
    theirs = [line.strip() for line in tutorial.splitlines() if line.strip()]
    changed = {"clients = []", "def receive():",   # a fresh list per run; the function's name
               "server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)",
               "server_socket.bind(('localhost', 9999))", "server_socket.listen()",
               "while True:", "client, addr = server_socket.accept()",
               'print(f"Connected with {str(addr)}")',
               "thread = threading.Thread(target=handle, args=(client,))"}
    assert [line for line in theirs if line not in changed] == ours


# --- The room's parts ---

def test_a_closed_outbox_refuses_lines():
    box = chat.Outbox(limit=100)
    assert box.put("hello") and not box.put("x" * 200)      # full: that client is too slow
    box.close()
    assert not box.put("too late")                          # leaving: /msg must not say "sent"
    assert box.take_all() == b"hello\n" and box.take_all() is None


def test_every_line_sent_is_bounded():
    assert len(protocol.encode("é" * 10_000)) == protocol.MAX_SEND + 1   # + its newline
    assert protocol.who_line([f"name{i:04d}" for i in range(2000)]).endswith(" more")


def test_the_room_holds_what_the_descriptors_allow(monkeypatch):
    members, waiting = protocol.room_limits(256)             # macOS's default limit
    assert members + waiting + protocol.RESERVED_FDS <= 256
    monkeypatch.setattr(chat, "fd_limit", lambda: 12)   # 3 kept, 1 waiting: room for 8
    with running(chat.serve) as server:
        members, waiting = protocol.room_limits(12)
        assert (members, waiting) == (8, 1)
        clients = [ChatClient(server.address, f"p{i}") for i in range(members)]
        try:
            with ChatClient(server.address) as late:
                assert late.greeting == chat.ROOM_FULL
        finally:
            for c in clients:
                c.close()


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_more_people_than_descriptors_the_room_says_full_and_goes_on():
    """As with macOS's limit of 256 and 300 people: here 100 descriptors and 150 people."""
    start = ("import resource, runpy, sys\n"
             "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))\n"
             "sys.argv = ['lessons.03_chat', 'serve', '--quiet'] + sys.argv[1:]\n"
             "runpy.run_module('lessons.03_chat', run_name='__main__')\n")
    members, _ = protocol.room_limits(100)
    with ServerProcess(["-c", start]) as served, contextlib.ExitStack() as stack:
        answers = []
        for i in range(150):
            sock = stack.enter_context(socket.create_connection(served.address, timeout=5))
            sock.sendall(f"p{i}\n".encode())
            lines = read_lines(sock, protocol.MAX_SEND)
            answers.append(next(lines).decode())
            if answers[-1] == protocol.GREETING:    # let it join before the next one comes
                assert next(lines).decode() == protocol.welcome(f"p{i}")
        assert answers.count(protocol.GREETING) == members
        assert answers.count(protocol.ROOM_FULL) == 150 - members
        with ChatClient(served.address) as late:   # still serving, still full
            assert late.greeting == protocol.ROOM_FULL
        assert served.alive()


def test_shutdown_joins_every_thread():
    before = threading.active_count()
    with running(chat.serve) as server:
        clients = [ChatClient(server.address, f"p{i}") for i in range(20)]
        clients[0].say("hello")
        clients[-1].expect("p0: hello")
        assert threading.active_count() >= before + 60   # reader and writer per client, + ours
    for c in clients:
        assert c.wait_closed(5)   # the server closed every connection
        c.close()
    assert threading.active_count() == before


def test_the_lesson_keeps_no_copy_of_the_protocol():
    """Its limits, texts and name rules are the kit's, which lessons 08 and 11 use too: a
    copy defined in the lesson could drift from them unseen."""
    tree = ast.parse(pathlib.Path(chat.__file__).read_text(encoding="utf-8"))
    defined = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
               for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
               if isinstance(target, ast.Name)}
    defined |= {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    shared = {name for name in vars(protocol) if not name.startswith("_")}
    assert defined & shared == {"clean"}   # taught here; test_architecture checks it is the kit's
    assert chat.name_problem is protocol.name_problem and chat.MAX_LINE == protocol.MAX_LINE


# --- The command line ---

def chat_client(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lessons.03_chat", "client", "--port", str(port), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin",
                                                      "PYTHONWARNINGS": "error::ResourceWarning"})


def test_the_client_talks_and_leaves_at_once_on_quit():
    with ServerProcess.lesson("03_chat") as served, ChatClient(served.address, "alice") as alice:
        person = chat_client(served.port, "--name", "bob")
        person.stdin.write("hi alice\n/who\n/quit\n")
        person.stdin.flush()                     # and stdin stays open, as at a keyboard
        try:
            assert person.wait(15) == 0          # "* bye" and the server's close end it at once
        finally:
            person.kill()
            out, err = person.communicate()
        assert alice.expect("bob: hi alice")[0] == "* bob joined"
        assert alice.next_line() == "* bob left"
    lines = out.splitlines()
    assert "you: hi alice" in lines and "* online: alice, bob" in lines and lines[-1] == "* bye"
    assert "Traceback" not in err


def test_a_taken_name_lets_the_person_try_another():
    with ServerProcess.lesson("03_chat") as served, ChatClient(served.address, "bob") as bob:
        result = run_module("lessons.03_chat", "client", "--name", "BOB", "--port", str(served.port),
                            input="bob2\nhello\n/quit\n", timeout=20)
        assert result.returncode == 0, result.stderr
        assert protocol.TAKEN in result.stdout and "* welcome, bob2!" in result.stdout
        assert bob.expect("bob2: hello")


def test_the_client_says_why_when_the_server_goes_away():
    with ServerProcess.lesson("03_chat") as served, ChatClient(served.address, "watcher") as watcher:
        person = chat_client(served.port, "--name", "carol")
        watcher.expect("* carol joined", timeout=15)   # carol is in, waiting at her keyboard
        served.stop(signal.SIGTERM)
    try:
        assert person.wait(15) == 1              # no Enter needed
    finally:
        person.kill()
        out, err = person.communicate()
    assert "the server closed the connection" in out + err and "Traceback" not in err


def test_the_client_leaves_cleanly_when_its_input_ends():
    with ServerProcess.lesson("03_chat") as served:
        result = run_module("lessons.03_chat", "client", "--name", "carol", "--port", str(served.port),
                            input="just one line\n", timeout=15)
        assert result.returncode == 0, result.stderr
        code, err = served.stop()
    assert code == 0 and "Traceback" not in err


def test_serve_refuses_absurd_timeouts():
    for option, value, message in [("--idle-timeout", "-1", "must be 0 (never) or more than 0"),
                                   ("--idle-timeout", "nan", "must be 0 (never) or more than 0"),
                                   ("--naming-timeout", "0", "must be more than 0"),
                                   ("--naming-timeout", "inf", "must be more than 0")]:
        result = run_module("lessons.03_chat", "serve", option, value)
        assert result.returncode == 2 and message in result.stderr, (option, value, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value, message", [
    ("0", "--max-members must be between 1 and 10,000, not 0"),
    ("10001", "--max-members must be between 1 and 10,000, not 10,001"),
    ("lots", "not a whole number: 'lots'"),
])
def test_serve_refuses_a_nonsense_room_size(value, message):
    result = run_module("lessons.03_chat", "serve", "--max-members", value)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_NOFILE on Windows")
def test_serve_refuses_a_room_size_the_descriptors_cannot_hold():
    start = ("import resource, runpy, sys\n"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))\n"
             "sys.argv = ['lessons.03_chat', 'serve', '--max-members', '1000']\n"
             "runpy.run_module('lessons.03_chat', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", start], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--max-members 1,000 needs 1,114 open files, and this system allows 100 (ulimit -n)")


def test_serve_max_members_is_honoured_the_next_one_is_turned_away():
    with ServerProcess.lesson("03_chat", "--quiet", "--max-members", "3") as served, \
            contextlib.ExitStack() as stack:
        inside = [stack.enter_context(ChatClient(served.address, f"p{i}")) for i in range(3)]
        assert all(c.welcome == protocol.welcome(f"p{i}") for i, c in enumerate(inside))
        with ChatClient(served.address) as late:
            assert late.greeting == protocol.ROOM_FULL and late.wait_closed(5)
        inside[0].say("/quit")
        inside[1].expect("* p0 left")
        with ChatClient(served.address, "p3") as next_one:   # a place came free
            assert next_one.welcome == protocol.welcome("p3")


def test_serve_with_an_idle_timeout_drops_a_silent_member():
    with ServerProcess.lesson("03_chat", "--idle-timeout", "0.5") as served, \
            ChatClient(served.address, "quiet") as quiet, ChatClient(served.address, "chatty") as chatty:
        quiet.expect("* chatty joined")
        chatty.say("")                            # still here
        assert quiet.expect(protocol.IDLE_BYE, timeout=5)
        assert quiet.wait_closed(2)
