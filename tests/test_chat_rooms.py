"""Every chat room in the workbook speaks lesson 03's protocol: one conformance suite for all.

A room is a serve function ``serve(listener, stop, log, **options)`` that takes these
keyword options, so that every test here runs unchanged against each room:

    idle_timeout    seconds a member may stay silent (0: never); announced "* NAME left (idle)"
    naming_timeout  seconds a new connection has to send a name (0: never)
    max_members     named members at most (None: what the process has descriptors for)
    max_waiting     connections still choosing a name; when full, the oldest is dropped

The protocol's texts and limits are in lessons/kit/chat.py. Add a room to ROOMS and it is tested.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import multiprocessing
import selectors
import socket
import threading
import time

import pytest

from lessons.kit import adversary, chat, running
from lessons.kit.lineclient import ChatClient, ConnectionClosed
from lessons.kit.server import raise_fd_limit
from lessons.kit.stream import LineBuffer, recv_until_eof
from tests.conftest import lesson
from tests.tls_room import tls_room

ROOMS = [pytest.param(lesson("03_chat").serve, id="03_chat"),
         pytest.param(lesson("08_asyncio").serve, id="08_asyncio"),
         pytest.param(tls_room, id="11_tls")]   # lesson 03's room over TLS: see tests/tls_room.py


@pytest.fixture(params=ROOMS)
def room(request):
    """A function that starts the room under test with the given options; ``.serve`` is the room."""
    def start(**options):
        return running(functools.partial(request.param, **options))
    start.serve = request.param
    return start


@contextlib.contextmanager
def in_a_process_of_its_own(serve):
    """Run a room in a child process, for a load test: its clients, in this process, would
    otherwise share one GIL with the room's threads, and each slow the other down."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=serve_until_told, args=(serve, theirs), daemon=True)
    child.start()
    theirs.close()
    try:
        assert ours.poll(30), "the room's process did not start"
        yield ours.recv()
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
        ours.close()
        child.close()


def serve_until_told(serve, pipe) -> None:
    """(In the child.) Serve, send the address, stop when the parent says so or goes away."""
    with running(serve) as server:
        pipe.send(server.address)
        with contextlib.suppress(EOFError, OSError):
            pipe.recv()


@pytest.fixture
def served(room):
    with room() as server:
        yield server


# --- The protocol ---

def test_greeting_name_and_welcome(served):
    with ChatClient(served.address) as c:
        assert c.greeting == chat.GREETING
        c.say("alice")
        assert c.next_line() == chat.welcome("alice")


BAD_NAMES = [
    ("", chat.NAME_LENGTH), ("x" * 33, chat.NAME_LENGTH),
    ("two words", chat.NAME_INVISIBLE), ("tab\there", chat.NAME_INVISIBLE),
    ("\u3164", chat.NAME_INVISIBLE),           # HANGUL FILLER: looks like nothing
    ("\u2800", chat.NAME_INVISIBLE),           # BRAILLE PATTERN BLANK
    ("\u0301", chat.NAME_INVISIBLE),           # a combining accent on nothing
    ("bob\u3164", chat.NAME_INVISIBLE),        # passes for "bob"
    ("\u0430lice", chat.NAME_MIXED),           # Cyrillic а, then Latin
    ("\u03a9mega", chat.NAME_MIXED),           # Greek Ω, then Latin
]


def test_a_name_may_not_stack_accents_to_pass_for_another(served):
    """UTS #39's checks on marks: the same accent twice on one letter draws as one (so
    "a" + two acute accents passes for "á"), and a pile of them covers the lines around."""
    with ChatClient(served.address, "\u00e1lice"), ChatClient(served.address) as second:
        for name in ["a\u0301\u0301lice", "\u00e1\u0301lice", "z" + "\u0301\u0300\u0302\u0303\u0308"]:
            second.say(name)
            assert (name, second.next_line()) == (name, chat.NAME_MARKS)
        second.say("vi\u1ec7t")               # ệ: two different marks on one letter, as Vietnamese writes
        assert second.next_line() == chat.welcome("vi\u1ec7t")


