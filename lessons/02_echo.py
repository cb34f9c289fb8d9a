"""TCP is a byte stream, so an echo server loops on recv() and answers with sendall().

    python -m lessons.02_echo                       # demo: the tutorial's pair, then done right
    python -m lessons.02_echo serve [--port 9902] [--idle-timeout 30]
    python -m lessons.02_echo client 'hello'        # send, half-close, print the reply

Try the server with netcat too: ``nc 127.0.0.1 9902``, type a line, press Ctrl-D.

The contract (RFC 862, TCP echo): every byte a client sends comes back
unchanged, until the client closes its sending side; then the server closes.

    client                         server
      | -- connect --------------->  | accept
      | -- b'hel' ---------------->  | recv -> b'hel'  -> sendall(b'hel')
      | -- b'lo' ----------------->  | recv -> b'lo'   -> sendall(b'lo')
      | <- b'hel' , b'lo' ---------  |
      | -- FIN (shutdown WR) ----->  | recv -> b''  (EOF: the client is done)
      | <- FIN --------------------  | close

Clients are served one after another, as in the original tutorial: while one
is served, the next waits in the listen queue. That is this design's price.
A reset costs only the client that sent it, and a client that sends nothing,
or leaves our echo unread, for ``idle_timeout`` seconds (30 by default) is
dropped so that the next one gets its turn; a client that keeps trickling
bytes still holds everyone up (lesson 03 serves clients at the same time).
"""
from __future__ import annotations

import functools
import socket
import sys
import threading

from rich.console import Console

from lessons.kit import adversary, running
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, seconds,
                             serve_command, serve_forever)
from lessons.kit.endings import endings_table, how_connections_end
from lessons.kit.server import accept_until
from lessons.kit.transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, ERROR, RECV,
                                    SEND, SERVER, SHUTDOWN, Transcript)

TITLE = "TCP echo, done right"
RECV_SIZE = 65536     # ask for a lot: recv returns what has arrived, up to this
IDLE_TIMEOUT = 30.0   # seconds a client may send nothing, or leave its echo unread


# --- The original tutorial's pair, as written, to be broken in the notebook. ---

def naive_echo_server(server_socket, stop, log):
    """The tutorial's server (服务器端代码示例); each line we changed says (ours).

    Its first lines, socket(), bind(('localhost', 9999)), listen(5) and the
    print, are the kit's here: running() binds port 0, listens, records "listen".
    Fixed below in handle() and serve().
    """
    server_socket.settimeout(0.05)                # (ours) wake up to look at the stop flag
    while not stop.is_set():                      # (ours) was: while True:
        # 接受客户端连接
        try:                                      # (ours)
            client_socket, addr = server_socket.accept()
        except socket.timeout:                    # (ours) nobody came: look at the flag again
            continue                              # (ours)
        stop.track(client_socket)                 # (ours) stopping wakes a recv() blocked on it
        log.record(SERVER, ACCEPT, "a client")  # (ours) was: print(f'Got connection from {addr}')

        # 接收数据
        data = client_socket.recv(1024)
        if not data:
            break

        # 发送回复
        client_socket.send(data)

        # 关闭连接
        client_socket.close()


def naive_echo_client(address, message: str = 'Hello, Server!', timeout: float = 5.0) -> str:
    """The tutorial's client (客户端代码示例); each line we changed says (ours). Fixed below in echo()."""
    # 创建TCP套接字
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client_socket:  # (ours) with: closed
        client_socket.settimeout(timeout)         # (ours) never wait for ever
        # 连接到服务器
        client_socket.connect(address)            # (ours) was: ('localhost', 9999)

        # 发送消息
        client_socket.sendall(message.encode())

        # 接收回复
        response = client_socket.recv(1024)
        received = response.decode()  # (ours) was: print(f'Received: {response.decode()}')

        # 关闭连接
        client_socket.close()
    return received                               # (ours)


# --- The server, done right. ---

def handle(conn: socket.socket, log: Transcript, who: str) -> None:
    """Echo one client until it closes its sending side."""
    while True:
        data = conn.recv(RECV_SIZE)
        if not data:                 # b'' means EOF: the client has shut down its side
            log.record(SERVER, EOF, who)
            return
        log.record(SERVER, RECV, who, len(data))
        log.record(SERVER, SEND, who, len(data))
        conn.sendall(data)           # loops inside until every byte is handed to the kernel


def serve(listener: socket.socket, stop, log: Transcript,
          idle_timeout: float | None = IDLE_TIMEOUT) -> None:
    """Serve clients one after another until stopped; drop one idle for idle_timeout seconds."""
    # accept_until gives each connection the timeout: a recv() that waits longer, or a
    # sendall() that takes longer, raises socket.timeout. None: wait for ever (the tutorial's).
    for number, (conn, _) in enumerate(accept_until(listener, stop, log, idle_timeout), 1):
        who = f"client {number}"
        log.record(SERVER, ACCEPT, who)
        with conn:
            try:
                handle(conn, log, who)
            except socket.timeout:   # silent, or not reading its echo: the next client's turn
                log.record(SERVER, ERROR, who,
                           detail=f"timed out: idle {idle_timeout:g} s, dropped")
            except OSError as exc:   # reset, broken pipe, stopped: that client's problem only
                if not stop.is_set():
                    log.record(SERVER, ERROR, who, detail=type(exc).__name__)
            log.record(SERVER, CLOSE, who)


