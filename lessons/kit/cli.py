"""The pieces of every lesson's command line: demo, serve and client.

    python -m lessons.NN_name                 # demo: self-contained, exits 0
    python -m lessons.NN_name serve [--host H] [--port P]
    python -m lessons.NN_name client ...      # talks to a running server

Each lesson builds its parser in plain sight in its ``main()``, from these::

    parser, commands = lesson_parser(__doc__, "02_echo")
    serve_cmd = serve_command(commands, port=9902)
    client_cmd = client_command(commands, port=9902)
    client_cmd.add_argument("message", help="text to send")
    args = parser.parse_args(argv)

``serve`` prints ``listening on HOST:PORT`` as its first line, flushed at once
so a script reading the pipe learns the port (use ``--port 0`` for a free one).
Ctrl-C or SIGTERM stops it cleanly with exit status 0.

The default host is 127.0.0.1: only programs on this machine can connect.
``--host 0.0.0.0`` (or ``::``) listens on every interface, so anyone who can
reach the machine can connect; do that only on a network you trust.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import textwrap
from typing import Callable, Optional, Sequence

from rich.console import Console
from rich.text import Text

from .server import BackgroundServer, bound_socket, fd_limit, raise_fd_limit
from .transcript import ACCEPT, CLOSE, ERROR, NOTE, Event, Transcript

DEFAULT_HOST = "127.0.0.1"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)   # Ctrl-C, and what kill, timeout and CI send


# --- A server's own output: never a reason for it to stop. ---

class _Stderr(Console):
    """rich's Console on stderr, except when stderr's reader has gone: rich then exits
    the process (SystemExit(1), from whichever thread was logging), which would end a
    server because nobody reads its log. This one falls silent instead."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _reader_gone(sys.stderr, 2)


# Serve mode logs to stderr so stdout carries only the "listening on" line
# (and nothing else a script might have to parse).
stderr = _Stderr(stderr=True, highlight=False)