def test_invalid_names_are_refused_and_another_may_be_tried(served):
    with ChatClient(served.address) as c:
        for bad, problem in BAD_NAMES:         # the protocol lets a client try again and again
            c.say(bad)
            assert (bad, c.next_line()) == (bad, problem)
        c.say("fine")
        assert c.next_line() == chat.welcome("fine")


def test_names_that_look_the_same_are_the_same_name(served):
    look_alikes = ["ALICE", "\uff41lice", "\U0001d41alice", "al\u200bice"]   # fullwidth a,
    with ChatClient(served.address, "alice"), ChatClient(served.address) as second:   # bold a, ZWSP
        for name in look_alikes:
            second.say(name)
            assert (name, second.next_line()) == (name, chat.TAKEN)
        second.say("jos\u00e9")                # é composed...
        assert second.next_line() == chat.welcome("jos\u00e9")
        with ChatClient(served.address) as third:
            third.say("jose\u0301")            # ...and decomposed: one name
            assert third.next_line() == chat.TAKEN


def test_names_in_one_script_or_an_allowed_mix_join(served):
    names = ["山田Taro", "山田たろう", "ロボ太郎", "김철수Kim", "ㄅㄆ中文", "Иван", "Ωμέγα", "José",
             "l33t_h4x0r"]
    with contextlib.ExitStack() as stack:
        for name in names:
            c = stack.enter_context(ChatClient(served.address, name))
            assert c.welcome == chat.welcome(name)
        c.say("/who")
        assert c.next_line() == chat.who_line(sorted(names, key=chat.name_key))


def test_messages_go_to_everyone_else_with_joins_and_leaves(served):
    with ChatClient(served.address, "alice") as a, ChatClient(served.address, "bob") as b:
        assert a.next_line() == "* bob joined"
        a.say("hello")
        assert b.next_line() == "alice: hello"
        b.say("hi\r")                        # \r\n line ends are accepted
        assert a.next_line() == "bob: hi"
        b.say("/quit")
        assert b.next_line() == chat.BYE
        assert b.wait_closed(2)
        assert a.next_line() == "* bob left"
        assert a.unread() == [] and b.unread() == []   # nobody gets their own message back


def test_who_is_sorted_and_unknown_commands_are_refused(served):
    with ChatClient(served.address, "zed") as z, ChatClient(served.address, "Amy") as a, \
            ChatClient(served.address, "bob"):
        z.say("/who")
        assert z.expect("* online: Amy, bob, zed")
        a.say("/dance")
        assert a.expect(chat.UNKNOWN)[:-1] == ["* bob joined"]


def test_a_full_room_says_so(room):
    with room(max_members=2) as server, ChatClient(server.address, "alice"), \
            ChatClient(server.address, "bob"), ChatClient(server.address) as carol:
        assert carol.greeting == chat.ROOM_FULL
        assert carol.wait_closed(2)


# --- What one member can send to the others ---

def test_a_line_too_long_is_refused_and_the_connection_closed(served):
    with ChatClient(served.address, "alice") as a, ChatClient(served.address, "spammer") as s:
        a.expect("* spammer joined")
        s.send_raw(b"x" * chat.MAX_LINE + b"\n")     # exactly the limit is fine
        assert a.next_line() == "spammer: " + "x" * chat.MAX_LINE
        s.send_raw(b"y" * 5000 + b"\n")
        assert s.expect(chat.TOO_LONG)
        assert s.wait_closed(2)
        assert a.next_line() == "* spammer left"


def test_a_line_that_never_ends_is_cut_off(served):
    with ChatClient(served.address, "endless") as e:
        e.send_raw(b"z" * 10_000)                    # no newline at all
        assert e.expect(chat.TOO_LONG)
        assert e.wait_closed(2)


