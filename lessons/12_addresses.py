"""A name is a list of addresses, a server gets only what it binds, and local programs can use Unix sockets.

    python -m lessons.12_addresses                                  # demo
    python -m lessons.12_addresses serve [--host ::1] [--port 9912] # listening on [::1]:9912
    python -m lessons.12_addresses serve --host ::                  # every IPv6 and IPv4 address
    python -m lessons.12_addresses serve --unix /tmp/echo.sock      # listening on unix:/tmp/echo.sock
    python -m lessons.12_addresses client --host localhost 'hello'
    python -m lessons.12_addresses client --unix /tmp/echo.sock 'hello'

``nc -U /tmp/echo.sock`` talks to the Unix socket server too (``nc -6 ::1 9912``
to the IPv6 one). ``--host`` takes an address or a name; a name is resolved
and the server listens on its first address. ``--unix @name`` uses Linux's
abstract namespace (no file at all).

    getaddrinfo("localhost", 9912) → [(IPv6, ::1), (IPv4, 127.0.0.1)]  (the order: the OS's choice)
    a client tries each in turn:     ::1 refused → 127.0.0.1 connected
    a server gets what it binds:     127.0.0.1 | ::1 | 0.0.0.0 (all IPv4) | :: (all IPv6, + IPv4: dual stack)
    a Unix socket is a path:         /run/app.sock, guarded by file permissions; no port, no network
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import struct
import sys
import tempfile
import threading

from rich.console import Console

from lessons.kit.adversary import closed_port
from lessons.kit.check import describe_error
from lessons.kit.cli import lesson_parser, main_guard, serve_forever, stderr
from lessons.kit.echo import echo, handle
from lessons.kit.families import (HAVE_PEERCRED, HAVE_UNIX, LOOPBACKS, NO_DUALSTACK, NO_IPV6, NO_UNIX,
                                  add_where_args, check_where_args, exchange, free_on_both_loopbacks,
                                  from_loopback, have_ipv6, holding, peer_kind, unix_address, unix_echo,
                                  where, why_not)
from lessons.kit.server import JOIN_TIMEOUT, running_on
from lessons.kit.threaded import serve_threads
from lessons.kit.transcript import CLIENT, NOTE, Transcript
from lessons.kit.unixpeers import crash_a_server, upper_echo_child

TITLE = "Addresses, names and local sockets"
PORT = 9912
FAMILIES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}
TCP = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")   # getaddrinfo's first four fields
IDLE_TIMEOUT = 30.0   # a client silent this long is dropped
MAX_CLIENTS = 100     # served at once, a thread each; one more is turned away
UCRED = struct.Struct("3i")   # Linux's struct ucred: pid, uid, gid


# --- Names: what getaddrinfo says, in the order a client would try. ---

def resolve(host: str, port=None) -> list[tuple[str, str]]:
    """(family, address) for each address a TCP client would try for host, in order."""
    found = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        entry = (FAMILIES.get(family, str(family)), sockaddr[0])
        if entry not in found:
            found.append(entry)
    return found


# --- The tutorial's pair, on 'localhost'. Its socket is AF_INET: IPv4 only. ---

def tutorial_listener(port: int = 0) -> socket.socket:
    """The tutorial's server socket up to listen(): it asks for ('localhost', 9999)."""
    # 创建TCP套接字
    server_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    # 绑定到指定地址和端口
    server_socket.bind(('localhost', port))            # (ours: port 0 here, 9999 in the tutorial)

    # 开始监听,最大排队数量为5
    server_socket.listen(5)
    # (ours: its print('Server listening on port 9999...') and accept loop: lesson 02's)
    return server_socket                               # (ours)


