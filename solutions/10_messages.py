"""Answers to lesson 10's exercises: a JSON message over a length prefix, and a JSON-RPC dispatcher."""
from __future__ import annotations

import inspect
import json
import struct


def recv_json(sock, max_size: int = 1048576):
    """Read one message: a 4-byte length (struct "!I"), then that many bytes of UTF-8 JSON.

    Return the decoded value, or None if the peer closed before the first byte
    of a message. Raise EOFError if it closes part-way through one, and
    ValueError if the length is over max_size (before reading the body).
    """
    ### BEGIN SOLUTION
    header = b""
    while len(header) < 4:   # recv() returns what has arrived: maybe one byte, maybe all
        chunk = sock.recv(4 - len(header))
        if not chunk:
            if not header:
                return None  # closed between messages: the ordinary end
            raise EOFError(f"peer closed after {len(header)} of 4 header bytes")
        header += chunk
    (length,) = struct.unpack("!I", header)   # network byte order: big-endian on every machine
    # The key step: check the length BEFORE reading the body. A corrupt or
    # hostile prefix could otherwise make us wait for, or allocate, 4 GiB.
    if length > max_size:
        raise ValueError(f"length prefix says {length:,} bytes, over the {max_size:,}-byte limit")
    body = bytearray()
    while len(body) < length:
        chunk = sock.recv(min(length - len(body), 65536))
        if not chunk:
            raise EOFError(f"peer closed after {len(body)} of {length} bytes")
        body += chunk
    return json.loads(body.decode("utf-8"))
    ### END SOLUTION


def dispatch(methods: dict, request):
    """Answer one JSON-RPC 2.0 request (already parsed from JSON; not a batch).

    Return the reply as a dict, or None if the request is a notification (no
    "id" member). Error codes: -32600 not a valid request (then the reply's id
    is null), -32601 no such method, -32602 parameters that do not fit the
    method's signature, -32603 the method raised an exception.
    """
    ### BEGIN SOLUTION
    invalid = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}
    if not isinstance(request, dict):
        return invalid
    request_id = request.get("id")
    id_ok = request_id is None or isinstance(request_id, str) or (
        isinstance(request_id, (int, float)) and not isinstance(request_id, bool))   # True is an int
    if (request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str)
            or not isinstance(request.get("params", []), (list, dict)) or not id_ok):
        return invalid       # answered even without an id, with id null
    method = methods.get(request["method"])   # a dict lookup, never getattr()
    params = request.get("params", [])
    code = message = result = None
    if method is None:
        code, message = -32601, "Method not found"
    else:
        try:
            # The key step: bind the parameters to the signature FIRST, so that a
            # wrong number of them (-32602) is told apart from a failing method (-32603).
            signature = inspect.signature(method)
            bound = signature.bind(**params) if isinstance(params, dict) else signature.bind(*params)
        except TypeError:
            code, message = -32602, "Invalid params"
        else:
            try:
                result = method(*bound.args, **bound.kwargs)
            except Exception:
                code, message = -32603, "Internal error"
    if "id" not in request:
        return None          # a notification gets no reply, not even an error
    if code is not None:
        return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}
    return {"jsonrpc": "2.0", "result": result, "id": request_id}
    ### END SOLUTION
