"""Lesson 10: envelopes, pickle, sendfile, XML-RPC, the JSON-RPC server (against the
specification's own examples and hostile peers), lost replies and idempotence, ZeroMQ."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import signal
import socket
import struct
import threading
import time
import xmlrpc.client

import pytest
import zmq

from lessons.kit import jsonrpc, mq, running
from lessons.kit.adversary import abort, closed_port, connected_pair, silent_server
from lessons.kit.processes import ServerProcess
from lessons.kit.relay import lossy_relay
from lessons.kit.stream import send_message
from lessons.kit.transcript import CLOSE, NOTE, SERVER, Transcript
from tests.conftest import lesson

msg = lesson("10_messages")


# --- Envelopes: a header that says what the body is ---

ENVELOPES = [
    (b'{"a": [1, 2]}', "application/json", "utf-8", {"a": [1, 2]}),
    ("你好".encode("gbk"), "text/plain", "gbk", "你好"),
    ("héllo".encode("utf-16"), "text/plain", "utf-16", "héllo"),
    (bytes(range(256)), "application/octet-stream", "binary", bytes(range(256))),
    (b"", "text/plain", "utf-8", ""),
]


def test_an_envelope_arrives_as_the_value_it_describes():
    with connected_pair() as (a, b):
        for body, kind, encoding, _ in ENVELOPES:
            msg.send_envelope(a, body, kind, encoding)
        a.shutdown(socket.SHUT_WR)
        assert [msg.recv_envelope(b) for _ in ENVELOPES] == [(kind, value) for _, kind, _, value in ENVELOPES]
        assert msg.recv_envelope(b) is None


def raw_envelope(header, body: bytes = b"") -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("!I", len(head)) + head + body


BAD_ENVELOPES = [
    (raw_envelope({"type": "application/python-pickle", "encoding": "binary", "length": 3}, b"abc"), "refusing"),
    (raw_envelope({"type": "text/plain", "encoding": "no-such-codec", "length": 2}, b"hi"), "unknown encoding"),
    (raw_envelope({"type": "text/plain", "encoding": "utf-8", "length": 1 << 40}), "not between"),
    (raw_envelope({"type": "text/plain", "encoding": "utf-8", "length": -1}), "not between"),
    (raw_envelope({"type": "text/plain", "encoding": "utf-8", "length": "2"}, b"hi"), "not between"),
    (raw_envelope({"type": "text/plain", "length": 2}, b"hi"), "unreadable header"),
    (raw_envelope(b"not json"), "unreadable header"),
    (raw_envelope(b"[1, 2]"), "unreadable header"),
    (struct.pack("!I", 1 << 20), "over the 1,024-byte limit"),
]


def test_a_bad_envelope_is_refused_before_its_body_is_read():
    for wire, why in BAD_ENVELOPES:
        with connected_pair() as (a, b):
            a.sendall(wire)
            with pytest.raises(ValueError, match=why):
                msg.recv_envelope(b)


def test_a_wrong_encoding_is_an_error_not_a_guess_and_a_short_body_an_eof():
    with connected_pair() as (a, b):
        msg.send_envelope(a, "你好".encode("gbk"), "text/plain", "utf-8")   # the header lies
        with pytest.raises(UnicodeDecodeError):
            msg.recv_envelope(b)
        a.sendall(raw_envelope({"type": "text/plain", "encoding": "utf-8", "length": 10}, b"only5"))
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError):
            msg.recv_envelope(b)


# --- pickle from the network ---

def test_pickle_runs_the_call_the_sender_chose_and_json_does_not():
    msg.EVIDENCE.clear()
    payload = pickle.dumps(msg.Crafted())
    assert b"record" in payload
    with connected_pair() as (a, b):
        send_message(a, payload)
        got = msg.naive_receive_object(b)
        assert got == "the sender chose this call, and the receiver ran it"   # not a Crafted object
        assert msg.EVIDENCE == [got]
        send_message(a, payload)
        with pytest.raises(ValueError):        # JSON: these bytes are not data it knows
            msg.receive_object(b)
        send_message(a, json.dumps({"safe": [1, "two", None]}).encode())
        assert msg.receive_object(b) == {"safe": [1, "two", None]}
    assert len(msg.EVIDENCE) == 1
    msg.EVIDENCE.clear()


# --- sendfile ---

def test_a_file_sent_with_sendfile_arrives_whole(tmp_path):
    for size in (0, 1, 65536, 3_000_001):
        source, copy = tmp_path / f"sent-{size}", tmp_path / f"received-{size}"
        source.write_bytes(os.urandom(size))
        results = []
        with connected_pair() as (a, b):
            receiver = threading.Thread(target=lambda: results.append(msg.receive_file(b, str(copy))))
            receiver.start()
            sent = msg.send_file(a, str(source))
            receiver.join(10)
        assert sent == size
        assert results == [(size, msg.sha256_of(str(source)))]
        assert copy.read_bytes() == source.read_bytes()


def test_a_file_too_large_or_cut_short_is_refused(tmp_path):
    with connected_pair() as (a, b):
        a.sendall(msg.FILE_SIZE.pack(1 << 40))
        with pytest.raises(ValueError, match="over the"):
            msg.receive_file(b, str(tmp_path / "x"))
    with connected_pair() as (a, b):
        a.sendall(msg.FILE_SIZE.pack(100) + b"x" * 40)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError, match="40 of 100"):
            msg.receive_file(b, str(tmp_path / "y"))


# --- XML-RPC ---

def divide(a, b):
    return a / b


def test_xmlrpc_calls_and_reports_errors_as_faults():
    with msg.xmlrpc_server(divide, pow) as url, msg.xmlrpc_proxy(url) as proxy:
        assert proxy.pow(2, 10) == 1024
        assert proxy.divide(1, 4) == 0.25
        with pytest.raises(xmlrpc.client.Fault, match="ZeroDivisionError"):
            proxy.divide(1, 0)
        with pytest.raises(xmlrpc.client.Fault, match="not supported"):
            proxy.nosuch()


def test_the_timeout_transport_gives_up_on_a_silent_server():
    with silent_server(hold=3.0) as (host, port):
        with msg.xmlrpc_proxy(f"http://{host}:{port}/", timeout=0.2) as proxy:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                proxy.pow(2, 2)
            assert time.monotonic() - started < 2.5   # well before the server would hang up


def test_xmlrpc_client_repeats_a_call_whose_reply_was_lost():
    runs = []

    def bump():
        runs.append(1)
        return len(runs)

    with msg.xmlrpc_server(bump) as url:
        host, port = url[len("http://"):].rstrip("/").split(":")
        log = Transcript()
        with lossy_relay((host, int(port)), lose=1, hang_up=True, log=log) as relay, \
                msg.xmlrpc_proxy(f"http://{relay.host}:{relay.port}/") as proxy:
            assert proxy.bump() == 2          # one call in the program...
    assert len(runs) == 2                     # ...two on the server: the client resent it
    assert [e.kind for e in log.events()].count(NOTE) == 1


# --- JSON-RPC: the specification's own examples ---

def subtract(minuend, subtrahend):
    return minuend - subtrahend


SPEC_METHODS = {
    "subtract": subtract,
    "sum": lambda *numbers: sum(numbers),
    "update": lambda *args: None,
    "notify_hello": lambda *args: None,
    "notify_sum": lambda *args: None,
    "get_data": lambda: ["hello", 5],
}


@contextlib.contextmanager
def spec_server(**options):
    import functools
    with running(functools.partial(jsonrpc.serve, methods=SPEC_METHODS, **options)) as server:
        yield server


SENTINEL = '{"jsonrpc": "2.0", "method": "subtract", "params": [0, 0], "id": "sentinel"}'


def exchange(client: jsonrpc.RpcClient, line):
    """Send a line, then a sentinel request; return the reply to the line, or None if it got none.

    The server answers a connection's lines in order, so if the first reply is
    the sentinel's, the line had no reply at all: no waiting for a timeout.
    """
    client.send(line)
    client.send(SENTINEL)
    first = client.receive()
    if isinstance(first, dict) and first.get("id") == "sentinel":
        return None
    assert client.receive()["id"] == "sentinel"
    return first


def without_data(reply):
    """The specification's examples show no "data" member: compare without ours."""
    if isinstance(reply, list):
        return [without_data(r) for r in reply]
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
        return {**reply, "error": {k: v for k, v in reply["error"].items() if k != "data"}}
    return reply