def tutorial_client(port: int) -> str:
    """The tutorial's client: an IPv4 socket connected to ('localhost', 9999)."""
    # 创建TCP套接字
    client_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client_socket.settimeout(5.0)                      # (ours: no call waits forever)
    try:                                               # (ours: closed even if connect() fails)
        # 连接到服务器
        client_socket.connect(('localhost', port))     # (ours: the server's port, not 9999)

        # 发送消息
        message = 'Hello, Server!'
        client_socket.sendall(message.encode())

        # 接收回复
        response = client_socket.recv(1024)
        return f'Received: {response.decode()}'        # (ours: returned, not printed)
    finally:                                           # (ours)
        # 关闭连接
        client_socket.close()


# --- How a client walks getaddrinfo's list: socket.create_connection, written out. ---

def connect_in_order(addresses, timeout: float = 1.0, log: Transcript | None = None):
    """Try each (family, type, proto, canonname, sockaddr) in turn; return the first that connects.

    This is what create_connection() does. Like it (before Python 3.11, or
    without all_errors=True), it raises only the last error: the others are lost.
    """
    log = log if log is not None else Transcript()
    last_error = None
    for number, (family, type_, proto, _, sockaddr) in enumerate(addresses, 1):
        sock = socket.socket(family, type_, proto)
        sock.settimeout(timeout)     # per attempt: one dead address must not use up the whole wait
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last_error = exc
            log.record(CLIENT, NOTE, detail=f"address {number} ({FAMILIES[family]}): "
                                            f"{describe_error(exc)}")
            continue
        log.record(CLIENT, NOTE, detail=f"address {number} ({FAMILIES[family]}): connected")
        return sock
    raise last_error if last_error else OSError("getaddrinfo returned no addresses")


# --- Which address a server listens on. ---

def listen_tcp(host: str, port: int = 0, backlog: int = socket.SOMAXCONN,
               dualstack: bool = True) -> socket.socket:
    """Listen on host (an address, or a name: its first address) and port.

    127.0.0.1 and ::1 are this machine only; 0.0.0.0 is every IPv4 address;
    ``::`` is every IPv6 address, and every IPv4 one too (dual stack) where
    the OS allows, unless ``dualstack`` is False: IPV6_V6ONLY's default differs
    (off on Linux, on in Windows and FreeBSD), so we set it rather than inherit it.
    """
    if not host:   # bind(("", port)) would silently mean every interface
        raise ValueError("empty host: say 127.0.0.1 (this machine only), or 0.0.0.0 or ::")
    if host == "::" and dualstack and socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, backlog=backlog,
                                    dualstack_ipv6=True)
    guard = None
    if port == 0 and host in (*LOOPBACKS, "0.0.0.0", "::"):   # we knock on the other family too
        port, guard = free_on_both_loopbacks(host)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
    # create_server sets SO_REUSEADDR, and IPV6_V6ONLY on for an IPv6 socket.
    with holding(guard) as keep:
        return keep(socket.create_server(sockaddr, family=family, backlog=backlog))


def outgoing_address(family: int = socket.AF_INET, destination=None) -> str | None:
    """The local address this machine would send from to reach the network; None if no route.

    connect() on a UDP socket sends nothing: the kernel picks a route and a
    source address and remembers the peer. getsockname() shows that address.
    The default destination is a documentation address (RFC 5737, RFC 3849).
    """
    destination = destination or ("192.0.2.1" if family == socket.AF_INET else "2001:db8::1", 9)
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(destination)
        except OSError:    # ENETUNREACH, EADDRNOTAVAIL, EACCES...: offline, or no route of that family
            return None
        return probe.getsockname()[0]


# --- Unix domain sockets: an address that is a path. ---

def clear_stale(path: str, timeout: float = 1.0) -> bool:
    """Remove the socket file at path if no server answers on it; True if removed.

    Raise FileExistsError if a server answers, if something blocks the probe
    (a full backlog, permissions), or if path is not a socket: never remove those.
    """
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError("there is a file there, not a socket: not removing it")
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass                  # a socket file with nobody behind it: left by a crash
        except FileNotFoundError:
            return False          # removed meanwhile
        except OSError as exc:    # EAGAIN (busy), EACCES...: someone is there, or may be
            raise FileExistsError(f"{describe_error(exc)}: a server may be using it") from None
        else:
            raise FileExistsError("a server is listening there")
    os.unlink(path)
    return True


