"""JSON-RPC 2.0 over TCP, one JSON value a line: the protocol, a server and a client.

Lesson 10 explains each rule; this is the tested copy it serves with. The
rules are the specification's (https://www.jsonrpc.org/specification)::

    client                                                    server
    {"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 1}  ──►  parse, check, look up, call
                         ◄──  {"jsonrpc": "2.0", "result": 5, "id": 1}
    {"jsonrpc": "2.0", "method": "echo", "params": ["hi"]}    ──►  no "id": a notification, no reply
    [request, notification, request]                          ──►  a batch: one array of replies,
                         ◄──  [reply, reply]                       none at all if all were notifications

- A reply carries the request's id exactly as sent: a string, a number or null.
  (``"id": null`` is a request, not a notification; only a missing id is.)
- Errors: -32700 the line is not JSON; -32600 JSON, but not a request (also an
  empty batch, and here a line or a batch over the limits); -32601 no such
  method; -32602 the wrong parameters; -32603 the method failed on the server.
  The error's id is null when the request could not be read (-32700) or is
  not a valid request (-32600).
- Invalid requests and parse errors are answered even without an id: the
  sender cannot have meant them as notifications.

Limits that the specification leaves to the server: a request line of at most
``MAX_LINE`` bytes (a longer one gets -32600 and the connection is closed, so
a peer that never sends a newline cannot make us buffer without end), at most
``MAX_BATCH`` requests a batch, ``MAX_CLIENTS`` connections (one thread each),
and a connection quiet for ``IDLE_TIMEOUT`` seconds is closed.
"""
from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import socket
from typing import Any, Optional

from .threaded import serve_threads
from .transcript import EOF, NOTE, RECV, SEND, SERVER, Transcript

PARSE_ERROR = -32700       # the line is not JSON
INVALID_REQUEST = -32600   # JSON, but not a request object
METHOD_NOT_FOUND = -32601  # no method of that name
INVALID_PARAMS = -32602    # the method exists, the parameters do not fit it
INTERNAL_ERROR = -32603    # the method failed: the server's problem, not the caller's
SERVER_BUSY = -32000       # -32000 to -32099: left to each server; ours, for "too many clients"
MESSAGES = {PARSE_ERROR: "Parse error", INVALID_REQUEST: "Invalid Request",
            METHOD_NOT_FOUND: "Method not found", INVALID_PARAMS: "Invalid params",
            INTERNAL_ERROR: "Internal error", SERVER_BUSY: "Server busy"}

MAX_LINE = 65536          # bytes in one request line, without its newline
MAX_BATCH = 100           # requests in one batch
MAX_REPLY = 16 << 20      # bytes in one reply line: the client's limit
MAX_CLIENTS = 64          # connections served at once, a thread each
IDLE_TIMEOUT = 30.0       # seconds a connection may stay silent
NO_ID = object()          # request(..., id=NO_ID) makes a notification


class RpcError(Exception):
    """An error reply: a code from the table above, its message, and optional data."""

    def __init__(self, code: int, message: Optional[str] = None, data: Any = None):
        self.code, self.message, self.data = code, message or MESSAGES.get(code, "Server error"), data
        super().__init__(f"{code} {self.message}" + ("" if data is None else f": {data}"))

    def to_json(self) -> dict:
        """The error member of a reply: code, message, and data if any."""
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ProtocolError(Exception):
    """The other side's bytes are not JSON-RPC: not JSON, too long, a reply to another request."""


def invalid_params(why: str) -> RpcError:
    """What a method raises when its arguments have the wrong type or range."""
    return RpcError(INVALID_PARAMS, data=why)


# --- Reading and writing JSON strictly ---

def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):   # 1e400 parses as inf, which JSON cannot send back
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")   # Python's json accepts NaN and Infinity; JSON does not


def parse(line: bytes) -> Any:
    """The JSON value on one line; ValueError unless it is strict JSON in UTF-8."""
    try:
        return json.loads(line.decode("utf-8"), parse_float=_finite, parse_constant=_not_json)
    except RecursionError:         # [[[[...]]]] deeper than Python's stack
        raise ValueError("nested too deeply") from None


def encode(message: Any) -> bytes:
    """One line of JSON, UTF-8, ending in a newline."""
    try:
        return json.dumps(message, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:    # a lone surrogate ("\\ud800" is valid JSON, not valid UTF-8): escape it
        return json.dumps(message, allow_nan=False).encode("ascii") + b"\n"


def request(method: str, params=None, id: Any = NO_ID) -> dict:
    """A request object; without an id, a notification."""
    message: dict = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id is not NO_ID:
        message["id"] = id
    return message


# --- The server's side: from a request to its reply ---

def is_valid_id(value) -> bool:
    """A string, a number or null: what the specification allows as an id."""
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))   # True is an int in Python


