"""The command line that every lesson module shares.

    python -m lessons.NN_name                 # demo: self-contained, exits 0
    python -m lessons.NN_name serve [--host H] [--port P]
    python -m lessons.NN_name client ...      # talks to a running server

``serve`` prints ``listening on HOST:PORT`` as its first line, flushed at once so
a script reading the pipe learns the port (use ``--port 0`` for a free one).
Ctrl-C or SIGTERM stops it cleanly with exit status 0.

The default host is 127.0.0.1: only programs on this machine can connect.
``--host 0.0.0.0`` (or ``::``) listens on every interface, so anyone who can
reach the machine can connect; do that only on a network you trust.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from typing import Callable, Optional, Sequence

from rich.console import Console

from .server import JOIN_TIMEOUT, Stopper, bound_socket
from .transcript import ACCEPT, CLOSE, ERROR, NOTE, Event, Transcript

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 9999

# Serve mode logs to stderr so stdout carries only the "listening on" line
# (and nothing else a script might have to parse).
stderr = Console(stderr=True, highlight=False)


def add_address_args(parser: argparse.ArgumentParser, port: int = DEFAULT_PORT, transport: str = "tcp") -> None:
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to use (default %(default)s: this machine only)")
    parser.add_argument("--port", type=port_number, default=port,
                        help=f"{transport.upper()} port, 0 to pick a free one (default %(default)s)")
    parser.add_argument("--timeout", type=positive_seconds, default=5.0,
                        help="seconds to wait on the network before giving up (default %(default)s)")


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def serve_forever(serve: Callable, host: str, port: int, name: str, quiet: bool = False,
                  transport: str = "tcp") -> int:
    """Run ``serve`` in the foreground until Ctrl-C or SIGTERM."""
    try:
        listener = bound_socket(transport, host, port, family=_family(host))
    except OSError as exc:
        stderr.print(f"[red]cannot listen on {host}:{port}: {exc.strerror or exc}[/]")
        return 1
    stop = Stopper()

    def on_signal(signum, frame):
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # In the foreground, log who comes and goes, not every recv and send: printing
    # each one would slow a busy server down to the speed of the terminal.
    log = Transcript(maxlen=1000, live=None if quiet else _log_live,
                     kinds=set() if quiet else {ACCEPT, CLOSE, ERROR, NOTE})
    bound = listener.getsockname()
    print(f"listening on {_format_address(bound)}", flush=True)
    # The server runs in a worker thread so that the main thread is free to take
    # signals at any moment, whatever the server is blocked on.
    failure: list = []

    def target():
        try:
            serve(listener, stop, log)
        except BaseException as exc:
            failure.append(exc)
            stop.set()

    worker = threading.Thread(target=target, name=name, daemon=True)
    worker.start()
    try:
        while not stop.wait(0.2):
            pass
    finally:
        stop.set()
        worker.join(JOIN_TIMEOUT)
        listener.close()
        if not worker.is_alive():
            stop.close_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        stderr.print(f"[red]server failed: {failure[0]!r}[/]")
        return 1
    stderr.print("[dim]stopped[/]")
    return 0


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _format_address(address: tuple) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_live(event: Event) -> None:
    who = f"{event.who}: " if event.who and event.kind != "accept" else ""
    stderr.print(f"[dim]{who}{event.describe()}[/]")


def run_lesson(argv: Optional[Sequence[str]], *, doc: str, name: str,
               demo: Callable[[], int], serve: Callable,
               add_client_args: Callable[[argparse.ArgumentParser], None],
               client: Callable[[argparse.Namespace], int],
               port: int = DEFAULT_PORT,
               add_serve_args: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               serve_from_args: Optional[Callable[[argparse.Namespace], Callable]] = None,
               transport: str = "tcp",
               add_demo_args: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """Parse the shared command line and run demo, serve or client.

    A lesson whose server takes options adds them with ``add_serve_args`` and
    builds its serve function from them with ``serve_from_args``.
    """
    parser = argparse.ArgumentParser(prog=f"python -m lessons.{name}",
                                     description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="With no command, runs the demo.")
    commands = parser.add_subparsers(dest="command", metavar="{demo,serve,client}")
    demo_parser = commands.add_parser("demo", help="run a self-contained demonstration (the default)")
    if add_demo_args:   # a demo with options takes them with or without the word "demo"
        add_demo_args(parser)
        add_demo_args(demo_parser)
    serve_parser = commands.add_parser("serve", help="run the server in the foreground")
    add_address_args(serve_parser, port, transport)
    serve_parser.add_argument("--quiet", action="store_true",
                              help="do not log connections to stderr (for benchmarks)")
    if add_serve_args:
        add_serve_args(serve_parser)
    client_parser = commands.add_parser("client", help="talk to a running server")
    add_address_args(client_parser, port, transport)
    add_client_args(client_parser)
    args = parser.parse_args(argv)

    if args.command in (None, "demo"):
        return demo(args) if add_demo_args else demo()
    if args.command == "serve":
        return serve_forever(serve_from_args(args) if serve_from_args else serve, args.host, args.port, name,
                             quiet=args.quiet, transport=transport)
    try:
        return client(args)
    except ConnectionRefusedError:
        stderr.print(f"[red]connection refused: is a server listening on {args.host}:{args.port}?[/]")
    except socket.timeout:
        stderr.print(f"[red]timed out after {args.timeout:g} s waiting for {args.host}:{args.port}[/]")
    except (ConnectionError, OSError) as exc:
        stderr.print(f"[red]network error talking to {args.host}:{args.port}: {exc}[/]")
    except KeyboardInterrupt:
        return 130
    return 1


def main_guard(main: Callable[[], int]) -> None:
    """``sys.exit(main())`` without a traceback on Ctrl-C."""
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
