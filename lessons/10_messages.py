"""From bytes to messages, from messages to remote calls, from sockets to a message queue.

    python -m lessons.10_messages                        # demo: every part below, in a few seconds
    python -m lessons.10_messages serve [--port 9910]    # JSON-RPC 2.0, one JSON value a line
    python -m lessons.10_messages client add 2 3         # prints 5 (ARGS: JSON where they parse)

``nc 127.0.0.1 9910`` is a client too: type
``{"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 1}`` and Enter.
Methods: ``echo(text)``, ``add(a, b)``, ``sleep(seconds)`` (0 to 5 s; only this
connection waits) and ``deposit(amount, request_id=None)``. The client exits 0
with the result, 1 on an error reply or a network failure, 2 on a bad command line.
A request line over 65,536 bytes gets error -32600 and the connection is closed.

The tutorial ends by saying that message queues and RPC frameworks are taking
the place of point-to-point sockets. Each step up hides something:

    bytes      a TCP stream, no boundaries                     lessons 01-05
    frames     a 4-byte length before each message (!I)        lesson 02, kit.stream
    messages   a header saying what the bytes are              send_envelope() below
    calls      a request with an id; a result or an error      XML-RPC; JSON-RPC (kit.jsonrpc)
    queues     patterns between many peers                     ZeroMQ (kit.mq); brokers
"""
from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import os
import pickle
import socket
import struct
import sys
import tempfile
import threading
import uuid
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCServer

from rich.console import Console
from rich.table import Table

from lessons.kit import jsonrpc, mq, running
from lessons.kit.adversary import connected_pair
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, serve_command,
                             serve_forever, stderr)
from lessons.kit.relay import lossy_relay
from lessons.kit.server import JOIN_TIMEOUT, POLL_INTERVAL
from lessons.kit.stream import recv_exactly, recv_message, send_message

TITLE = "Messages, RPC and message queues"
MAX_HEADER = 1024           # bytes of envelope header
MAX_BODY = 16 << 20         # bytes of envelope body
ACCEPTED = {"application/json", "text/plain", "application/octet-stream"}   # never pickle
FILE_SIZE = struct.Struct("!Q")   # 8 bytes, network byte order: files can pass 4 GiB
MAX_SLEEP = 5.0             # seconds sleep() may be asked for
MAX_TIMEOUT = 300.0         # seconds the client may be told to wait


# --- Messages, not bytes: a header that says what the body is ---

def send_envelope(sock: socket.socket, body: bytes, content_type: str = "application/json",
                  encoding: str = "utf-8") -> None:
    """Send a header (framed by the kit's 4-byte !I length) and then the body it describes."""
    header = {"type": content_type, "encoding": encoding, "length": len(body)}
    send_message(sock, json.dumps(header).encode("ascii"))
    sock.sendall(body)


