"""A scaling lab: every server design from lessons 02 to 05, measured side by side on your machine.

    python -m lessons.07_scaling --quick                  # a small sweep, under 20 s
    python -m lessons.07_scaling                          # the full sweep, a few minutes
    python -m lessons.07_scaling --connections 1 10 100 --size 1024 --duration 2 --out results/
    python -m lessons.07_scaling serve [--port 9907]      # this lesson's own server: a thread per client

Each server runs in a process of its own, so its CPU time and memory can be
read apart from the load generator's. For each number of connections the lab
opens them all, holds them idle for a moment (to read the server's memory per
idle connection), then keeps one message in flight on every connection for a
while, checking each reply byte for byte:

    connections ──► server process ──► requests/s, p50 and p99 round trip,
                                       server CPU seconds, RSS, RSS per idle
                                       connection, every reply correct?

A design that falls over (an iterative server with many clients, select()
past FD_SETSIZE, threads that cannot start) is reported as such, with the
reason, and the lab goes on. Results go to a table, CSV and JSON files, and a
figure: throughput against connections, and memory per connection.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import pathlib
import socket
import sys
import threading
import time
from dataclasses import dataclass

from lessons.kit import echo
from lessons.kit.cli import main_guard, run_lesson
from lessons.kit.echoservers import echo_servers
from lessons.kit.loadgen import run_load
from lessons.kit.processes import ServerProcess, machine
from lessons.kit.server import JOIN_TIMEOUT, accept_until, raise_fd_limit
from lessons.kit.transcript import ACCEPT, CLOSE, ERROR, SERVER, Transcript

TITLE = "Scaling lab"
ROOT = pathlib.Path(__file__).resolve().parent.parent
FULL_SWEEP = [1, 10, 100, 1000, 10_000]
QUICK_SWEEP = [1, 10, 100]


# --- This lesson's own server: lesson 03's model, a thread per client, for echo. ---

def serve(listener: socket.socket, stop, log: Transcript) -> None:
    """Echo each client in a thread of its own (lesson 02's handle, lesson 03's model)."""
    threads: list[threading.Thread] = []
    for number, (conn, _) in enumerate(accept_until(listener, stop), 1):
        who = f"client {number}"
        threads = [t for t in threads if t.is_alive()]
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
        except OSError as exc:
            log.record(SERVER, ERROR, who, detail=type(exc).__name__)
    log.record(SERVER, CLOSE, who)


# --- The designs under test, each started as its own process. ---

# Every design in its own process, from the kit's one list of echo servers; one
# selectors backend is enough here (the default: epoll on Linux, kqueue on macOS).
ARCHITECTURES = {server.name: list(server.argv) for server in echo_servers()
                 if not server.name.startswith("05 selectors/")}


# --- One measurement, and the sweep. ---

@dataclass
class Point:
    architecture: str
    connections: int
    requests_per_second: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_seconds: float = 0.0
    server_rss_kib: int = 0
    rss_per_idle_connection: float = float("nan")   # bytes
    correct: bool = False
    note: str = ""


def measure(architecture: str, argv: list[str], connections: int, size: int, duration: float,
            hold: float, warm_up: float = 0.5) -> Point:
    point = Point(architecture, connections)
    try:
        server = ServerProcess(argv)
    except RuntimeError as exc:
        point.note = str(exc)
        return point
    try:
        # Warm up on connections of its own, then close them: a fresh asyncio server has
        # been seen to run at a quarter of its speed until its first connections close
        # (see benchmarks/RESULTS.md), and a first run should not decide the comparison.
        run_load(server.address, min(connections, 10), size=size, duration=warm_up, stall_timeout=warm_up)
        base_rss, idle = server.rss_kib(), {}

        def opened():
            idle["rss"], idle["cpu"] = server.rss_kib(), server.cpu_seconds()

        result = run_load(server.address, connections, size=size, duration=duration, idle_hold=hold,
                          connect_timeout=30, stall_timeout=max(0.5, duration), on_opened=opened)
        point.correct = result.correct
        point.requests_per_second = result.requests_per_second
        point.p50_ms, point.p99_ms = result.latency(0.5) * 1e3, result.latency(0.99) * 1e3
        point.server_cpu_seconds = server.cpu_seconds() - idle.get("cpu", 0.0)
        point.server_rss_kib = idle.get("rss", 0)
        if "rss" in idle and connections:
            point.rss_per_idle_connection = (idle["rss"] - base_rss) * 1024 / connections
        problems = []
        if not server.alive():
            problems.append(f"server exited ({server.proc.returncode})")
        if result.errors:
            problems.append(f"{result.errors:,} connections closed or reset by the server")
        if result.opened and result.answered < result.opened:
            problems.append(f"only {result.answered:,} of {result.opened:,} connections were answered")
        elif result.failure:
            problems.append(result.failure)
        if result.wrong_replies:
            problems.append(f"{result.wrong_replies:,} wrong replies")
        point.note = "; ".join(problems)
    finally:
        server.stop()
    return point


def run_lab(architectures: dict, sweep: list[int], size: int = 1024, duration: float = 2.0,
            hold: float = 1.0, progress: bool = True, warm_up: float = 0.5) -> list[Point]:
    """Measure every architecture at every number of connections; never stop on a failure."""
    raise_fd_limit(2 * max(sweep) + 1024)
    points: list[Point] = []
    bar = _progress(progress)
    with bar:
        task = bar.add_task("starting", total=len(architectures) * len(sweep))
        for name, argv in architectures.items():
            fell_over = None
            for connections in sweep:
                bar.update(task, description=f"{name}, {connections:,} connections")
                if fell_over is not None:
                    points.append(Point(name, connections, note=f"not run: fell over at {fell_over:,}"))
                else:
                    point = measure(name, argv, connections, size, duration, hold, warm_up)
                    points.append(point)
                    if not point.correct:
                        fell_over = connections
                bar.advance(task)
    return points


def _progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description:40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not show, transient=True)


# --- Results: a table, files, a figure. ---

def table(points: list[Point], title: str = "scaling lab"):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=title, title_justify="left")
    t.add_column("server", no_wrap=True)
    for column in ("conns", "req/s", "p50 ms", "p99 ms", "CPU s", "RSS KiB", "B/idle conn"):
        t.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    t.add_column("correct")
    for p in points:
        ran = p.requests_per_second > 0
        t.add_row(p.architecture, f"{p.connections:,}",
                  f"{p.requests_per_second:,.0f}" if ran else "—",
                  f"{p.p50_ms:.2f}" if ran else "—", f"{p.p99_ms:.2f}" if ran else "—",
                  f"{p.server_cpu_seconds:.2f}" if ran else "—", f"{p.server_rss_kib:,}" if p.server_rss_kib else "—",
                  f"{p.rss_per_idle_connection:,.0f}" if p.rss_per_idle_connection == p.rss_per_idle_connection else "—",
                  Text("yes", style="green") if p.correct else Text(p.note or "no", style="red"))
    return t


def write_results(points: list[Point], out: pathlib.Path, info: dict) -> dict:
    """Write results.json, results.csv and scaling.png into out; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    # JSON has no NaN: a value that was not measured is written as null.
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in dataclasses.asdict(p).items()}
            for p in points]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "figure": out / "scaling.png"}
    paths["json"].write_text(json.dumps({"machine": info, "points": rows}, indent=1, allow_nan=False) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure(points, info).savefig(paths["figure"], dpi=110, bbox_inches="tight")
    return paths


def load_results(path: pathlib.Path) -> tuple[dict, list[Point]]:
    """Read a results.json back: the machine it came from, and its points."""
    data = json.loads(pathlib.Path(path).read_text())
    points = [Point(**{k: (float("nan") if v is None else v) for k, v in row.items()}) for row in data["points"]]
    return data["machine"], points


def figure(points: list[Point], info: dict | None = None):
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")   # a terminal needs no screen; a notebook keeps its inline backend
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(p.architecture for p in points):
        ran = [p for p in points if p.architecture == name and p.correct]
        if not ran:
            continue
        xs = [p.connections for p in ran]
        left.plot(xs, [p.requests_per_second for p in ran], marker="o", label=name)
        right.plot(xs, [p.rss_per_idle_connection / 1024 for p in ran], marker="o", label=name)
    left.set(xscale="log", xlabel="connections", ylabel="requests per second", title="throughput")
    right.set(xscale="log", xlabel="idle connections", ylabel="server RSS per connection (KiB)",
              title="memory per idle connection")
    left.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    if info:
        fig.suptitle(f"{info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}", fontsize=9)
    fig.tight_layout()
    plt.close(fig)   # the caller decides whether to show it (a notebook shows a returned figure)
    return fig


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


# --- The command line. ---

def add_lab_args(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="a small sweep (1, 10, 100 connections), under 20 s")
    parser.add_argument("--connections", type=int, nargs="+", metavar="N",
                        help=f"the sweep (default {' '.join(map(str, FULL_SWEEP))})")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes (default %(default)s)")
    parser.add_argument("--duration", type=float, help="seconds of traffic per point (default 3; 0.3 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("scaling-results"),
                        help="folder for results.json, results.csv and scaling.png (default %(default)s)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="measure only servers whose name contains these")


def lab(args) -> int:
    from rich.console import Console

    console = Console()
    sweep = args.connections or (QUICK_SWEEP if args.quick else FULL_SWEEP)
    duration = args.duration or (0.3 if args.quick else 3.0)
    chosen = {n: a for n, a in ARCHITECTURES.items() if not args.only or any(o in n for o in args.only)}
    if any(n <= 0 for n in sweep) or args.size < 16 or duration <= 0 or not chosen:
        console.print("[red]connections and duration must be positive, --size at least 16, "
                      "and --only must match a server[/]")
        return 2
    info = machine()
    console.print(f"[bold]Scaling lab[/]: {len(chosen)} servers × {len(sweep)} points, {args.size}-byte messages, "
                  f"{duration:g} s each, on {info['cpu']} ({info['cores']} cores), Python {info['python']}")
    points = run_lab(chosen, sweep, size=args.size, duration=duration, hold=0.2 if args.quick else 1.0,
                     warm_up=0.1 if args.quick else 0.5)
    console.print(table(points))
    paths = write_results(points, args.out, info)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def demo(args=None) -> int:
    parser_defaults = dict(quick=True, connections=None, size=1024, duration=None,
                           out=pathlib.Path("scaling-results"), only=None)
    return lab(args or type("Args", (), parser_defaults)())


def main(argv=None) -> int:
    return run_lesson(argv, doc=__doc__, name="07_scaling", demo=demo, serve=serve,
                      add_client_args=echo.add_client_args,
                      client=echo.client, port=9907, add_demo_args=add_lab_args)


if __name__ == "__main__":
    main_guard(main)