def request_problem(request: dict) -> Optional[str]:
    """Why a JSON object is not a valid request, or None."""
    if request.get("jsonrpc") != "2.0":
        return 'needs "jsonrpc": "2.0"'
    if not isinstance(request.get("method"), str):
        return '"method" must be a string'
    if "params" in request and not isinstance(request["params"], (list, dict)):
        return '"params" must be an array or an object'
    if "id" in request and not is_valid_id(request["id"]):
        return '"id" must be a string, a number or null'
    return None


def error_reply(request_id, error: RpcError) -> dict:
    """A reply that carries an error instead of a result."""
    return {"jsonrpc": "2.0", "error": error.to_json(), "id": request_id}


def call_method(methods: dict, name: str, params) -> Any:
    """Look the method up by name in a dict (never getattr: "__class__" must not be callable
    from the network), check the parameters against its signature, and call it."""
    method = methods.get(name)
    if method is None:
        raise RpcError(METHOD_NOT_FOUND, data=name[:100])
    try:
        signature = inspect.signature(method)
        bound = signature.bind(**params) if isinstance(params, dict) else signature.bind(*params)
    except TypeError as exc:       # too many, too few, or unknown names
        raise invalid_params(str(exc)) from None
    return method(*bound.args, **bound.kwargs)


def handle_request(methods: dict, message: Any) -> Optional[dict]:
    """The reply to one request object (not a batch), or None for a notification."""
    if not isinstance(message, dict):
        return error_reply(None, RpcError(INVALID_REQUEST, data="a request is a JSON object"))
    problem = request_problem(message)
    if problem:                    # its id cannot be trusted either: the reply's id is null
        return error_reply(None, RpcError(INVALID_REQUEST, data=problem))
    request_id = message.get("id")
    try:
        result = call_method(methods, message["method"], message.get("params", []))
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError):   # inf, nan, a set...: nothing the caller did wrong
            raise RpcError(INTERNAL_ERROR, data="the result cannot be sent as JSON") from None
    except RpcError as exc:
        reply = error_reply(request_id, exc)
    except Exception as exc:       # a bug in a method: say so, without a traceback
        reply = error_reply(request_id, RpcError(INTERNAL_ERROR, data=type(exc).__name__))
    else:
        reply = {"jsonrpc": "2.0", "result": result, "id": request_id}
    return reply if "id" in message else None


def handle_line(methods: dict, line: bytes):
    """The reply to one line: a dict, a list (for a batch), or None (nothing to send)."""
    try:
        message = parse(line)
    except ValueError as exc:      # UnicodeDecodeError and json's errors are ValueErrors
        return error_reply(None, RpcError(PARSE_ERROR, data=str(exc)[:200]))
    if not isinstance(message, list):
        return handle_request(methods, message)
    if not message:
        return error_reply(None, RpcError(INVALID_REQUEST, data="an empty batch"))
    if len(message) > MAX_BATCH:
        return error_reply(None, RpcError(INVALID_REQUEST, data=f"a batch of over {MAX_BATCH} requests"))
    replies = [reply for reply in (handle_request(methods, m) for m in message) if reply is not None]
    return replies or None         # a batch of notifications only: no reply at all


def describe(message) -> str:
    """A few words for a transcript: 'add', 'error -32601', 'batch of 3'."""
    if isinstance(message, list):
        return f"batch of {len(message)}"
    if isinstance(message, dict) and "error" in message:
        return f"error {message['error'].get('code')}"
    if isinstance(message, dict) and "result" in message:
        return "result"
    if isinstance(message, dict) and isinstance(message.get("method"), str):
        return message["method"][:30] + ("" if "id" in message else " (notification)")
    return "not a request"


# --- The server: a thread per connection (kit.threaded), a line at a time ---

