"""TLS turns a TCP stream into a private, verified one, but only if the client checks the certificate and the name.

    python -m lessons.11_tls                           # demo: echo and chat over TLS, and six failures
    python -m lessons.11_tls serve [--port 9911]       # lesson 02's echo over TLS
    python -m lessons.11_tls serve --chat              # lesson 03's room over TLS (TLS termination)
    python -m lessons.11_tls client --cafile PATH 'hello'
    python -m lessons.11_tls client --chat --cafile PATH [--name alice]
    openssl s_client -connect 127.0.0.1:9911 -CAfile PATH   # any TLS client verifies it too

``serve`` makes a throwaway certificate authority (nothing secret is committed),
prints ``listening on HOST:PORT`` and, on the next line, the CA certificate's path.

    client                                   server
      | -- ClientHello (versions, key share) -> |
      | <- ServerHello, {certificate, proof,    |   1 round trip (TLS 1.3), then
      |     Finished} ------------------------- |   everything is encrypted
      | check: signed by a CA I trust? for the  |
      | name I asked for? not expired?          |
      | -- {Finished} {b'hello'} -------------> |
      | <- {b'hello'} ------------------------- |
      | -- {close_notify} --------------------> |   TLS's half-close: "no more data"
      | <- {close_notify} --------------------- |

``serve --chat`` is TLS termination (what stunnel or nginx's stream module do):
lesson 03's room runs unchanged in a child process on loopback, and an asyncio
relay speaks TLS to the world and plain TCP to the room.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import selectors
import socket
import ssl
import struct
import sys

from rich.console import Console

from lessons.kit import echo as echo_kit
from lessons.kit.aio import Serving, serve_in_thread, streams_or_abort
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, say, seconds,
                             serve_command, serve_forever, stderr)
from lessons.kit.lineclient import ChatClient, chat_session
from lessons.kit.processes import ServerProcess
from lessons.kit.server import accept_until, running
from lessons.kit.threaded import serve_threads
from lessons.kit.tls import Authority, explain
from lessons.kit.transcript import (CLIENT, CLOSE, CONNECT, EOF, ERROR, NOTE, RECV, SEND,
                                    SERVER, SHUTDOWN, Transcript)

TITLE = "TLS: the echo server and the chat room, encrypted and verified"
RECV_SIZE = 65536
CHUNK = 16384              # one TLS record holds at most 16 KiB of data
HANDSHAKE_TIMEOUT = 10.0   # seconds a new connection has to finish its handshake
MAX_CLIENTS = 100          # echo clients served at once, a thread each; one more is turned away
RELAY_BUFFER = 256 * 1024  # bytes of kernel buffer per relayed socket (see _buffers)


# --- The two contexts: everything about security is decided here. ---

def server_context(certfile) -> ssl.SSLContext:
    """The server's side: its certificate and key, and nothing older than TLS 1.2."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)   # "I am a server"
    context.minimum_version = ssl.TLSVersion.TLSv1_2   # the default today; said so it stays
    context.load_cert_chain(certfile)
    return context


def client_context(cafile=None) -> ssl.SSLContext:
    """The client's side: verify the chain (against cafile, else the system's CAs) and the name."""
    context = ssl.create_default_context(cafile=cafile)   # CERT_REQUIRED, check_hostname=True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def naive_client_context() -> ssl.SSLContext:
    """The common first "fix" for CERTIFICATE_VERIFY_FAILED. It encrypts, to anyone at all."""
    return ssl._create_unverified_context()   # BUG: CERT_NONE, no host name check


# --- The echo server: lesson 02's contract, over TLS, a thread per client. ---

def serve(listener: socket.socket, stop, log: Transcript, *, context: ssl.SSLContext,
          handshake_timeout: float = HANDSHAKE_TIMEOUT, max_clients: int = MAX_CLIENTS) -> None:
    """Echo each client over TLS in its own thread (a slow handshake must not hold the others).
    At most max_clients at once (kit.threaded): one more is closed before its handshake, since
    a thread each without a bound ends when threads or memory run out, for everyone."""
    def one(conn: socket.socket, log: Transcript, who: str) -> None:
        echo_one(conn, context, stop, log, who)

    serve_threads(listener, stop, log, one, max_clients=max_clients, idle_timeout=handshake_timeout)