# Each pair is the specification's "-->" line and its "<--" line (None: nothing comes back).
SPEC_EXAMPLES = [
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     {"jsonrpc": "2.0", "result": -19, "id": 2}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
     {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
     {"jsonrpc": "2.0", "result": 19, "id": 4}),
    ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ('{"jsonrpc": "2.0", "method": "foobar"}', None),
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method"]',
     {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ('[]', {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ('[1]', [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    ('[1,2,3]', [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
     ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
     ' {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
     ' {"foo": "boo"},'
     ' {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
     ' {"jsonrpc": "2.0", "method": "get_data", "id": "9"}]',
     [{"jsonrpc": "2.0", "result": 7, "id": "1"},
      {"jsonrpc": "2.0", "result": 19, "id": "2"},
      {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
      {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
      {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]),
    ('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
     ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]', None),
]


@pytest.fixture(scope="module")
def spec_address():
    with spec_server() as server:
        yield server.address


@pytest.fixture
def spec(spec_address):
    with jsonrpc.RpcClient(spec_address) as client:
        yield client


def test_every_example_in_the_specification(spec):
    got = [without_data(exchange(spec, line)) for line, _ in SPEC_EXAMPLES]
    wrong = [(line, reply) for (line, expected), reply in zip(SPEC_EXAMPLES, got) if reply != expected]
    assert not wrong


# --- JSON-RPC: the lesson's server against wrong and hostile input ---

@pytest.fixture(scope="module")
def server():
    with running(msg.serve) as srv:
        yield srv


@pytest.fixture
def rpc(server):
    with jsonrpc.RpcClient(server.address) as client:
        yield client


def code_of(reply) -> int:
    return reply["error"]["code"]


MALFORMED = [
    b"{", b"not json", b'{"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": 1',
    b"\xff\xfe\x00", "{\"jsonrpc\": \"2.0\", \"method\": \"echo\", \"params\": [\"caf\xe9\"], \"id\": 1}".encode("latin-1"),
    b'{"jsonrpc": "2.0", "method": "add", "params": [NaN, 1], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "add", "params": [Infinity, 1], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "add", "params": [1e400, 1], "id": 1}',
    b"[" * 60000, b'{"a": ' * 10000,
    b"'single quotes'", b"{'jsonrpc': '2.0'}",
]


def test_malformed_json_is_a_parse_error_with_id_null(rpc):
    replies = {line[:40]: exchange(rpc, line) for line in MALFORMED}
    assert {line: (code_of(r), r["id"]) for line, r in replies.items()} == \
        {line: (jsonrpc.PARSE_ERROR, None) for line in replies}


NOT_REQUESTS = [
    b'"a string"', b"42", b"null", b"true", b"{}",
    b'{"jsonrpc": "1.0", "method": "echo", "params": ["x"], "id": 1}',
    b'{"method": "echo", "params": ["x"], "id": 1}',
    b'{"jsonrpc": 2.0, "method": "echo", "params": ["x"], "id": 1}',
    b'{"jsonrpc": "2.0", "method": ["echo"], "id": 1}',
    b'{"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 1}',
    b'{"jsonrpc": "2.0", "method": "echo", "params": 7, "id": 1}',
    b'{"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": true}',
    b'{"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": {"a": 1}}',
    b'{"jsonrpc": "2.0", "method": "echo", "params": ["x"], "id": [1]}',
]


def test_json_that_is_not_a_request_is_an_invalid_request(rpc):
    replies = {line: exchange(rpc, line) for line in NOT_REQUESTS}
    assert {line: (code_of(r), r["id"]) for line, r in replies.items()} == \
        {line: (jsonrpc.INVALID_REQUEST, None) for line in replies}


WRONG_PARAMS = [
    ("echo", [42]), ("echo", [None]), ("echo", []), ("echo", ["a", "b"]), ("echo", {"txt": "a"}),
    ("add", ["1", 2]), ("add", [True, 1]), ("add", [[1], 2]), ("add", [1]), ("add", [1, 2, 3]),
    ("add", {"a": 1, "c": 2}), ("sleep", [-1]), ("sleep", [5.001]), ("sleep", ["1"]), ("sleep", [None]),
    ("deposit", [0]), ("deposit", [-5]), ("deposit", ["100"]), ("deposit", [10, 123]),
]


def test_wrong_parameters_are_invalid_params_and_the_id_comes_back(rpc):
    for i, (method, params) in enumerate(WRONG_PARAMS):
        reply = exchange(rpc, jsonrpc.encode(jsonrpc.request(method, params, f"x-{i}")))
        assert (code_of(reply), reply["id"]) == (jsonrpc.INVALID_PARAMS, f"x-{i}"), (method, params)
        assert isinstance(reply["error"].get("data"), str)   # says what was wrong


def test_unknown_methods_are_method_not_found(rpc):
    for method in ["nosuch", "Echo", "echo ", "", "rpc.discover", "__class__", "__init__",
                   "make_methods", "serve", "x" * 5000]:
        reply = exchange(rpc, jsonrpc.encode(jsonrpc.request(method, [], 7)))
        assert (code_of(reply), reply["id"]) == (jsonrpc.METHOD_NOT_FOUND, 7), method[:20]


def test_a_result_json_cannot_carry_or_a_method_that_raises_is_an_internal_error(rpc):
    reply = exchange(rpc, jsonrpc.encode(jsonrpc.request("add", [1e308, 1e308], 1)))
    assert code_of(reply) == jsonrpc.INTERNAL_ERROR and reply["id"] == 1

    def broken():
        return {}["missing"]
    reply = jsonrpc.handle_request({"broken": broken}, jsonrpc.request("broken", [], 3))
    assert reply == {"jsonrpc": "2.0", "error": {"code": -32603, "message": "Internal error",
                                                 "data": "KeyError"}, "id": 3}


def test_ids_come_back_exactly(rpc):
    for request_id in ["abc", "", "你好", 0, -1, 1.5, 10 ** 30, None, 2 ** 53 + 1]:
        reply = exchange(rpc, jsonrpc.encode(jsonrpc.request("add", [2, 3], request_id)))
        assert reply == {"jsonrpc": "2.0", "result": 5, "id": request_id}
        assert type(reply["id"]) is type(request_id)


def test_the_methods_work(rpc):
    assert rpc.call("echo", "héllo, 你好") == "héllo, 你好"
    assert rpc.call("add", 2, 3) == 5
    assert rpc.call("add", a=0.5, b=0.25) == 0.75
    assert rpc.call("sleep", 0) == 0
    assert rpc.call("sleep", 0.05) == 0.05
    with pytest.raises(jsonrpc.RpcError) as caught:
        rpc.call("nosuch")
    assert caught.value.code == -32601


def test_a_lone_surrogate_is_valid_json_and_gets_a_reply(rpc):
    # "\ud800" parses to a str that UTF-8 cannot encode: the reply escapes it instead of dying.
    rpc.send(b'{"jsonrpc": "2.0", "method": "echo", "params": ["x \\ud800 \xe4\xbd\xa0"], "id": 1}')
    assert rpc.receive() == {"jsonrpc": "2.0", "result": "x \ud800 你", "id": 1}
    assert rpc.call("echo", "still \udcff here") == "still \udcff here"


def test_batches_mixed_empty_and_notification_only(rpc):
    ok = jsonrpc.request("add", [1, 1], 1)
    note = jsonrpc.request("echo", ["quiet"])
    bad_note = jsonrpc.request("nosuch", [])
    assert exchange(rpc, jsonrpc.encode([note, bad_note, note])) is None
    reply = exchange(rpc, jsonrpc.encode([ok, note, 5, jsonrpc.request("add", ["x", 1], 2), [ok]]))
    assert [r.get("result", r.get("error", {}).get("code")) for r in reply] == [2, -32600, -32602, -32600]
    assert [r["id"] for r in reply] == [1, None, 2, None]
    assert code_of(exchange(rpc, b"[]")) == -32600 and code_of(exchange(rpc, b" [ ] ")) == -32600
    assert exchange(rpc, jsonrpc.encode([ok] * jsonrpc.MAX_BATCH)) == [{"jsonrpc": "2.0", "result": 2, "id": 1}] * 100
    too_many = exchange(rpc, jsonrpc.encode([ok] * (jsonrpc.MAX_BATCH + 1)))
    assert isinstance(too_many, dict) and code_of(too_many) == -32600


def test_a_notification_runs_but_gets_no_reply():
    ledger = msg.Ledger()
    with running(functools.partial(msg.serve, ledger=ledger)) as server, jsonrpc.RpcClient(server.address) as client:
        assert exchange(client, jsonrpc.encode(jsonrpc.request("deposit", [5]))) is None
        assert exchange(client, jsonrpc.encode(jsonrpc.request("deposit", [-5]))) is None   # even an error
        client.notify("deposit", 7)
        assert client.call("deposit", 1) == 13
    assert ledger.runs == 3


def test_many_requests_in_one_send_are_answered_in_order(rpc):
    rpc.send(b"".join(jsonrpc.encode(jsonrpc.request("add", [i, 1], i)) for i in range(200)))
    assert [rpc.receive() for _ in range(200)] == [{"jsonrpc": "2.0", "result": i + 1, "id": i} for i in range(200)]


def test_blank_lines_crlf_and_a_last_line_without_newline(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"\n\r\n   \n" + b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}\r\n'
                     b'{"jsonrpc": "2.0", "method": "add", "params": [3, 4], "id": 2}')
        sock.shutdown(socket.SHUT_WR)
        lines = sock.makefile("rb").read().splitlines()
    assert [json.loads(line)["result"] for line in lines] == [3, 7]


def padded(size: int) -> bytes:
    """A valid request line of exactly ``size`` bytes, without its newline."""
    line = jsonrpc.encode(jsonrpc.request("echo", [""], 1))[:-1]
    return line[:-1] + b" " * (size - len(line)) + b"}"


def test_a_line_at_the_limit_is_answered_one_byte_more_is_refused(server):
    with jsonrpc.RpcClient(server.address) as client:
        client.send(padded(jsonrpc.MAX_LINE))
        assert client.receive()["result"] == ""
        client.send(padded(jsonrpc.MAX_LINE + 1))
        reply = client.receive()
        assert code_of(reply) == -32600 and "65,536" in reply["error"]["data"]
        with pytest.raises(ConnectionError):   # and the server hung up
            client.receive()


def test_an_endless_line_gets_an_error_not_unbounded_memory(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        def flood():
            with contextlib.suppress(OSError):
                for _ in range(160):            # 10 MiB, never a newline
                    sock.sendall(b"x" * 65536)
        sender = threading.Thread(target=flood)
        sender.start()
        with sock.makefile("rb") as replies:
            first = json.loads(replies.readline())
            with contextlib.suppress(ConnectionResetError):
                assert replies.readline() == b""
        sender.join(10)
    assert code_of(first) == -32600
    recvs = [e for e in server.log.events(SERVER) if e.detail == "too long"]
    assert recvs and all(e.nbytes == jsonrpc.MAX_LINE + 1 for e in recvs)   # it never held more
    assert jsonrpc.call(server.address, "add", 1, 1) == 2


def vanish_mid_request(address):
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(b'{"jsonrpc": "2.0", "method": "add", "par')
    time.sleep(0.05)
    abort(sock)


def vanish_before_the_reply(address):
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(jsonrpc.encode(jsonrpc.request("sleep", [0.1], 1)))
    sock.close()


def vanish_mid_batch(address):
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(jsonrpc.encode([jsonrpc.request("sleep", [0.05], i) for i in range(3)]))
    time.sleep(0.03)
    abort(sock)


def test_clients_that_vanish_never_stop_the_server():
    with running(msg.serve) as server:
        for count, vanish in enumerate([vanish_mid_request, vanish_before_the_reply, vanish_mid_batch], 1):
            vanish(server.address)
            assert server.log.wait_for_event(SERVER, CLOSE, count=2 * count - 1, timeout=5)
            assert jsonrpc.call(server.address, "echo", "still here") == "still here"
            assert server.log.wait_for_event(SERVER, CLOSE, count=2 * count, timeout=5)
    assert server.errors == []


def test_one_clients_sleep_does_not_hold_up_another():
    with running(msg.serve) as server, jsonrpc.RpcClient(server.address) as sleeper:
        sleeper.send(jsonrpc.request("sleep", [2], "zzz"))
        assert jsonrpc.call(server.address, "add", 1, 2) == 3
        sleeper.sock.settimeout(0)
        with pytest.raises(BlockingIOError):   # still asleep
            sleeper.sock.recv(1)
    # leaving the block stopped the server at once, sleep and all (running() would raise otherwise)


def test_a_silent_client_is_dropped_and_the_number_of_clients_is_capped():
    import functools
    serve = functools.partial(jsonrpc.serve, methods=SPEC_METHODS, idle_timeout=0.2, max_clients=2)
    with running(serve) as server:
        with socket.create_connection(server.address, timeout=5) as a, \
                socket.create_connection(server.address, timeout=5) as b:
            assert server.log.wait_for_event(SERVER, "accept", count=2)
            with jsonrpc.RpcClient(server.address) as third:
                busy = third.receive()
            assert busy["error"]["code"] == jsonrpc.SERVER_BUSY
            assert a.recv(100) == b"" and b.recv(100) == b""   # silent for 0.2 s: hung up
        notes = [e.detail for e in server.log.events(SERVER) if e.kind == NOTE]
        assert notes == ["hung up: silent for 0.2 s"] * 2
        assert jsonrpc.call(server.address, "subtract", 3, 1) == 2


def test_the_client_rejects_what_is_not_a_reply():
    with pytest.raises(jsonrpc.ProtocolError, match="a reply to request 2, not to 1"):
        jsonrpc.result_of({"jsonrpc": "2.0", "result": 1, "id": 2}, 1)
    with pytest.raises(jsonrpc.ProtocolError):
        jsonrpc.result_of({"jsonrpc": "2.0", "method": "echo", "id": 1}, 1)
    with pytest.raises(jsonrpc.RpcError) as caught:
        jsonrpc.result_of({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 1}, 1)
    assert caught.value.code == -32601


# --- A lost reply, retried; request ids as the fix ---

def test_a_lost_reply_retried_runs_twice_unless_the_request_has_an_id():
    # The reply lost in silence (the client times out), or with a hang-up (the client sees the close).
    for request_id, runs, balance, hang_up in [(None, 2, 200, False), ("3f1c-deposit-1", 1, 100, True)]:
        ledger = msg.Ledger()
        log = Transcript()
        with running(functools.partial(msg.serve, ledger=ledger)) as server, \
                lossy_relay(server.address, lose=1, hang_up=hang_up, log=log) as relay:
            assert msg.call_with_retry(relay.address, "deposit", 100, request_id, timeout=0.3) == balance
        assert (ledger.runs, ledger.balance) == (runs, balance)
        assert [e.detail.split(" (")[0] for e in log.events() if e.kind == NOTE] == ["lost a reply"]


def test_the_ledger_remembers_a_bounded_number_and_retrying_gives_up():
    ledger = msg.Ledger(remember=2)
    assert [ledger.deposit(1, rid) for rid in ("a", "b", "a", "c", "a")] == [1, 2, 1, 3, 4]
    assert ledger.runs == 4
    with silent_server(hold=3.0) as address:
        with pytest.raises(TimeoutError):
            msg.call_with_retry(address, "add", 1, 2, timeout=0.1, tries=2)


# --- ZeroMQ ---

@pytest.fixture
def ctx():
    with mq.context() as context:
        yield context


def test_req_rep_whole_messages_and_lock_step(ctx):
    big = b"x" * 1_000_000
    with mq.background(mq.shouter, ctx) as endpoint:
        assert mq.ask(ctx, endpoint, b"hello", big) == [b"HELLO", big.upper()]
        with mq.open_socket(ctx, zmq.REQ) as req:
            req.connect(endpoint)
            req.send_multipart([b"two", b"frames"])
            with pytest.raises(zmq.ZMQError):      # REQ may not send again before its reply
                req.send(b"again")
            assert req.recv_multipart() == [b"TWO", b"FRAMES"]


def test_a_req_socket_can_connect_before_its_server_exists(ctx):
    host, port = closed_port()
    endpoint = f"tcp://{host}:{port}"
    with mq.open_socket(ctx, zmq.REQ) as req:
        req.connect(endpoint)                       # nothing listens yet: no error
        req.send(b"are you there?")                 # queued
        with mq.background(mq.shouter, ctx, endpoint):
            assert req.recv() == b"ARE YOU THERE?"


def test_the_chat_room_delivers_by_topic(ctx):
    with mq.background(mq.chat_room, ctx) as endpoints:
        people = [mq.Member(ctx, endpoints, name, room)
                  for name, room in (("alice", "lobby"), ("bob", "lobby"), ("carol", "games"))]
        try:
            for person in people:
                person.join()
            alice, bob, carol = people
            alice.say("hi all")
            assert (alice.hear(), bob.hear()) == ("alice: hi all", "alice: hi all")
            bob.say("hello alice")
            assert (alice.hear(), bob.hear()) == ("bob: hello alice", "bob: hello alice")
            carol.say("chess, anyone?")
            assert carol.hear() == "carol: chess, anyone?"   # and nothing from the lobby before it
        finally:
            for person in people:
                person.close()


def test_push_pull_spreads_work_evenly(ctx):
    done = mq.spread_work(ctx, list(range(30)), workers=3)
    assert sorted(len(squares) for squares in done.values()) == [10, 10, 10]
    assert sorted(sum(done.values(), [])) == [n * n for n in range(30)]


def test_the_slow_joiner_and_the_late_subscriber_miss_what_came_first(ctx):
    assert mq.slow_joiner(ctx, count=100) == [100]
    got, published = mq.late_subscriber(ctx)
    assert (got, published) == ([6, 7, 8, 9, 10], list(range(1, 11)))


def test_a_full_queue_drops_on_pub_and_blocks_on_push(ctx):
    assert mq.full_queue_drops(ctx, hwm=5, count=1000) == list(range(10))
    assert mq.full_queue_blocks(ctx, hwm=5) == (10, "blocked, then gave up after 100 ms (zmq.Again)")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_the_zeromq_examples_leave_no_descriptor_open():
    def examples():
        with mq.context() as ctx:
            with mq.background(mq.shouter, ctx) as endpoint:
                mq.ask(ctx, endpoint, b"x")
            mq.spread_work(ctx, list(range(6)))
            mq.late_subscriber(ctx)
            mq.full_queue_blocks(ctx)

    examples()                                   # warm up: imports, caches
    before = len(os.listdir("/proc/self/fd"))
    examples()                                   # a leak would show as more descriptors than before
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_failing_background_body_is_reported_not_lost(ctx):
    def broken(ready, stop, ctx):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with mq.background(broken, ctx):
            pass


# --- The command line ---

def run_client(capsys, address, *args) -> tuple[int, str, str]:
    code = msg.main(["client", "--port", str(address[1]), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_client_prints_results_and_clear_errors(server, capsys):
    assert run_client(capsys, server.address, "add", "2", "3") == (0, "5\n", "")
    assert run_client(capsys, server.address, "echo", "héllo") == (0, '"héllo"\n', "")
    assert run_client(capsys, server.address, "echo", '"42"') == (0, '"42"\n', "")
    assert run_client(capsys, server.address, "add", "0.5", "[1]")[0] == 1
    code, out, err = run_client(capsys, server.address, "nosuch", "[x]")
    assert (code, out) == (1, "") and "-32601 Method not found: nosuch" in err
    code, out, err = run_client(capsys, server.address, "echo", "42")
    assert code == 1 and "-32602" in err and "text must be a string" in err
    assert run_client(capsys, server.address, "--notify", "echo", "hi") == (0, "", "")
    code, _, err = run_client(capsys, server.address, "sleep", "0.5", "--timeout", "0.1")
    assert code == 1 and "timed out" in err
    assert run_client(capsys, server.address, "echo", "\udced bad UTF-8 in argv")[0] == 0   # surrogateescape
    code, _, err = run_client(capsys, closed_port(), "add", "1", "2")
    assert code == 1 and "connection refused" in err


def test_the_client_says_when_the_server_is_not_json_rpc(capsys):
    from lessons.kit.echo import handle

    def echo_server(listener, stop, log):
        from lessons.kit.server import accept_until
        for conn, _ in accept_until(listener, stop):
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                handle(conn, log, "x")

    with running(echo_server) as other:
        code, _, err = run_client(capsys, other.address, "add", "1", "2")
    assert code == 1 and "not a JSON-RPC 2.0 reply" in err


def test_the_demo_and_bad_options(capsys):
    assert msg.demo() == 0                   # in this process: tests/test_cli.py runs --help as a learner would
    out = capsys.readouterr().out
    assert out.count(" yes ") == 11 and "NO" not in out and "127.0.0.1" not in out
    for bad in (["client", "add", "--timeout", "inf"], ["client", "add", "--timeout", "301"], ["serve", "--port", "-1"]):
        with pytest.raises(SystemExit) as exited:
            msg.main(bad)
        assert exited.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_serve_prints_its_address_answers_and_stops_on_sigterm():
    with ServerProcess.lesson("10_messages") as served:
        assert served.host == "127.0.0.1"
        assert jsonrpc.call(served.address, "add", 40, 2) == 42
        with socket.create_connection(served.address, timeout=5):    # a client still connected
            code, err = served.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in err