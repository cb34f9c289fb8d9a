"""Lesson 10 exercises: recv_json over a length prefix, and a JSON-RPC 2.0 dispatcher."""
from __future__ import annotations

import contextlib
import json
import struct

from lessons.exercises import Exercise
from lessons.kit.adversary import connected_pair, play
from lessons.kit.check import Outcome, check, describe, expect_error, expect_value, scenario

HEADER = struct.Struct("!I")


def frame(value) -> bytes:
    """One message as the learner must read it: a 4-byte !I length, then UTF-8 JSON."""
    body = json.dumps(value, ensure_ascii=False).encode("utf-8")
    return HEADER.pack(len(body)) + body


# --- recv_json ---

def naive_recv_json(sock, max_size: int = 1048576):
    """The common first attempt: one recv() taken as one whole message."""
    data = sock.recv(65536)
    return json.loads(data[4:])


@contextlib.contextmanager
def _peer(guard, script, delay=0.0):
    with connected_pair() as (ours, theirs):
        guard.add(ours)
        actor = play(theirs, script, delay)
        try:
            yield ours
        finally:
            actor.join(2.0)


def _returns(call, expected, script, run, delay=0.0):
    @scenario(call, describe(expected))
    def scenario_fn(fn, guard):
        with _peer(guard, script, delay) as sock:
            return expect_value(call, expected, lambda: run(fn, sock))
    return scenario_fn


def _raises(call, error, hint, script):
    @scenario(call, f"raised {error.__name__}")
    def scenario_fn(fn, guard):
        with _peer(guard, script) as sock:
            return expect_error(call, error, lambda: fn(sock), hint)
    return scenario_fn


BIG = {"numbers": list(range(40_000))}   # about 230 KB of JSON: more than one recv() brings
ONE = {"method": "add", "params": [2, 3]}

RECV_JSON = {
    "one message": _returns("recv_json(sock)", ONE, [frame(ONE)], lambda fn, s: fn(s)),
    "one byte at a time": _returns("recv_json(sock)", ONE, [bytes([b]) for b in frame(ONE)],
                                   lambda fn, s: fn(s), delay=0.002),
    "two messages in one send": _returns("recv_json(sock) twice", ("first", "second"),
                                         [frame("first") + frame("second")], lambda fn, s: (fn(s), fn(s))),
    "Chinese text": _returns("recv_json(sock)", {"text": "你好"}, [frame({"text": "你好"})], lambda fn, s: fn(s)),
    "a message of 230 KB": _returns("len(recv_json(sock)['numbers'])", 40_000, [frame(BIG)],
                                    lambda fn, s: len(fn(s)["numbers"])),
    "peer closes between messages": _returns("recv_json(sock) after one message and a close",
                                             (ONE, None), [frame(ONE), "close"], lambda fn, s: (fn(s), fn(s))),
    "peer closes inside a message": _raises("recv_json(sock)", EOFError, "it closed part-way",
                                            [frame(ONE)[:14], "close"]),
    "a 4 GiB length prefix": _raises("recv_json(sock)", ValueError,
                                     "refuse at once, without waiting for the body",
                                     [HEADER.pack(0xFFFF_FFFF)]),
}


def check_recv_json(fn):
    """Check a recv_json() against every scenario above; print a line each, return the result."""
    return check("recv_json", fn, RECV_JSON)


# --- dispatch ---

def subtract(minuend, subtrahend):
    """The specification's own example method."""
    return minuend - subtrahend


def hello():
    """A method with no parameters."""
    return "hello"


def broken():
    """A method with a bug: the server's fault (-32603), not the caller's."""
    return 1 / 0


METHODS = {"subtract": subtract, "hello": hello, "broken": broken}


def naive_dispatch(methods: dict, request):
    """The common first attempt: look up, call, wrap the result."""
    result = methods[request["method"]](*request["params"])
    return {"jsonrpc": "2.0", "result": result, "id": request["id"]}


def shape(reply) -> str:
    """A reply in a few words, strict about what the specification requires of it."""
    if reply is None:
        return "no reply"
    if isinstance(reply, dict) and reply.get("jsonrpc") == "2.0" and "id" in reply:
        if set(reply) == {"jsonrpc", "result", "id"}:
            return f"result {reply['result']!r}, id {reply['id']!r}"
        error = reply.get("error")
        if set(reply) == {"jsonrpc", "error", "id"} and isinstance(error, dict) \
                and isinstance(error.get("message"), str) and type(error.get("code")) is int:
            return f"error {error['code']}, id {reply['id']!r}"
    return f"not a JSON-RPC 2.0 reply: {describe(reply)}"


def _answers(request, expected: str):
    call = f"dispatch(methods, {json.dumps(request)})"

    @scenario(call, expected)
    def scenario_fn(fn, guard):
        try:
            got = shape(fn(dict(METHODS), request))
        except Exception as exc:
            got = describe(exc)
        return Outcome(call, got, expected, got == expected)
    return scenario_fn


def _req(method, params=None, **extra):
    request = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        request["params"] = params
    request.update(extra)
    return request


DISPATCH = {
    "positional parameters": _answers(_req("subtract", [42, 23], id=1), "result 19, id 1"),
    "named parameters": _answers(_req("subtract", {"subtrahend": 23, "minuend": 42}, id=3), "result 19, id 3"),
    "no params, a string id": _answers(_req("hello", id="abc"), "result 'hello', id 'abc'"),
    "id null is a request, not a notification": _answers(_req("subtract", [1, 1], id=None), "result 0, id None"),
    "a notification": _answers(_req("subtract", [5, 1]), "no reply"),
    "a notification to no such method": _answers(_req("foobar"), "no reply"),
    "no such method": _answers(_req("foobar", id="1"), "error -32601, id '1'"),
    "too few parameters": _answers(_req("subtract", [1], id=7), "error -32602, id 7"),
    "an unknown parameter name": _answers(_req("subtract", {"minuend": 1, "x": 2}, id=8), "error -32602, id 8"),
    "the method fails": _answers(_req("broken", [], id=9), "error -32603, id 9"),
    "method is not a string": _answers({"jsonrpc": "2.0", "method": 1, "params": "bar"}, "error -32600, id None"),
    "params is not an array or object": _answers(_req("subtract", "bar", id=4), "error -32600, id None"),
    "not an object at all": _answers(1, "error -32600, id None"),
    "not version 2.0": _answers({"jsonrpc": "1.0", "method": "hello", "id": 5}, "error -32600, id None"),
    "a boolean id": _answers(_req("hello", id=True), "error -32600, id None"),
}


def check_dispatch(fn):
    """Check a dispatch() against every scenario above; print a line each, return the result."""
    return check("dispatch", fn, DISPATCH)


EXERCISES = [
    Exercise("10_messages", "recv_json", check=check_recv_json, naive=naive_recv_json,
             todo="read the 4-byte length, check it, read exactly that many bytes, decode the JSON."),
    Exercise("10_messages", "dispatch", check=check_dispatch, naive=naive_dispatch,
             todo="check the request, look up the method, bind the params, call, build the reply or error."),
]