def echo_one(conn: socket.socket, context: ssl.SSLContext, stop, log: Transcript,
             who: str) -> None:
    """Handshake, echo until the client's close_notify, answer with ours."""
    with conn:
        try:
            # suppress_ragged_eofs=False: a TCP close without close_notify is an error, not an
            # end: anyone on the path can forge a FIN, so only close_notify proves "that was all".
            with context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False,
                                     do_handshake_on_connect=False) as tls:
                stop.track(tls)   # conn is detached now: this is the socket to wake when stopping,
                tls.do_handshake()   # from the handshake on (else stopping waits for its timeout)
                log.record(SERVER, NOTE, who, detail=f"handshake done: {tls.version()}")
                echo_kit.handle(tls, log, who)   # lesson 02's loop: recv → b'' at close_notify
                log.record(SERVER, SHUTDOWN, who, detail="close_notify")
                tls.unwrap()                     # our close_notify: "and that was all from me"
        except (OSError, ValueError) as exc:   # failed handshake, reset, truncation: this one only
            if not stop.is_set():
                log.record(SERVER, ERROR, who, detail=explain(exc))


# --- The echo client: one thread, a non-blocking socket, a selector, TLS in memory. ---

def tls_echo(address, message: bytes, context: ssl.SSLContext, server_hostname: str = "localhost",
             timeout: float = 5.0, log: Transcript | None = None, who: str = "client 1",
             counts: dict | None = None) -> bytes:
    """Send message over TLS, end with close_notify, return everything echoed back.

    Sending and reading must interleave (lesson 02: else both sides block on full
    buffers), and one SSL object may not be used by two threads, so this is one thread
    with a non-blocking socket and a selector. TLS runs in memory (an SSLObject between
    two MemoryBIOs): the socket moves ciphertext, TLS turns it into plaintext and back.
    That is how asyncio does it, and it lets us decide when TLS may read, which a
    half-close needs (see below). ``counts`` (a dict) tallies the loop's events.
    """
    log = log if log is not None else Transcript()
    counts = counts if counts is not None else {}
    tally = lambda event: counts.__setitem__(event, counts.get(event, 0) + 1)   # noqa: E731
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    view, wire, chunks = memoryview(message), bytearray(), []
    handshaken = closed_ours = False
    log.record(CLIENT, CONNECT, who)
    with socket.create_connection(address, timeout=timeout) as sock, \
            selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        while True:
            try:
                if not handshaken:
                    tls.do_handshake()                 # SSLWantReadError until the server answers
                    handshaken = True
                    log.record(CLIENT, NOTE, who,
                               detail=f"handshake done: {tls.version()}, verified")
                    log.record(CLIENT, SEND, who, len(message))
                    log.record(CLIENT, SHUTDOWN, who, detail="close_notify")
                while True:                            # first take out all the plaintext TLS has
                    chunk = tls.read(RECV_SIZE)
                    if not chunk:
                        raise ssl.SSLZeroReturnError
                    log.record(CLIENT, RECV, who, len(chunk))
                    chunks.append(chunk)
            except ssl.SSLWantReadError:               # TLS needs more bytes from the network
                tally("SSLWantReadError")
            except ssl.SSLZeroReturnError:             # the server's close_notify: a clean end
                log.record(CLIENT, EOF, who, detail="close_notify")
                break
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    sock.send(outgoing.read())         # the alert that tells the server why
                raise
            if handshaken and not closed_ours:
                while view and len(wire) + outgoing.pending < 4 * CHUNK:   # bounded: an outbox
                    view = view[tls.write(view[:CHUNK]):]
                if not view:
                    # close_notify. unwrap() then reads on for the server's: it must find nothing
                    # unread (else APPLICATION_DATA_AFTER_CLOSE_NOTIFY), so it comes after read().
                    with contextlib.suppress(ssl.SSLWantReadError):
                        tls.unwrap()
                    closed_ours = True
            wire += outgoing.read()
            # The selector sees the socket only: anything already inside TLS was read above.
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wire else 0)
            sel.modify(sock, events)
            ready = sel.select(timeout)
            if not ready:
                raise socket.timeout(f"no progress in {timeout:g} s")
            tally("select")
            for _, mask in ready:
                if mask & selectors.EVENT_WRITE:
                    try:
                        del wire[:sock.send(wire)]
                    except BlockingIOError:            # the kernel's buffer is full: later
                        tally("BlockingIOError")
                if mask & selectors.EVENT_READ:
                    data = sock.recv(RECV_SIZE)
                    if data:
                        incoming.write(data)
                    else:                              # TCP EOF: read() now raises SSLEOFError
                        incoming.write_eof()           # unless close_notify came first
    log.record(CLIENT, CLOSE, who)
    return b"".join(chunks)