def test_invalid_utf8_is_replaced_and_escapes_are_stripped(served):
    with ChatClient(served.address, "alice") as a, ChatClient(served.address) as m:
        m.send_raw(b"mal\x1b[31mlory\x07\n")
        assert m.next_line() == chat.welcome("mallory")
        assert a.next_line() == "* mallory joined"
        m.send_raw(b"caf\xc3 \xff\n")
        assert a.next_line() == "mallory: caf\ufffd \ufffd"
        m.send_raw(b"\x1b]0;owned\x07\x1b[2J\x1b[1;1Hclear\x00\x08 \xc2\x9b31m\xe2\x80\xaeevil\r\n")
        line = a.next_line()
        assert line == "mallory: clear 31mevil"
        assert not any(ord(ch) < 32 or 0x7f <= ord(ch) < 0xa0 for ch in line)


def test_what_the_server_sends_is_bounded_even_for_invalid_utf8(served):
    with ChatClient(served.address, "alice") as a, ChatClient(served.address, "m") as m:
        a.expect("* m joined")
        m.send_raw(b"\xff" * chat.MAX_LINE + b"\n")  # each byte becomes U+FFFD: 3 bytes
        line = a.next_line()
        assert line == "m: " + "\ufffd" * (chat.MAX_TEXT // 3)
        assert len(line.encode()) <= chat.MAX_SEND and a.skipped == 0


FORMAT_CHARACTERS = [
    ("a\u2028* admin joined", "a * admin joined"),        # LINE SEPARATOR: a forged second line
    ("x\u2029y", "x y"),                                   # PARAGRAPH SEPARATOR
    ("\u202eevil\u202c \u2066iso\u2069 \u200eltr\u200f", "evil iso ltr"),   # bidi controls, marks
    ("zero\u200bwidth\u2060joined \ufeffbom\u00ad", "zerowidthjoined bom"),
    ("tagged\U000e0041\U000e0042 text", "tagged text"),   # tag characters hide text
    ("\U0001f469\u200d\U0001f4bb \u2764\ufe0f", "\U0001f469\u200d\U0001f4bb \u2764\ufe0f"),  # ZWJ, VS16
    ("\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",   # England's flag
     "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"),
    ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"),  # ZWNJ
]


def test_format_characters_are_stripped_and_emoji_kept(served):
    with ChatClient(served.address, "alice") as a, ChatClient(served.address, "m") as m:
        a.expect("* m joined")
        for sent, shown in FORMAT_CHARACTERS:
            m.say(sent)
            assert a.next_line() == f"m: {shown}"


def test_who_stays_one_bounded_line(served):
    names = [f"{i:03d}" + "名" * 29 for i in range(90)]   # 90 bytes each: far past 8 KiB together
    with contextlib.ExitStack() as stack:
        for name in names:
            sock = stack.enter_context(socket.create_connection(served.address, timeout=5))
            sock.sendall(name.encode() + b"\n")
        with ChatClient(served.address, "asker", timeout=10) as asker:
            deadline, counted = time.monotonic() + 10, 0
            while counted < len(names) + 1 and time.monotonic() < deadline:   # until all have joined
                asker.say("/who")
                line = next(line for line in iter(asker.next_line, None) if line.startswith("* online"))
                assert len(line.encode()) <= chat.MAX_SEND and asker.skipped == 0
                listed = line.removeprefix("* online: ")
                shown, cut, more = listed.rpartition(" and ")   # ("", "", listed) if not cut
                counted = len(shown.split(", ")) + int(more.split()[0]) if cut else \
                    len(listed.split(", "))   # not all here yet (a relay delays them): ask again
    assert line.endswith(" more") and line.startswith(f"* online: {names[0]}, {names[1]}, ")
    assert counted == len(names) + 1


# --- Hostile and unlucky members ---

def test_a_client_that_never_reads_is_dropped_and_the_room_goes_on(served):
    result = adversary.talk_past_a_sleeper(served.address)
    assert result == {"listener got every message": True, "talker was blocked": False,
                      "sleepy was dropped": True}
    assert served.errors == []


def test_resets_in_the_middle_of_a_broadcast(served):
    with ChatClient(served.address, "talker") as t, ChatClient(served.address, "witness") as w:
        t.expect("* witness joined")
        stop, sent = threading.Event(), []

        def talk():
            while not stop.is_set():
                t.say(f"message {len(sent)}")
                sent.append(len(sent))
                time.sleep(0.001)

        talker = threading.Thread(target=talk, name="talker")
        talker.start()
        try:
            for n in range(30):    # clients join and vanish with RST while messages fly
                adversary.reset(served.address, f"ghost{n}\n".encode(), pause=0.005)
        finally:
            stop.set()
            talker.join(5)
        t.say("done")
        seen = [line for line in w.expect("talker: done", timeout=10) if line.startswith("talker: ")]
    assert seen[:-1] == [f"talker: message {i}" for i in sent] and len(sent) > 10
    assert served.errors == []


def test_two_hundred_clients_ten_messages_each_in_order(room):
    """Every message reaches every other member, each sender's in the order sent.
    One thread reads all 200 sockets through a selector (200 reader threads would be slow)."""
    n, messages = 200, 10     # 200 x 199 x 10 = 398,000 lines delivered, in interleaved rounds
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(in_a_process_of_its_own(room.serve))
        socks = []
        for i in range(n):   # each says its name at once: a room lets only so many wait nameless
            socks.append(stack.enter_context(socket.create_connection(address, timeout=10)))
            socks[-1].sendall(f"c{i}\n".encode())
        crowd = Crowd(socks, stack.enter_context(selectors.DefaultSelector()))
        # Each hears the greeting, its welcome, and the joins of all who came after it:
        # one "joined" line for each pair of clients.
        crowd.read_until(lambda everyone: sum(map(len, everyone)) == 2 * n + n * (n - 1) // 2)
        assert all(lines[:2] == [chat.GREETING.encode(), chat.welcome(f"c{i}").encode()]
                   for i, lines in enumerate(crowd.lines))
        crowd.forget()
        for j in range(messages):                 # round by round, so the senders interleave
            for sock in socks:
                sock.sendall(f"m{j}\n".encode())
            crowd.read_what_arrived()             # a client that reads keeps up
        crowd.read_until(lambda everyone: all(len(lines) >= (n - 1) * messages for lines in everyone))
    in_order = [b"m%d" % j for j in range(messages)]
    for i, lines in enumerate(crowd.lines):
        heard = collections.defaultdict(list)     # sender -> what it said, in arrival order
        for line in lines:
            name, _, text = line.partition(b": ")
            heard[name].append(text)
        assert f"c{i}".encode() not in heard, f"c{i} got its own message back"
        assert len(heard) == n - 1 and all(texts == in_order for texts in heard.values()), \
            f"c{i} lost messages, or got them out of order"


class Crowd:
    """Many sockets read by one thread: the lines (bytes) each has received, in order."""

    def __init__(self, socks, selector):
        self.socks, self.selector = socks, selector
        self.lines: list[list[bytes]] = [[] for _ in socks]
        self.buffers = [LineBuffer(chat.MAX_SEND) for _ in socks]
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)

    def read_until(self, done, timeout: float = 30.0) -> None:
        """Read whatever arrives until done(lines) holds; lines[i] is what socket i received."""
        deadline = time.monotonic() + timeout
        while not done(self.lines):
            if time.monotonic() > deadline:
                raise TimeoutError(f"lines so far: {[len(lines) for lines in self.lines]}")
            self.read_what_arrived(0.5)

    def read_what_arrived(self, wait: float = 0.0) -> None:
        """One pass: read every socket that has something, waiting at most ``wait`` for any."""
        for key, _ in self.selector.select(wait):
            data = key.fileobj.recv(65536)
            assert data, f"c{key.data} was disconnected"
            self.lines[key.data] += self.buffers[key.data].feed(data)

    def forget(self) -> None:
        self.lines = [[] for _ in self.socks]


# --- Timeouts, and connections that never say a name ---

def test_an_idle_member_is_dropped_and_an_active_one_stays(room):
    with room(idle_timeout=0.5) as server, ChatClient(server.address, "sleepy") as sleepy, \
            ChatClient(server.address, "awake") as awake:
        sleepy.expect("* awake joined")
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:   # an empty line every 0.2 s: "still here"
            awake.say("")
            time.sleep(0.2)
        assert awake.expect("* sleepy left (idle)", timeout=3) == ["* sleepy left (idle)"]
        assert sleepy.expect(chat.IDLE_BYE, timeout=3)
        assert sleepy.wait_closed(2)
        awake.say("/who")
        assert awake.next_line() == "* online: awake"


def test_a_connection_without_a_name_is_dropped(room):
    with room(naming_timeout=0.3, idle_timeout=0) as server, \
            ChatClient(server.address) as nameless, ChatClient(server.address, "named") as named:
        assert nameless.next_line(timeout=3) == chat.NAMING_TOO_SLOW
        assert nameless.wait_closed(2)
        time.sleep(0.5)                     # past the naming timeout: a member may stay quiet
        named.say("/who")
        assert named.next_line() == "* online: named"


def test_520_silent_connections_cannot_lock_people_out(served):
    raise_fd_limit(4096)
    with contextlib.ExitStack() as stack:
        # Time enough on a busy machine (30 s for every step): through tls_room, each silent
        # one costs TLS handshakes in this process. The test is that "real" gets in at all.
        silent = [stack.enter_context(socket.create_connection(served.address, timeout=30))
                  for _ in range(520)]
        with ChatClient(served.address, "real", timeout=30) as real:
            assert real.welcome == chat.welcome("real")
        # The connection that waited longest was told why, and closed, to make room.
        assert recv_until_eof(silent[0]).decode().splitlines() == [chat.GREETING, chat.CROWDED]


def test_a_member_who_sent_a_name_is_not_dropped_as_waiting(room):
    with room(max_waiting=2) as server, ChatClient(server.address, "early") as early, \
            contextlib.ExitStack() as stack:
        for _ in range(5):                  # more nameless connections than the room lets wait
            stack.enter_context(socket.create_connection(server.address, timeout=5))
        time.sleep(0.2)
        early.say("/who")
        assert early.next_line() == "* online: early"


def test_the_server_closing_ends_a_client_at_once(room):
    with room() as server:
        c = ChatClient(server.address, "alice")
    with c, pytest.raises(ConnectionClosed):
        c.next_line(timeout=5)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no RLIMIT_NOFILE on Windows")
@pytest.mark.parametrize("name", ["03_chat", "08_asyncio"])
def test_with_64_descriptors_the_room_holds_all_it_can_and_never_runs_out(name):
    """`ulimit -n 64`: the room is sized by what the process really has left (a handful of
    descriptors of its own), not one member; full, it says so, and accept() never fails."""
    from lessons.kit.processes import ServerProcess
    start = ("import resource, runpy, sys\n"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
             f"sys.argv = ['lessons.{name}', 'serve'] + sys.argv[1:]\n"
             f"runpy.run_module('lessons.{name}', run_name='__main__')\n")
    members, waiting = chat.room_limits(64)
    assert members >= 32
    with ServerProcess(["-c", start]) as served, contextlib.ExitStack() as stack:
        for i in range(members):
            person = stack.enter_context(ChatClient(served.address, f"p{i}"))
            assert person.welcome == chat.welcome(f"p{i}")
        with ChatClient(served.address) as late:
            assert late.greeting == chat.ROOM_FULL
        code, err = served.stop()
    assert code == 0 and "out of file descriptors" not in err and "Traceback" not in err