def _reader_gone(stream, fd: int) -> None:
    """Whoever read this stream (a pipe, a terminal) has gone: point its descriptor at
    /dev/null, so that neither a later line nor the interpreter's last flush fails again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):   # not a real file (a notebook's stream)
        pass
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def say(text: str) -> None:
    """Print a line to stdout at once (``listening on ...``). If nobody reads stdout any more
    (``serve | head -0``, a closed terminal), the server goes on without it."""
    try:
        print(text, flush=True)
    except BlockingIOError:   # a non-blocking terminal, full for now: lose this line only
        pass
    except OSError:           # EPIPE (the pipe's reader exited), EIO (the terminal closed)
        _reader_gone(sys.stdout, 1)


def log_line(text, **options) -> None:
    """Print a line of the server's log to stderr. If nobody reads stderr any more
    (``serve 2>&1 | head -1``, a closed terminal), the server goes on, unlogged:
    a log line that cannot be written must never cost a client its connection."""
    try:
        stderr.print(text, **options)
    except BlockingIOError:
        pass
    except OSError:           # EIO: the terminal has gone (a broken pipe: on_broken_pipe)
        stderr.quiet = True
        _reader_gone(sys.stderr, 2)


# --- Argument types: each refuses nonsense with a one-line message. ---

def port_number(text: str) -> int:
    """A TCP or UDP port, 0 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def host_name(text: str) -> str:
    """A host name or address; never empty (an unset shell variable must not mean 'every interface').
    An IPv6 address may be in brackets, as ``listening on [::1]:9902`` shows it."""
    host = text.strip()
    if not host:
        raise argparse.ArgumentTypeError("empty host: give an address such as 127.0.0.1 "
                                         "(or 0.0.0.0 to listen on every interface)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:   # what getaddrinfo() does first: a part over 63 characters, '..', a byte that is not text
        host.encode("idna")
    except UnicodeError:
        shown = host if len(host) <= 30 else host[:30] + "..."
        raise argparse.ArgumentTypeError(f"not a host name or address: {shown!r}") from None
    return host


def seconds(minimum: float = 0.0, maximum: float = 3600.0, zero_means: Optional[str] = None):
    """An argument type for a finite number of seconds in (minimum, maximum];
    with ``zero_means``, 0 is allowed too and means that (e.g. "no timeout")."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if zero_means is not None and value == 0:
            return 0.0
        if not math.isfinite(value) or not minimum < value <= maximum:
            low = f"0 ({zero_means}) or more than {minimum:g}" if zero_means else f"more than {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {low} and at most {maximum:g} seconds, not {text}")
        return value
    return parse


def whole_number(minimum: int, maximum: int, what: str = "a number"):
    """An argument type for an integer in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{what} must be between {minimum:,} and {maximum:,}, not {value:,}")
        return value
    return parse


# --- The parser: lesson_parser(), then a serve and a client command. ---

def lesson_parser(doc: str, name: str) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The parser of ``python -m lessons.NAME``, and the place to add its commands.
    With no command, a lesson runs its demo."""
    width = max(shutil.get_terminal_size().columns - 2, 40)   # as argparse wraps the rest
    concept = textwrap.fill(doc.strip().splitlines()[0], width)  # (the raw formatter would not)
    parser = argparse.ArgumentParser(prog=f"python -m lessons.{name}", description=concept,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="With no command, runs the demo.")
    commands = parser.add_subparsers(dest="command", metavar="{demo,serve,client}")
    commands.add_parser("demo", help="run a self-contained demonstration (the default)")
    return parser, commands


def serve_command(commands, port: int, transport: str = "tcp") -> argparse.ArgumentParser:
    """``serve [--host H] [--port P] [--quiet]``: run the server in the foreground."""
    cmd = commands.add_parser("serve", help="run the server in the foreground (Ctrl-C stops it)")
    cmd.add_argument("--host", type=host_name, default=DEFAULT_HOST,
                     help="address to listen on (default %(default)s: this machine only)")
    cmd.add_argument("--port", type=port_number, default=port,
                     help=f"{transport.upper()} port to listen on, 0 to pick a free one (default %(default)s)")
    cmd.add_argument("--quiet", action="store_true", help="log nothing to stderr (for benchmarks)")
    return cmd


def client_command(commands, port: int, transport: str = "tcp", timeout: float = 5.0,
                   max_timeout: float = 3600.0, help: str = "talk to a running server") -> argparse.ArgumentParser:
    """``client [--host H] [--port P] [--timeout S] ...``: talk to a running server."""
    cmd = commands.add_parser("client", help=help)
    cmd.add_argument("--host", type=host_name, default=DEFAULT_HOST,
                     help="the server's address (default %(default)s)")
    cmd.add_argument("--port", type=port_number, default=port,
                     help=f"the server's {transport.upper()} port (default %(default)s)")
    cmd.add_argument("--timeout", type=seconds(0, max_timeout), default=timeout,
                     help=f"seconds to wait for the server before giving up (at most {max_timeout:g}, "
                          "default %(default)s)")
    return cmd


# --- Running the commands ---

def need_open_files(parser: argparse.ArgumentParser, need: int, what: str) -> None:
    """Raise this process's limit on open files to ``need`` (every socket is one); if the
    system allows fewer, stop with a usage error: "WHAT needs N open files, and ..."."""
    raise_fd_limit(need)
    if (limit := fd_limit()) is not None and limit < need:
        parser.error(f"{what} needs {need:,} open files, and this system allows {limit:,} (ulimit -n)")


def serve_forever(serve: Callable, args: argparse.Namespace, name: str = "server",
                  transport: str = "tcp", listener: Optional[socket.socket] = None) -> int:
    """Run ``serve`` in the foreground until Ctrl-C or SIGTERM, on ``args.host``/``args.port``
    (or on ``listener``, a socket the lesson bound itself: a Unix path, say)."""
    if listener is None:
        try:
            listener = bound_socket(transport, args.host, args.port)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            log_line(Text(f"cannot listen on {describe_address((args.host, args.port))}: {reason}",
                          style="red"))
            return 1
    quiet = getattr(args, "quiet", False)
    # In the foreground, log who comes and goes, not every recv and send: printing
    # each one would slow a busy server down to the speed of the terminal.
    log = Transcript(maxlen=1000, live=None if quiet else _log_live,
                     kinds=set() if quiet else {ACCEPT, CLOSE, ERROR, NOTE})
    server = BackgroundServer(serve, listener, log, name, transport)
    signalled = []

    def stop(signum, frame) -> None:
        # Only note it: a handler runs between two bytecodes of this thread, which may be
        # inside server.stop.wait() holding the Event's lock, and set() would wait for that
        # lock for ever (one run in a few dozen, with Ctrl-C pressed again and again).
        signalled.append(signum)
        ignore_stop_signals()          # asked once: Ctrl-C twice must not end it half-way

    # The server runs in its own thread so that this main thread is free to take
    # signals at any moment, whatever the server is blocked on.
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        say(f"listening on {describe_address(server.address, listener.family)}")
        server.start()
        while not signalled and not server.stop.wait(0.1):
            pass
        server.shutdown(reraise=False)
    finally:
        if not signalled:              # it ended on its own (it failed): put back what was there
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if server.errors:
        log_line(Text(f"server failed: {type(server.errors[0]).__name__}: {server.errors[0]}", style="red"))
        return 1
    log_line("[dim]stopped[/]")
    return 0


def ignore_stop_signals() -> None:
    """Once a server has been asked to stop, the process is on its way out: ignore a second
    Ctrl-C or SIGTERM from here to its exit (the kernel drops them: SIG_IGN, unlike a Python
    handler, outlasts the interpreter's shutdown), or it could end half-way through closing,
    with a KeyboardInterrupt or a status of -15 instead of 0."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_client(client: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a client command; turn network errors into one clear line and exit status 1."""
    where = describe_address((args.host, args.port))
    try:
        return client(args)
    except ConnectionRefusedError:
        stderr.print(f"[red]connection refused: is a server listening on {where}?[/]")
    except socket.timeout:
        stderr.print(f"[red]timed out after {args.timeout:g} s waiting for {where}[/]")
    except socket.gaierror as exc:
        stderr.print(f"[red]cannot find {args.host!r}: {exc.strerror or exc}[/]")
    except (ConnectionError, OSError) as exc:
        stderr.print(f"[red]network error talking to {where}: {exc.strerror or exc}[/]")
    except KeyboardInterrupt:
        return 130
    return 1


def describe_address(address, family: int = socket.AF_INET) -> str:
    """An address as a person writes it: ``127.0.0.1:9902``, ``[::1]:9902``, ``unix:/tmp/s``, ``unix:@name``."""
    if family not in (socket.AF_INET, socket.AF_INET6):
        if isinstance(address, bytes):                      # Linux's abstract namespace
            return "unix:@" + address[1:].decode(errors="replace")
        return f"unix:{address or '(unnamed)'}"
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _log_live(event: Event) -> None:
    # A Text, not markup: a client's name may contain "[bold]".
    who = f"{event.who}: " if event.who and event.kind != "accept" else ""
    log_line(Text(who + event.describe(), style="red" if event.kind == ERROR else "dim"), soft_wrap=True)


def run_lesson(argv: Optional[Sequence[str]], *, doc: str, name: str,
               demo: Callable[[], int], serve: Callable,
               add_client_args: Callable[[argparse.ArgumentParser], None],
               client: Callable[[argparse.Namespace], int],
               port: int,
               add_serve_args: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               serve_from_args: Optional[Callable[[argparse.Namespace], Callable]] = None,
               transport: str = "tcp",
               add_demo_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """The whole command line in one call, for lessons that need nothing special."""
    parser, commands = lesson_parser(doc, name)
    if add_demo_args:   # a demo with options takes them with or without the word "demo"
        add_demo_args(parser)
        add_demo_args(commands.choices["demo"])
    serve_cmd = serve_command(commands, port, transport)
    if add_serve_args:
        add_serve_args(serve_cmd)
    add_client_args(client_command(commands, port, transport))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_forever(serve_from_args(args) if serve_from_args else serve, args, name, transport)
    if args.command == "client":
        return run_client(client, args)
    return demo(args) if add_demo_args else demo()


def main_guard(main: Callable[[], int]) -> None:
    """``sys.exit(main())`` without a traceback on Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