# --- TLS termination for the chat room: an asyncio relay, TLS outside, TCP inside. ---

def relay(listener: socket.socket, stop, log: Transcript, *, backend: tuple,
          accept_tls: ssl.SSLContext | None = None, connect_tls: ssl.SSLContext | None = None,
          server_hostname: str | None = None, handshake_timeout: float = HANDSHAKE_TIMEOUT,
          buffer: int | None = None) -> None:
    """Relay each connection to ``backend``, both ways, until stopped. ``accept_tls``: clients
    speak TLS (termination, as ``serve --chat``); ``connect_tls``: the backend does (origination).
    ``buffer``: the kernel's buffers for each socket, in bytes (None: the kernel's choice).
    It runs on kit.aio's Serving, which, out of file descriptors, says so once and waits
    (asyncio.start_server() prints a traceback for every accept() that fails, over and over)."""
    async def connection(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter,
                         who: str) -> None:
        # Called once the client's handshake is done (a failed one never gets here).
        writers = [client_out]
        _buffers(client_out.get_extra_info("socket"), buffer)
        try:
            backend_in, backend_out = await asyncio.wait_for(
                _connect(backend, connect_tls, server_hostname, buffer), handshake_timeout)
            writers.append(backend_out)
            # Stopping aborts it with the clients' own: a TLS close() waits (up to 30 s) for
            # the peer's close_notify, and a loop that ended first left its socket open.
            serving.transports.add(backend_out.transport)
            pipes = [asyncio.ensure_future(_pipe(client_in, backend_out)),
                     asyncio.ensure_future(_pipe(backend_in, client_out))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            finally:                        # stopping cancels us: the pipes end with us
                for pipe in pipes:
                    pipe.cancel()
            failed = [p.exception() for p in pipes if p.done() and not p.cancelled() and p.exception()]
            if failed:                      # a reset on one side: pass it on to the other
                for writer in writers:
                    _abort(writer)
                if not stop.is_set():
                    log.record(SERVER, ERROR, who, detail=explain(failed[0]))
            await asyncio.gather(*pipes, return_exceptions=True)
        except (OSError, asyncio.TimeoutError) as exc:   # the backend is not there
            log.record(SERVER, ERROR, who, detail=f"backend: {explain(exc)}")
            _abort(client_out)
        except asyncio.CancelledError:      # stopping: end quietly
            pass
        finally:                            # the client's side: Serving closes it
            for writer in writers[1:]:      # stopping: at once, with whatever is still queued
                _abort(writer) if stop.is_set() else writer.close()

    serving = None

    async def start(listener: socket.socket, log: Transcript) -> Serving:
        nonlocal serving
        serving = await Serving.streams(connection, listener, log, tls=accept_tls,
                                        handshake_timeout=handshake_timeout)
        return serving

    serve_in_thread(start, listener, stop, log)


async def _connect(backend: tuple, context, server_hostname, buffer):
    """open_connection(), on a socket whose buffers are set before it connects."""
    family = socket.AF_INET6 if ":" in backend[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        _buffers(sock, buffer)
        await asyncio.get_running_loop().sock_connect(sock, backend)
    except BaseException:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    return await streams_or_abort(lambda factory: loop.create_connection(
        factory, sock=sock, ssl=context, server_hostname=server_hostname if context else None))


def _buffers(sock, size: int | None) -> None:
    """Small kernel buffers: a relay adds buffers between the two ends, and the bigger they
    are, the later a server notices that a client has stopped reading (lesson 03's outbox)."""
    if size and sock is not None:
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until EOF; drain() makes a slow reader slow the writer down (backpressure)."""
    while data := await source.read(RECV_SIZE):
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()       # plain TCP passes the half-close on
    else:
        sink.close()           # asyncio's TLS cannot half-close: close_notify, then close


def _abort(writer: asyncio.StreamWriter) -> None:
    """Pass a reset on as a reset (SO_LINGER 0: RST, not FIN)."""
    with contextlib.suppress(OSError, AttributeError):   # (a closed TLS transport has no socket)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def serve_chat(listener: socket.socket, stop, log: Transcript, *, context: ssl.SSLContext,
               room_options: tuple = ()) -> None:
    """Lesson 03's room, started as a learner starts it, behind a TLS relay."""
    with ServerProcess.lesson("03_chat", "--quiet", "--host", "127.0.0.1", *room_options) as room:
        log.record(SERVER, NOTE, detail="lesson 03's room started on loopback")
        relay(listener, stop, log, backend=room.address, accept_tls=context, buffer=RELAY_BUFFER)


# --- Plain TCP, for contrast: lesson 02's echo with no TLS at all. ---

def plain_echo(listener: socket.socket, stop, log: Transcript) -> None:
    """Lesson 02's echo without TLS (clients one after another): to measure against, and to
    show what a TLS client makes of a server that does not speak TLS."""
    for number, (conn, _) in enumerate(accept_until(listener, stop, log), 1):
        with conn, contextlib.suppress(OSError):
            echo_kit.handle(conn, log, f"client {number}")


def attempt(run) -> str:
    """What a connection attempt came to, in words that are the same on every run."""
    try:
        return f"connected: {run()!r}"
    except (OSError, ValueError) as exc:
        return explain(exc)


def plain_to_tls(address, message: bytes) -> str:
    """A plain TCP client at a TLS server: no echo, only a hang-up (a FIN or a reset)."""
    try:
        reply = echo_kit.echo(address, message)
    except ConnectionResetError:
        reply = b""
    return "no echo: the server hung up" if reply == b"" else f"got back {reply!r}"


# --- The client command, the demo and the command line. ---

def client(args) -> int:
    """Echo a message over TLS, or (--chat) join the room over TLS; TLS failures in one line."""
    try:
        context = client_context(args.cafile)
    except ssl.SSLError as exc:            # (an OSError too) read, but holds no certificate
        stderr.print(f"[red]cannot use --cafile {args.cafile}: not a PEM certificate ({explain(exc)})[/]")
        return 1
    except (OSError, ValueError) as exc:   # missing or unreadable
        stderr.print(f"[red]cannot use --cafile {args.cafile}: {explain(exc)}[/]")
        return 1
    name = args.server_name or args.host
    try:
        if args.chat:
            with ChatClient((args.host, args.port), timeout=args.timeout, ssl_context=context,
                            server_hostname=name) as room:
                return chat_session(room, args.name)
        reply = tls_echo((args.host, args.port), args.message.encode(), context, name, args.timeout)
    except ssl.SSLCertVerificationError as exc:
        hint = "" if args.cafile else " (give --cafile: the path that serve printed)"
        stderr.print(f"[red]refused the server's certificate: {exc.verify_message}{hint}[/]")
        return 1
    except ssl.SSLError as exc:
        stderr.print(f"[red]TLS failed ({exc.reason or type(exc).__name__}): does the server speak TLS?[/]")
        return 1
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def demo() -> int:
    """Echo and chat over TLS, then six ways it goes wrong; exits 0 if each went as shown."""
    from rich.table import Table
    console = Console(highlight=False)
    console.rule("[bold]Lesson 11: TLS")
    secret = b"my password is hunter2"
    with Authority() as authority, Authority() as impostor:
        trusting = client_context(authority.cafile)
        log = Transcript()
        servers = [running(functools.partial(serve, context=server_context(certfile)), log=each)
                   for certfile, each in ((authority.certfile, log), (impostor.certfile, None),
                                          (authority.expired_certfile, None))]
        with servers[0] as good, servers[1] as fake, servers[2] as stale, running(plain_echo) as plain:
            reply = tls_echo(good.address, b"hello, TLS", trusting, log=log)
            log.wait_for_event(SERVER, CLOSE)
            console.print(log.render("echo over TLS: a handshake, the echo, close_notify both ways"))
            big = bytes(range(256)) * 4096
            intact = tls_echo(good.address, big, trusting) == big
            console.print(f"reply: {reply!r}; a 1 MiB echo came back intact: {intact}")
            rows = [
                ("a certificate from a CA we do not trust", attempt(lambda: tls_echo(fake.address, secret, trusting))),
                ("the right CA, the wrong name", attempt(lambda: tls_echo(good.address, secret, trusting, "example.com"))),
                ("an expired certificate", attempt(lambda: tls_echo(stale.address, secret, trusting))),
                ("plain TCP to the TLS server", plain_to_tls(good.address, secret)),
                ("TLS to a plain TCP server", attempt(lambda: tls_echo(plain.address, secret, trusting))),
                ("verification off, to the impostor", attempt(lambda: tls_echo(fake.address, secret,
                                                                               naive_client_context()))),
            ]
    table = Table(title="what a client meets", title_justify="left")
    table.add_column("attempt")
    table.add_column("what happened")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("The last one 'works': the impostor read the password. That is the problem.")
    expected = ["SSLCertVerificationError: unable to get local issuer certificate (verify code 20)",
                "SSLCertVerificationError: Hostname mismatch, certificate is not valid for 'example.com'. "
                "(verify code 62)",
                "SSLCertVerificationError: certificate has expired (verify code 10)"]
    failures_ok = ([text for _, text in rows[:3]] == expected and rows[3][1] == "no echo: the server hung up"
                   and rows[4][1].startswith("SSL") and rows[5][1] == f"connected: {secret!r}")
    heard = chat_over_tls(console)
    return 0 if reply == b"hello, TLS" and intact and failures_ok and heard == "alice: hello over TLS" else 1


def chat_over_tls(console: Console) -> str:
    """Lesson 03's room behind the TLS relay: alice speaks, bob hears; returns what bob got."""
    with Authority() as authority, \
            running(functools.partial(serve_chat, context=server_context(authority.certfile))) as room:
        trusting = client_context(authority.cafile)
        with ChatClient(room.address, "alice", ssl_context=trusting, server_hostname="localhost") as alice, \
                ChatClient(room.address, "bob", ssl_context=trusting, server_hostname="localhost") as bob:
            alice.expect("* bob joined")
            alice.say("hello over TLS")
            heard = bob.next_line()
            console.print(f"chat over TLS ({bob.sock.version()}): bob received {heard!r}")
    return heard


def announce(server, cafile):
    """``server``, printing the CA file's path first (on the line after "listening on")."""
    def run(listener, stop, log):
        say(f"CA certificate: {cafile}")
        server(listener, stop, log)
    return run


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "11_tls")
    serve_cmd = serve_command(commands, port=9911)
    serve_cmd.add_argument("--chat", action="store_true", help="serve lesson 03's chat room instead of echo")
    serve_cmd.add_argument("--handshake-timeout", type=seconds(0, 600), default=HANDSHAKE_TIMEOUT,
                           metavar="SECONDS", help="drop a client whose handshake takes longer (default %(default)g)")
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"), metavar="SECONDS",
                           help="(--chat) passed on to lesson 03's room")
    client_cmd = client_command(commands, port=9911)
    client_cmd.add_argument("--cafile", help="the CA certificate to trust (the path serve printed); "
                                             "default: the system's CAs")
    client_cmd.add_argument("--server-name", help="the name the certificate must carry (default: --host)")
    client_cmd.add_argument("--chat", action="store_true", help="join the chat room instead of echoing")
    client_cmd.add_argument("--name", help="(--chat) your name in the room")
    client_cmd.add_argument("message", nargs="?", help="text to echo")
    args = parser.parse_args(argv)
    if args.command == "serve":
        with Authority() as authority:
            context = server_context(authority.certfile)
            if args.chat:
                options = () if args.idle_timeout is None else ("--idle-timeout", str(args.idle_timeout))
                server = functools.partial(serve_chat, context=context, room_options=options)
            else:
                server = functools.partial(serve, context=context, handshake_timeout=args.handshake_timeout)
            return serve_forever(announce(server, authority.cafile), args, "11_tls")
    if args.command == "client":
        if not args.chat and args.message is None:
            parser.error("client: give a message to echo, or --chat")
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