def recv_envelope(sock: socket.socket, max_body: int = MAX_BODY):
    """Return (type, value): a JSON value, a str or bytes; None if the peer closed before one.

    ValueError for a header we cannot read, a type we do not accept, a body too
    long or not in its encoding. Each check comes before the body is read or decoded.
    """
    raw = recv_message(sock, max_size=MAX_HEADER)
    if raw is None:
        return None
    try:
        header = json.loads(raw)
        kind, encoding, length = header["type"], header["encoding"], header["length"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable header: {exc}") from None
    if kind not in ACCEPTED:
        raise ValueError(f"refusing a body of type {kind!r}")
    if not isinstance(length, int) or not 0 <= length <= max_body:
        raise ValueError(f"body length {length!r} is not between 0 and {max_body:,}")
    body = recv_exactly(sock, length)
    if kind == "application/octet-stream":
        return kind, body
    try:
        text = body.decode(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r}") from None
    return kind, json.loads(text) if kind == "application/json" else text


# --- Why pickle must never read bytes from the network ---

EVIDENCE: list[str] = []    # what crafted messages made this process do


def record(note: str) -> str:
    """A harmless stand-in for what an attacker would call (os.system, say): it leaves a note."""
    EVIDENCE.append(note)
    return note


class Crafted:
    """Pickles as 'call record(...)': a pickle names a function and arguments; loading calls it."""

    def __reduce__(self):
        return record, ("the sender chose this call, and the receiver ran it",)


def naive_receive_object(sock: socket.socket):
    """The common first attempt at sending objects. Fixed below in receive_object()."""
    return pickle.loads(recv_message(sock))   # BUG: while loading, runs any call the bytes name


def receive_object(sock: socket.socket):
    """JSON builds only dicts, lists, strings, numbers, booleans and None: data, never calls."""
    return json.loads(recv_message(sock))


# --- A file, sent by the kernel ---

def send_file(sock: socket.socket, path: str) -> int:
    """Send the file's size, then the file with socket.sendfile(): the kernel does the copying."""
    with open(path, "rb") as f:
        sock.sendall(FILE_SIZE.pack(os.fstat(f.fileno()).st_size))
        return sock.sendfile(f)   # falls back to send() in a loop where os.sendfile is missing


def receive_file(sock: socket.socket, path: str, max_size: int = 1 << 30) -> tuple[int, str]:
    """Write the incoming file to path; return (its size, its SHA-256 as the bytes arrived)."""
    (size,) = FILE_SIZE.unpack(recv_exactly(sock, FILE_SIZE.size))
    if size > max_size:
        raise ValueError(f"a file of {size:,} bytes is over the {max_size:,}-byte limit")
    digest, left = hashlib.sha256(), size
    with open(path, "wb") as out:
        while left:
            chunk = sock.recv(min(left, 1 << 16))
            if not chunk:
                raise EOFError(f"peer closed after {size - left:,} of {size:,} bytes")
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return size, digest.hexdigest()


def sha256_of(path: str) -> str:
    """The SHA-256 of a file on disk, as hex: what the receiver must have computed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


# --- XML-RPC from the standard library, and what it hides ---

@contextlib.contextmanager
def xmlrpc_server(*functions):
    """SimpleXMLRPCServer on a free port, in a background thread; yields its URL."""
    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    for function in functions:
        server.register_function(function)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                              name="xmlrpc-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        thread.join(JOIN_TIMEOUT)
        server.server_close()


class TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc.client has no timeout option: without one, a server that never answers hangs us."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host):
        """The HTTP connection xmlrpc.client would make, with our timeout on it."""
        connection = super().make_connection(host)
        connection.timeout = self.timeout   # http.client uses it for connect() and every recv()
        return connection


def xmlrpc_proxy(url: str, timeout: float = 5.0) -> xmlrpc.client.ServerProxy:
    """A client for url whose every call gives up after timeout seconds. Use it in a with block."""
    return xmlrpc.client.ServerProxy(url, transport=TimeoutTransport(timeout), allow_none=True)


# --- JSON-RPC 2.0 by hand: the methods (the protocol is in lessons.kit.jsonrpc) ---

def is_number(value) -> bool:
    """An int or a float, and not a bool (True is an int in Python, not a number in JSON)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Ledger:
    """An account on the server, to show what a repeated call costs. deposit() is not idempotent:
    running it twice deposits twice, unless the caller names the request and we remember it."""

    def __init__(self, remember: int = 10_000):
        self.balance, self.runs = 0, 0
        self._answers: collections.OrderedDict = collections.OrderedDict()   # request id → balance
        self._remember = remember
        self._lock = threading.Lock()

    def deposit(self, amount, request_id=None):
        """Add amount and return the balance; a request_id seen before gets its first answer again."""
        if not is_number(amount) or amount <= 0:
            raise jsonrpc.invalid_params("amount must be a positive number")
        if request_id is not None and not isinstance(request_id, str):
            raise jsonrpc.invalid_params("request_id must be a string")
        with self._lock:
            if request_id in self._answers:              # seen it: answer again, do nothing again
                return self._answers[request_id]
            self.runs += 1
            self.balance += amount
            if request_id is not None:
                self._answers[request_id] = self.balance
                if len(self._answers) > self._remember:   # bounded: forget the oldest
                    self._answers.popitem(last=False)
            return self.balance


def make_methods(stop, ledger: Ledger) -> dict:
    """The server's methods, by name. Each checks its arguments: bad ones are the caller's error
    (-32602), and a method that fails anyway is the server's (-32603)."""
    def echo(text):
        if not isinstance(text, str):
            raise jsonrpc.invalid_params("text must be a string")
        return text

    def add(a, b):
        if not (is_number(a) and is_number(b)):
            raise jsonrpc.invalid_params("a and b must be numbers")
        return a + b

    def sleep(seconds):
        if not is_number(seconds) or not 0 <= seconds <= MAX_SLEEP:
            raise jsonrpc.invalid_params(f"seconds must be a number from 0 to {MAX_SLEEP:g}")
        stop.wait(seconds)    # not time.sleep: a server that is stopping wakes up at once
        return seconds

    return {"echo": echo, "add": add, "sleep": sleep, "deposit": ledger.deposit}


def serve(listener: socket.socket, stop, log, ledger: Ledger | None = None) -> None:
    """The JSON-RPC server: a thread per client, a reply per request line (see lessons.kit.jsonrpc)."""
    jsonrpc.serve(listener, stop, log, make_methods(stop, ledger or Ledger()))


# --- Timeouts and idempotence: a lost reply, retried ---

def call_with_retry(address, method: str, *params, timeout: float = 0.2, tries: int = 3):
    """Call; if no reply comes in time, reconnect and send the same call again.

    The client cannot tell "my request was lost" from "the reply was lost":
    in the second case, the server has already run the call once.
    """
    for attempt in range(1, tries + 1):
        try:
            with jsonrpc.RpcClient(address, timeout=timeout) as client:
                return client.call(method, *params)
        except (TimeoutError, ConnectionError):   # socket.timeout is TimeoutError
            if attempt == tries:
                raise


# --- Demo and command line ---

def demo() -> int:
    """Each part of the lesson once, as a table: what we tried, what happened, whether it should."""
    rows = []   # (what we tried, what happened, whether that is what should happen)
    with connected_pair() as (a, b):
        send_envelope(a, "你好".encode("gbk"), "text/plain", "gbk")
        got = recv_envelope(b)
        rows.append(("an envelope of GBK text", repr(got[1]), got == ("text/plain", "你好")))
        EVIDENCE.clear()
        send_message(a, pickle.dumps(Crafted()))
        naive_receive_object(b)
        rows.append(("pickle.loads() of crafted bytes", "it ran record(), the sender's choice", len(EVIDENCE) == 1))
    with tempfile.TemporaryDirectory() as tmp, connected_pair() as (a, b):
        sent, copy = os.path.join(tmp, "sent.bin"), os.path.join(tmp, "received.bin")
        with open(sent, "wb") as f:
            f.write(os.urandom(3_000_001))
        digest = []
        receiver = threading.Thread(target=lambda: digest.append(receive_file(b, copy)[1]))
        receiver.start()
        send_file(a, sent)
        receiver.join(JOIN_TIMEOUT)
        rows.append(("sendfile() of 3,000,001 bytes", "SHA-256 the same at both ends", digest == [sha256_of(sent)]))
    with xmlrpc_server(pow) as url, xmlrpc_proxy(url) as proxy:
        rows.append(("XML-RPC pow(2, 10)", str(proxy.pow(2, 10)), proxy.pow(2, 10) == 1024))
    with running(serve) as server, jsonrpc.RpcClient(server.address) as client:
        rows.append(("JSON-RPC add(2, 3)", str(client.call("add", 2, 3)), client.call("add", 2, 3) == 5))
        client.send('[{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}, {"foo": "bar"}, 7]')
        codes = [r.get("result", r.get("error", {}).get("code")) for r in client.receive()]
        rows.append(("a batch: one good, two bad", f"{codes}", codes == [3, -32600, -32600]))
    for request_id in (None, str(uuid.uuid4())):
        ledger = Ledger()
        with running(functools.partial(serve, ledger=ledger)) as server, \
                lossy_relay(server.address, lose=1) as relay:
            balance = call_with_retry(relay.address, "deposit", 100, request_id)
        rows.append((f"deposit(100), reply lost, retried {'with' if request_id else 'without'} a request id",
                     f"ran {ledger.runs}x, balance {balance}", balance == (100 if request_id else 200)))
    with mq.context() as ctx:
        with mq.background(mq.shouter, ctx) as endpoint:
            reply = mq.ask(ctx, endpoint, b"hello")
        rows.append(("ZeroMQ REQ/REP b'hello'", repr(reply[0]), reply == [b"HELLO"]))
        counts = sorted(len(v) for v in mq.spread_work(ctx, list(range(30))).values())
        rows.append(("ZeroMQ PUSH/PULL: 30 tasks, 3 workers", f"{counts} each", counts == [10, 10, 10]))
        got = mq.slow_joiner(ctx, count=100)
        rows.append(("ZeroMQ PUB/SUB: subscriber first", f"got {got} of 0-100", got == [100]))
    table = Table("tried", "what happened", "as expected", title="Lesson 10: messages, RPC and message queues")
    for tried, happened, ok in rows:
        table.add_row(tried, happened, "yes" if ok else "[red]NO[/]")
    Console(highlight=False).print(table)
    return 0 if all(ok for *_, ok in rows) else 1


def parse_arg(text: str):
    """A command-line argument as JSON where it parses ('2' → 2, 'true' → True), else as a string."""
    try:
        return jsonrpc.parse(text.encode("utf-8", errors="surrogateescape"))
    except ValueError:
        return text


def client(args) -> int:
    """``client METHOD ARGS...``: call it, print the result as JSON (exit 1 on an error reply)."""
    params = [parse_arg(a) for a in args.args]
    with jsonrpc.RpcClient((args.host, args.port), timeout=args.timeout) as rpc:
        if args.notify:
            rpc.notify(args.method, *params)
            return 0
        try:
            result = rpc.call(args.method, *params)
        except (jsonrpc.RpcError, jsonrpc.ProtocolError) as exc:
            prefix = "error " if isinstance(exc, jsonrpc.RpcError) else ""
            stderr.print(f"{prefix}{exc}", style="red", markup=False, highlight=False)
            return 1
    sys.stdout.write(jsonrpc.encode(result).decode("utf-8"))   # as the server sent it: one line of JSON
    return 0


def main(argv=None) -> int:
    """``python -m lessons.10_messages [demo | serve | client METHOD ARGS...]``."""
    parser, commands = lesson_parser(__doc__, "10_messages")
    serve_command(commands, port=9910)
    client_cmd = client_command(commands, port=9910, max_timeout=MAX_TIMEOUT, help="call a method, print the result")
    client_cmd.add_argument("method", help="echo, add, sleep, deposit, or any other name to see -32601")
    client_cmd.add_argument("args", nargs="*", metavar="ARG", help="parameters, as JSON where they parse")
    client_cmd.add_argument("--notify", action="store_true", help="send a notification: no reply expected")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_forever(serve, args, "10_messages")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