def listen_unix(path: str, mode: int = 0o600, backlog: int = socket.SOMAXCONN) -> socket.socket:
    """Listen on a Unix socket path: a stale file from a crash is removed, a live server's never.

    bind() creates the file with the umask's permissions; chmod follows at
    once. To leave no moment at all, put the socket in a directory only its
    users can enter (mode 0o700). Two servers starting at the same instant can
    still race; a lock file (fcntl.flock) beside the socket settles that.
    """
    address = unix_address(path)   # a path; or '@name', Linux's abstract namespace: b'\0name'
    if isinstance(address, str):   # (a name in the abstract namespace leaves no file behind)
        clear_stale(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        if isinstance(address, str):
            os.chmod(address, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def release_unix(path: str) -> None:
    """After our listener is closed: remove its file, unless another server has taken the path since."""
    with contextlib.suppress(FileExistsError, PermissionError):
        if not path.startswith("@"):
            clear_stale(path)


def socketpair_threads(message: bytes, log: Transcript | None = None) -> bytes:
    """Echo between two threads over socketpair(): connected from birth, no address, no accept."""
    log = log if log is not None else Transcript()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5.0)
        theirs.settimeout(5.0)

        def echo_then_hang_up():
            handle(theirs, log, "thread")
            theirs.shutdown(socket.SHUT_WR)   # as a server's close() would: our recv() sees EOF

        worker = threading.Thread(target=echo_then_hang_up, name="pair", daemon=True)
        worker.start()
        try:
            return exchange(ours, message, log, "thread")
        finally:
            worker.join(JOIN_TIMEOUT)


def socketpair_child(message: bytes) -> bytes:
    """Talk to a child process over socketpair(): it inherits one end and answers in capitals."""
    ours, theirs = socket.socketpair()
    with ours:
        with theirs:
            child = upper_echo_child(theirs)
        # Our copy of the child's end is closed now: when the child closes its copy, we see EOF.
        with child:
            ours.settimeout(5.0)
            return exchange(ours, message, Transcript(), "child")


def peer_credentials(conn: socket.socket) -> tuple[int, int, int] | None:
    """(pid, uid, gid) of the process at the other end of a Unix socket, as the kernel knows it.

    Linux: SO_PEERCRED, a struct ucred of three ints. macOS and the BSDs have
    getpeereid() (and LOCAL_PEERCRED) in C, but Python's socket module offers
    neither, and OpenBSD's SO_PEERCRED orders the fields differently: None there.
    """
    if not HAVE_PEERCRED:
        return None
    return UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))


# --- The server: echo over any family, a thread per client. ---

def serve(listener: socket.socket, stop, log: Transcript, loopback_only: bool = False) -> None:
    """Echo every client (lesson 02's handle) in a thread of its own, whatever the address family.

    loopback_only: hang up at once on a peer from another machine (for demos
    that must bind every interface, such as a dual-stack ``::``).
    """
    def admit(peer):
        return None if not loopback_only or from_loopback(listener.family, peer) else "not from this machine"

    serve_threads(listener, stop, log, handle, max_clients=MAX_CLIENTS, idle_timeout=IDLE_TIMEOUT,
                  admit=admit, describe=lambda peer: f"over {peer_kind(listener.family, peer)}")


@contextlib.contextmanager
def serving_unix(path: str, log: Transcript | None = None, mode: int = 0o600):
    """The echo server on a Unix socket path, in a background thread; its file removed on exit."""
    try:
        with running_on(listen_unix(path, mode), serve, log, name="unix-server") as server:
            yield server
    finally:
        release_unix(path)


# --- The demo and the command line. ---