def serve(listener: socket.socket, stop, log: Transcript, methods: dict,
          max_clients: int = MAX_CLIENTS, limit: int = MAX_LINE, idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Answer JSON-RPC on every connection until stopped."""
    def busy(conn: socket.socket, log: Transcript, who: str) -> None:
        with conn, contextlib.suppress(OSError):   # a fresh socket takes one short line at once
            conn.settimeout(1.0)
            conn.sendall(encode(error_reply(None, RpcError(SERVER_BUSY, data="too many clients; try later"))))

    def one(conn: socket.socket, log: Transcript, who: str) -> None:
        serve_connection(conn, methods, log, who, limit, idle_timeout)

    serve_threads(listener, stop, log, one, max_clients=max_clients, refuse=busy)


def serve_connection(conn: socket.socket, methods: dict, log: Transcript, who: str,
                     limit: int = MAX_LINE, idle_timeout: float = IDLE_TIMEOUT) -> None:
    """Answer one client's lines, in order, until it closes, goes quiet or sends too long a line."""
    conn.settimeout(idle_timeout)
    with conn, conn.makefile("rb") as lines:
        try:
            while True:
                line = lines.readline(limit + 1)   # never holds more than limit + 1 bytes
                if not line:
                    log.record(SERVER, EOF, who)
                    break
                if len(line) > limit and not line.endswith(b"\n"):
                    log.record(SERVER, RECV, who, len(line), detail="too long")
                    _reply(conn, log, who, error_reply(None, RpcError(
                        INVALID_REQUEST, data=f"a line over {limit:,} bytes")))
                    _hang_up(conn)
                    log.record(SERVER, NOTE, who, detail="hung up: line too long")
                    break
                if not line.strip():               # a blank line (nc, telnet): nothing to answer
                    continue
                log.record(SERVER, RECV, who, len(line), detail=_peek(line))
                reply = handle_line(methods, line.rstrip(b"\r\n"))
                if reply is not None:
                    _reply(conn, log, who, reply)
        except socket.timeout:
            log.record(SERVER, NOTE, who, detail=f"hung up: silent for {idle_timeout:g} s")


def _peek(line: bytes) -> str:
    try:
        return describe(parse(line))
    except ValueError:
        return "not JSON"


def _reply(conn: socket.socket, log: Transcript, who: str, reply) -> None:
    data = encode(reply)
    log.record(SERVER, SEND, who, len(data), detail=describe(reply))
    conn.sendall(data)


def _hang_up(conn: socket.socket, drain: int = 1 << 20, wait: float = 1.0) -> None:
    """Close after an error reply so that the client reads it: shut our side (FIN), then
    read and drop what it is still sending, for a moment. Closing with unread data at
    once would send a reset, and a reset can destroy the reply before it is read."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(wait)
        while drain > 0 and (chunk := conn.recv(65536)):
            drain -= len(chunk)


# --- The client ---

class RpcClient:
    """One connection to a JSON-RPC server, with a timeout on every operation.

    ``call()`` returns the result or raises RpcError; ``notify()`` expects no
    reply; ``send()`` and ``receive()`` move raw messages (for tests and demos).
    """

    def __init__(self, address, timeout: float = 5.0, limit: int = MAX_REPLY):
        self.sock = socket.create_connection(address[:2], timeout=timeout)
        self._lines = self.sock.makefile("rb")
        self.limit = limit
        self._ids = itertools.count(1)

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
        self._lines.close()
        self.sock.close()

    def send(self, message) -> None:
        """Send one line: a request dict, a list (a batch), or str/bytes exactly as given."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        data = message if isinstance(message, bytes) else encode(message)
        self.sock.sendall(data if data.endswith(b"\n") else data + b"\n")

    def receive(self) -> Any:
        """The next reply line, parsed."""
        line = self._lines.readline(self.limit + 1)
        if not line:
            raise ConnectionError("the server closed the connection without a reply")
        if not line.endswith(b"\n"):
            if len(line) > self.limit:
                raise ProtocolError(f"a reply over {self.limit:,} bytes")
            raise ConnectionError("the server closed the connection in the middle of a reply")
        try:
            return parse(line)
        except ValueError as exc:
            raise ProtocolError(f"the reply is not JSON ({exc}): is this a JSON-RPC server?") from None

    def call(self, method: str, *args, **kwargs) -> Any:
        """Call method with positional or named parameters; return its result."""
        if args and kwargs:
            raise TypeError("JSON-RPC takes positional or named parameters, not both")
        request_id = next(self._ids)
        self.send(request(method, kwargs or list(args), request_id))
        return result_of(self.receive(), request_id)

    def notify(self, method: str, *args, **kwargs) -> None:
        """Send a notification: the server runs it and never replies."""
        if args and kwargs:
            raise TypeError("JSON-RPC takes positional or named parameters, not both")
        self.send(request(method, kwargs or list(args)))


def result_of(reply: Any, request_id: Any) -> Any:
    """The result in a reply, or the RpcError it carries."""
    if not isinstance(reply, dict) or reply.get("jsonrpc") != "2.0" or ("result" in reply) == ("error" in reply):
        raise ProtocolError(f"not a JSON-RPC 2.0 reply: {json.dumps(reply)[:80]}")
    if "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        code = error.get("code")
        raise RpcError(code if isinstance(code, int) else INTERNAL_ERROR,
                       str(error.get("message", "")) or None, error.get("data"))
    if reply.get("id") != request_id:
        raise ProtocolError(f"a reply to request {reply.get('id')!r}, not to {request_id!r}")
    return reply["result"]


def call(address, method: str, *args, timeout: float = 5.0, **kwargs) -> Any:
    """One call on a fresh connection."""
    with RpcClient(address, timeout=timeout) as client:
        return client.call(method, *args, **kwargs)