# --- The client, done right. ---

def echo(address, message: bytes, timeout: float = 5.0,
         log: Transcript | None = None, who: str = "client 1") -> bytes:
    """Send message, half-close, and return everything the server sends back (an echo is
    never longer than the message: ConnectionError at the first byte more).

    The send runs in a helper thread while this thread reads. Sending all of a
    large message before reading any reply would deadlock: the server blocks
    sending us its echo, so it stops reading, so our send blocks too.
    """
    log = log if log is not None else Transcript()
    log.record(CLIENT, CONNECT, who)
    with socket.create_connection(address, timeout=timeout) as sock:
        failure: list = []

        def send_then_close():
            try:
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)   # "I have no more to say": the server sees EOF
            except OSError as exc:
                failure.append(exc)

        # Recorded here, in order, not from the helper thread: see transcript.py.
        log.record(CLIENT, SEND, who, len(message))
        log.record(CLIENT, SHUTDOWN, who)
        sender = threading.Thread(target=send_then_close, name="echo-sender", daemon=True)
        sender.start()
        chunks, received = [], 0
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    log.record(CLIENT, EOF, who)
                    break
                log.record(CLIENT, RECV, who, len(chunk))
                received += len(chunk)
                if received > len(message):   # an echo is never longer: stop reading whatever this is
                    raise ConnectionError(f"the server sent more than the {len(message):,} bytes sent:"
                                          " not an echo")
                chunks.append(chunk)
        finally:
            sender.join(timeout)
        if failure:
            raise failure[0]
    log.record(CLIENT, CLOSE, who)
    return b"".join(chunks)


# --- The demo and the command line. ---

def demo() -> int:
    """The tutorial's pair breaking, how connections end, and the fixed server holding up."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 02: TCP echo")
    log = Transcript()
    with running(serve, log=log) as server:
        reply = echo(server.address, b"hello, echo", log=log)
        log.wait_for_event(SERVER, CLOSE)
    console.print(log.render("a polite client"))
    seen = {"the echo came back": reply == b"hello, echo"}

    with running(naive_echo_server) as naive:
        with socket.create_connection(naive.address, timeout=2):
            pass                                  # connect, send nothing, close: a port check
        naive.thread.join(2)
        ended = not naive.thread.is_alive()
        seen["tutorial's server: one client that said nothing ended it"] = ended
        try:
            waited = not naive_echo_client(naive.address, "anyone there?", timeout=0.5)
        except socket.timeout:
            waited = True
        seen["tutorial's server: the next client waited in vain"] = waited
    with running(naive_echo_server) as naive:
        dribbled = adversary.dribble(naive.address, b"one byte at a time", delay=0.01)
    seen["tutorial's server: a message in 18 pieces came back cut"] = len(dribbled) < 18
    with running(serve) as server:
        cut = naive_echo_client(server.address, "x" * 5000)
    seen["tutorial's client: of 5,000 bytes, at most 1,024 came back"] = len(cut) <= 1024

    ten_mib = 10 * 1024 * 1024
    log = Transcript()
    with running(functools.partial(serve, idle_timeout=0.3), log=log) as server:
        slow = adversary.dribble(server.address, b"one byte at a time", delay=0.01)
        seen["fixed server: 18 pieces came back whole"] = slow == b"one byte at a time"
        adversary.reset(server.address)
        big = adversary.flood(server.address, ten_mib) == adversary.flood_pattern(ten_mib)
        seen["fixed server: after a reset, 10 MiB came back"] = big
        with adversary.silent(server.address):
            after = echo(server.address, b"my turn", timeout=3)
    seen["fixed server: a silent client was dropped after 0.3 s, the next served"] = (
        after == b"my turn" and any("timed out" in e.detail for e in log.events(SERVER)))
    for what, ok in seen.items():
        console.print(f"{what}: {ok}")

    endings = how_connections_end(wait=0.3)
    console.print()
    console.print(endings_table(endings))
    killed = endings["the client's process is killed"]
    linger = endings["the client closes with SO_LINGER 0"]
    return 0 if all(seen.values()) and "FIN" in killed and "RST" in linger else 1


def client(args) -> int:
    """``client 'hello'``: print the server's echo of the message."""
    # surrogateescape: bytes the shell passed that are not UTF-8 go out as they came
    reply = echo((args.host, args.port), args.message.encode("utf-8", "surrogateescape"),
                 timeout=args.timeout)
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def main(argv=None) -> int:
    """``python -m lessons.02_echo [demo | serve | client MESSAGE]``."""
    parser, commands = lesson_parser(__doc__, "02_echo")
    serve_cmd = serve_command(commands, port=9902)
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 3600, zero_means="never"),
                           default=IDLE_TIMEOUT, metavar="SECONDS",
                           help="drop a client that sends nothing, or reads nothing, for "
                                "this long; 0 never drops one (default %(default)g)")
    client_cmd = client_command(commands, port=9902, help="send a message and print its echo")
    client_cmd.add_argument("message", help="text to send")
    args = parser.parse_args(argv)
    if args.command == "serve":
        idle = functools.partial(serve, idle_timeout=args.idle_timeout or None)
        return serve_forever(idle, args, "02_echo")
    if args.command == "client":
        return run_client(client, args)
    return demo()


if __name__ == "__main__":
    main_guard(main)