def demo() -> int:
    """The lesson's claims, each checked live; a part this machine lacks is skipped, saying why."""
    console = Console(highlight=False)
    console.rule("[bold]Lesson 12: addresses, names and local sockets")
    held: list[bool] = []

    def show(claim: str, ok: bool) -> None:
        held.append(ok)
        console.print(f"{'✓' if ok else '✗'} {claim}")

    with running_on(listen_tcp("127.0.0.1"), serve) as v4:
        show("the tutorial's client ('localhost', AF_INET) reaches an IPv4 server",
             tutorial_client(v4.port) == "Received: Hello, Server!")
        with connect_in_order([(*TCP, closed_port()), (*TCP, v4.address)]) as sock:
            show("a client walks its list: address 1 refuses, address 2 is the server",
                 sock.getpeername() == v4.address)
    if have_ipv6():
        with running_on(listen_tcp("::1"), serve) as v6:
            try:
                refused = not tutorial_client(v6.port)
            except ConnectionRefusedError:
                refused = echo(v6.address, b"6") == b"6"    # refused, though the server is there
            show("the tutorial's client is refused by a server on ::1", refused)
    if have_ipv6() and socket.has_dualstack_ipv6():
        with running_on(listen_tcp("::"), functools.partial(serve, loopback_only=True)) as both:
            replies = [echo((host, both.port), host.encode()) for host in ("127.0.0.1", "::1")]
        show("one dual-stack socket serves IPv4 and IPv6", replies == [b"127.0.0.1", b"::1"])
    else:
        console.print(f"- skipped IPv6 and dual stack: {NO_DUALSTACK if have_ipv6() else NO_IPV6}")
    if HAVE_UNIX:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "echo.sock")
            crash_a_server(path)
            show("a server killed by SIGKILL leaves its socket file behind", os.path.exists(path))
            with serving_unix(path):
                show("the next server removes the stale file and echoes", unix_echo(path, b"hi") == b"hi")
            show("a server that stops cleanly removes its file", not os.path.exists(path))
    else:
        console.print(f"- skipped the Unix socket parts: {NO_UNIX}")
    show("socketpair() between two threads", socketpair_threads(b"pair") == b"pair")
    return 0 if len(held) >= 3 and all(held) else 1


def serve_at(args) -> int:
    """``serve``: listen where the command line says (a name, an address, a path), until Ctrl-C."""
    try:
        listener = listen_unix(args.unix) if args.unix else listen_tcp(args.host, args.port)
    except (OSError, ValueError) as exc:   # an unknown name, EADDRINUSE, no IPv6, a live server's path...
        stderr.print(f"cannot listen on {where(args)}: {why_not(exc, args)}", style="red", markup=False)
        return 1
    try:
        return serve_forever(serve, args, "12_addresses", listener=listener)
    finally:
        if args.unix:
            release_unix(args.unix)


def client(args) -> int:
    """``client MESSAGE``: send it to the server, print the echo."""
    try:
        if args.unix:
            reply = unix_echo(unix_address(args.unix), args.message.encode(), timeout=args.timeout)
        else:
            reply = echo((args.host, args.port), args.message.encode(), timeout=args.timeout)
    except (OSError, ValueError) as exc:
        stderr.print(f"{where(args)}: {why_not(exc, args)}", style="red", markup=False)
        return 1
    sys.stdout.write(reply.decode(errors="replace") + "\n")
    return 0


def main(argv=None) -> int:
    """``python -m lessons.12_addresses [demo | serve | client MESSAGE]``."""
    parser, commands = lesson_parser(__doc__, "12_addresses")
    serve_cmd = commands.add_parser("serve", help="run the echo server in the foreground (Ctrl-C stops it)")
    add_where_args(serve_cmd, PORT, serving=True)      # --host (a name or an address) | --unix PATH
    serve_cmd.add_argument("--quiet", action="store_true", help="log nothing to stderr")
    client_cmd = commands.add_parser("client", help="send a message to a running server, print the echo")
    add_where_args(client_cmd, PORT, serving=False)
    client_cmd.add_argument("message", help="text to send")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        return demo()
    check_where_args(serve_cmd if args.command == "serve" else client_cmd, args, PORT)
    return serve_at(args) if args.command == "serve" else client(args)


if __name__ == "__main__":
    main_guard(main)
