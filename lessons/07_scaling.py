"""A scaling lab: every server design from lessons 02 to 05, measured side by side on your machine.

    python -m lessons.07_scaling --quick                   # all three experiments, small: about 30 s
    python -m lessons.07_scaling                           # the full lab, to 10,000 connections: minutes
    python -m lessons.07_scaling --connections 1 100 --idle 0 1000 --duration 2 --out results/
    python -m lessons.07_scaling --experiments 3 --members 10 100 1000    # only the chat rooms
    python -m lessons.07_scaling serve [--port 9907] [--idle-timeout 60]   # a thread per client
    python -m lessons.07_scaling client 'hello'

Each server runs in a process of its own, so that its CPU time and memory
can be read apart from the load generator's. Three experiments:

    1. every connection busy     N connections, one 1 KiB message in flight on
                                 each: requests/s, p50 and p99 round trip,
                                 server CPU per request, memory per connection
    2. few busy, many idle       10 busy connections while N idle ones are held
                                 open: what does holding N cost the busy ten?
    3. chat fan-out              lesson 03's room (a thread per client) and
                                 lesson 08's (asyncio) with N members, ten of
                                 them talking: lines delivered per second, each
                                 checked for order, and memory per idle member

Every reply is checked byte for byte, and the idle connections must be left
open. A design that falls over (an iterative server with many clients,
select() past FD_SETSIZE, threads that cannot keep up) is reported with the
reason, and the lab goes on.

The load comes from benchmarks/loadgen.c where a C compiler is present (else
from the Python generator in lessons/kit/loadgen.py), on a core of its own
where the platform allows. The generator has a ceiling too: the lab measures
it in the same run, as its rate against the fastest echo server available
(a C epoll echo server when it builds), and marks every result within 10% of
it: there the lab may be measuring the generator, not the server.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import pathlib
import signal
import socket
import sys
import threading
import time

from lessons.kit import echo
from lessons.kit.cli import (client_command, lesson_parser, main_guard, run_client, seconds, serve_command,
                             serve_forever, whole_number)
from lessons.kit.echoservers import echo_servers
from lessons.kit.generators import load_generator
from lessons.kit.lab import (BUSY_CLIENTS, CHAT_SENDERS, Point, load_results, mark_ceilings,  # noqa: F401
                             measure, os_loadavg, run_chat, run_lab)
from lessons.kit.labreport import lab_figures, lab_tables, write_results  # noqa: F401
from lessons.kit.processes import ROOT, machine
from lessons.kit.server import JOIN_TIMEOUT, accept_until, fd_limit, raise_fd_limit
from lessons.kit.transcript import ACCEPT, CLOSE, ERROR, SERVER, Transcript

TITLE = "Scaling lab"
BUSY_SWEEP, IDLE_SWEEP = [1, 10, 100, 1000, 10_000], [0, 100, 1000, 10_000]
QUICK_BUSY, QUICK_IDLE = [10, 100], [0, 1000]
IDLE_DESIGNS = ["04 polling", "05 select()", "05 selectors (default)", "07 thread per client", "asyncio Protocol"]
YARDSTICKS = ["C epoll echo", "05 selectors --fast", "asyncio Protocol"]   # fastest first: the ceiling
CHAT_SWEEP, QUICK_CHAT = [10, 100, 1000], [10, 100]
# Experiment 3's rooms, as a learner starts them; quiet (a log nobody reads fills its pipe and stops
# the room), and no idle timeout (the listeners never speak). The lab adds --max-members N.
CHAT_ROOMS = {name: ("-m", f"lessons.{lesson}", "serve", "--quiet", "--idle-timeout", "0")
              for name, lesson in [("03 thread per client", "03_chat"), ("08 asyncio", "08_asyncio")]}


# --- This lesson's own server: lesson 03's model, a thread per client, for echo. ---

def serve(listener: socket.socket, stop, log: Transcript, idle_timeout: float | None = 60.0) -> None:
    """Echo each client in a thread of its own (lesson 02's handle, lesson 03's model).

    A client silent for ``idle_timeout`` seconds is dropped (None: never), and
    running out of descriptors pauses accepting instead of ending the server.
    """
    threads: list[threading.Thread] = []
    prune_at = 64
    for number, (conn, _) in enumerate(accept_until(listener, stop, log, idle_timeout), 1):
        who = f"client {number}"
        if len(threads) >= prune_at:   # forget finished threads now and then: every time would be O(n^2)
            threads = [t for t in threads if t.is_alive()]
            prune_at = max(64, 2 * len(threads))
        thread = threading.Thread(target=_echo_one, args=(conn, log, who), daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:      # "can't start new thread": refuse this one, keep the rest
            log.record(SERVER, ERROR, who, detail=f"refused: {exc}")
            conn.close()
            continue
        log.record(SERVER, ACCEPT, who)
        threads.append(thread)
    for thread in threads:
        thread.join(JOIN_TIMEOUT)


def _echo_one(conn: socket.socket, log: Transcript, who: str) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            echo.handle(conn, log, who)
        except socket.timeout:
            log.record(SERVER, ERROR, who, detail=f"no progress for {conn.gettimeout():g} s: dropped")
        except OSError as exc:
            log.record(SERVER, ERROR, who, detail=type(exc).__name__)
    log.record(SERVER, CLOSE, who)


# --- The designs under test: the kit's one list (one selectors backend is enough here). ---

ARCHITECTURES = {s.name: s for s in echo_servers() if not s.name.startswith("05 selectors/")}


# --- Two small experiments for the notebook: Nagle's algorithm, and recv sizes. ---

def nagle_experiment(nodelay: bool, rounds: int = 20) -> float:
    """Median seconds for a request sent in two writes, then a short reply.

    With Nagle's algorithm on (TCP_NODELAY off), the second small write waits
    until the first is acknowledged, while the server, still waiting for the
    rest of the request, delays its ACK (about 40 ms on Linux): write, write,
    read is the pattern that meets both delays.
    """
    from lessons.kit.adversary import connected_pair
    from lessons.kit.stream import recv_exactly

    times = []
    with connected_pair() as (client, server):
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if nodelay else 0)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def answer():
            with contextlib.suppress(EOFError, OSError):
                for _ in range(rounds):
                    recv_exactly(server, 200)
                    server.sendall(b"ok")

        worker = threading.Thread(target=answer, daemon=True)
        worker.start()
        for _ in range(rounds):
            started = time.perf_counter()
            client.sendall(b"h" * 100)   # a header...
            client.sendall(b"b" * 100)   # ...and a body, in two writes
            recv_exactly(client, 2)
            times.append(time.perf_counter() - started)
        worker.join(5)
    return sorted(times)[len(times) // 2]


def recv_size_experiment(recv_size: int, total: int = 16 * 1024 * 1024) -> float:
    """Megabytes per second read from a socket, asking recv() for recv_size bytes at a time."""
    from lessons.kit.adversary import connected_pair

    with connected_pair() as (reader, writer):
        feeder = threading.Thread(target=writer.sendall, args=(b"x" * total,), daemon=True)
        started = time.perf_counter()
        feeder.start()
        got = 0
        while got < total:
            got += len(reader.recv(recv_size))
        elapsed = time.perf_counter() - started
        feeder.join(5)
    return total / elapsed / 1e6


# --- The demo: the lab, from the command line. ---

def demo(quick: bool = False, connections: list[int] | None = None, idle: list[int] | None = None,
         size: int = 1024, duration: float | None = None, out: pathlib.Path = pathlib.Path("scaling-results"),
         only: list[str] | None = None, python_loadgen: bool = False, members: list[int] | None = None,
         experiments: list[int] | None = None) -> int:
    """Run the lab, print its tables, write its files; exit 1 if a server sent a wrong reply."""
    from rich.console import Console

    console = Console()
    try:   # find out now, not after minutes of measuring, that the results cannot be written
        out.mkdir(parents=True, exist_ok=True)
        (out / ".writable").write_text("")
        (out / ".writable").unlink()
    except OSError as exc:
        console.print(f"[red]cannot write results to {out}: {exc.strerror or exc}[/]")
        return 2
    def picked(names: dict) -> dict:
        return {n: s for n, s in names.items() if not only or any(o in n for o in only)}

    experiments = experiments or [1, 2, 3]
    chosen = picked(ARCHITECTURES) if {1, 2} & set(experiments) else {}
    rooms = picked(CHAT_ROOMS) if 3 in experiments else {}
    duration = duration or (0.3 if quick else 3.0)
    sweep = (connections or (QUICK_BUSY if quick else BUSY_SWEEP)) if 1 in experiments else []
    idle_sweep = (idle or (QUICK_IDLE if quick else IDLE_SWEEP)) if 2 in experiments else []
    info = machine() | {"load_average_at_start": [round(x, 2) for x in os_loadavg()],
                        "experiments": experiments, "duration_s": duration, "message_bytes": size,
                        "command": " ".join(["python -m lessons.07_scaling", *sys.argv[1:]]),
                        "date": datetime.datetime.now().isoformat(timespec="minutes")}
    console.print(f"[bold]Scaling lab[/]: {len(chosen)} servers, {len(rooms)} chat rooms, {duration:g} s a point, "
                  f"on {info['cpu']} ({info['cores']} cores), Python {info['python']}, load average "
                  f"{info['load_average_at_start'][0]:g}")
    points = []
    if chosen:
        generator = load_generator(prefer_c=not python_loadgen)
        yardstick = next(n for n in YARDSTICKS if n in ARCHITECTURES)
        chosen.setdefault(yardstick, ARCHITECTURES[yardstick])
        info |= {"load_generator": generator.name, "pinned": bool(generator.cpus), "yardstick": yardstick}
        console.print(f"load from {generator.name}, {size:,}-byte messages; "
                      + ("server and load generator pinned to separate cores"
                         if generator.cpus else "no CPU pinning on this platform"))
        if "asyncio Protocol + uvloop" not in ARCHITECTURES:
            console.print("uvloop is not installed (it is optional, and not on Windows): its row is left out")
        points = run_lab(chosen, sweep, size=size, duration=duration, hold=0.2 if quick else 1.0,
                         warm_up=0.1 if quick else 0.5, idle_sweep=idle_sweep, generator=generator,
                         idle_designs=IDLE_DESIGNS, fresh=not quick, yardstick=yardstick)
    if rooms:   # the lab's own process is the client here: one thread reads every member's socket
        info.setdefault("load_generator", "the lab's chat client (lessons/kit/fanout.py)")
        info |= {"chat_rooms": list(rooms), "chat_senders": CHAT_SENDERS}
        points += run_chat(rooms, members or (QUICK_CHAT if quick else CHAT_SWEEP), duration=duration)
    info["load_average_at_end"] = [round(x, 2) for x in os_loadavg()]
    for renderable in lab_tables(points, info, width=console.width):
        console.print(renderable)
    paths = write_results(points, out, info)
    console.print(f"every column of every point: {paths['table']}")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    wrong = [p for p in points if p.wrong_replies]
    for p in wrong:
        console.print(f"[red]{p.architecture} sent {p.wrong_replies:,} wrong replies[/]")
    return 1 if wrong else 0


# --- The command line. ---

def add_lab_args(parser) -> None:
    """The lab's options, each with a sane range."""
    parser.add_argument("--quick", action="store_true", help="a small lab (about 30 s)")
    parser.add_argument("--experiments", type=int, choices=[1, 2, 3], nargs="+", metavar="N",
                        help="run only these: 1 every connection busy, 2 few busy and many idle, "
                             "3 chat fan-out (default: all three)")
    parser.add_argument("--connections", type=whole_number(1, 20_000, "--connections"), nargs="+", metavar="N",
                        help=f"experiment 1's sweep (default {' '.join(map(str, BUSY_SWEEP))})")
    parser.add_argument("--idle", type=whole_number(0, 20_000, "--idle"), nargs="+", metavar="N",
                        help=f"experiment 2's idle connections (default {' '.join(map(str, IDLE_SWEEP))})")
    parser.add_argument("--members", type=whole_number(2, 10_000, "--members"), nargs="+", metavar="N",
                        help=f"experiment 3's room sizes (default {' '.join(map(str, CHAT_SWEEP))})")
    parser.add_argument("--size", type=whole_number(16, 1 << 20, "--size"), default=1024,
                        help="message size in bytes, 16 to 1,048,576 (default %(default)s)")
    parser.add_argument("--duration", type=seconds(0, 600), default=None,
                        help="seconds of load per point (at most 600; default 3, or 0.3 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("scaling-results"),
                        help="folder for the results, tables and figures (default %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="measure only servers and chat rooms whose name contains these")
    parser.add_argument("--python-loadgen", action="store_true",
                        help="use the Python load generator even where loadgen.c builds")


def check_lab_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuse, before measuring anything, what the lab could not finish."""
    if args.only and not any(o in n for n in [*ARCHITECTURES, *CHAT_ROOMS] for o in args.only):
        parser.error(f"--only {' '.join(args.only)} matches no server; the servers: {', '.join(ARCHITECTURES)}; "
                     f"the chat rooms: {', '.join(CHAT_ROOMS)}")
    most = max(args.connections or BUSY_SWEEP)
    if most * args.size > 256 << 20:
        parser.error(f"{most:,} connections × {args.size:,} bytes in flight is more than 256 MiB: "
                     "choose fewer or smaller")
    wanted = max(max(args.connections or BUSY_SWEEP), BUSY_CLIENTS + max(args.idle or IDLE_SWEEP),
                 max(args.members or CHAT_SWEEP)) + 64
    raise_fd_limit(2 * wanted + 1024)
    if (limit := fd_limit()) is not None and limit < wanted:
        parser.error(f"{wanted:,} connections need as many open files, "
                     f"and this system allows {limit:,} (ulimit -n)")


@contextlib.contextmanager
def stop_on_sigterm():
    """SIGTERM (from kill, timeout or CI) unwinds like Ctrl-C, so every child server is stopped."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    parser, commands = lesson_parser(__doc__, "07_scaling")
    for p in (parser, commands.choices["demo"]):   # the lab's options, with or without the word "demo"
        add_lab_args(p)
    serve_cmd = serve_command(commands, port=9907)
    serve_cmd.add_argument("--idle-timeout", type=seconds(0, 86400, zero_means="never"), default=60.0,
                           metavar="SECONDS",
                           help="drop a client that sends or reads nothing this long "
                                "(0: never; default %(default)g)")
    echo.add_client_args(client_command(commands, port=9907))
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_forever(functools.partial(serve, idle_timeout=args.idle_timeout or None), args, "07_scaling")
    if args.command == "client":
        return run_client(echo.client, args)
    check_lab_args(parser, args)
    with stop_on_sigterm():
        return demo(args.quick, args.connections, args.idle, args.size, args.duration, args.out, args.only,
                    args.python_loadgen, args.members, args.experiments)


if __name__ == "__main__":
    main_guard(main)
