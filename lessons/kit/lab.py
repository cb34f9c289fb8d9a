"""The scaling lab's engine (lesson 07): each server in a process of its own, measured point by point.

A *point* is one design under one load: ``connections`` busy connections
(one message in flight on each) while ``idle`` more are held open. For each
point the lab opens every connection, waits until the server holds them all,
reads its memory, loads the busy ones for a while, and reads its CPU time;
every reply is checked byte for byte, and idle connections must stay open.

    points = run_lab({"05 selectors (default)": entry}, sweep=[10, 100], idle_sweep=[0, 1000])
    mark_ceilings(points, "C epoll echo")    # (run_lab does it) the generator's ceiling at each point

A design that falls over is reported with the reason, and the lab goes on.
The report (tables, files, figures) is :mod:`.labreport`'s.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from .echoservers import EchoServer
from .generators import LoadGenerator, core_plan, load_generator
from .processes import ServerProcess
from .server import raise_fd_limit

BUSY_CLIENTS = 10           # the busy ones in experiment 2
NEAR_CEILING = 0.9          # a rate within 10% of the load generator's ceiling is marked


def start(spec, cpus=None) -> ServerProcess:
    """Start a design in its own process: an EchoServer from the list, or a raw Python argv."""
    if isinstance(spec, EchoServer):
        return spec.start(cpus=cpus)
    return ServerProcess(list(spec), cpus=cpus)


@dataclass
class Point:
    """One design under one load, and what it measured."""
    architecture: str
    connections: int                 # busy connections, one message in flight on each
    idle: int = 0                    # idle connections held open meanwhile
    experiment: str = "busy"         # "busy" (experiment 1) or "idle" (experiment 2)
    requests_per_second: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    server_cpu_seconds: float = 0.0
    cpu_us_per_request: float = float("nan")
    server_rss_kib: int = 0
    rss_per_idle_connection: float = float("nan")   # bytes; only with 1,000 or more idle, never below 0
    generator_busy: float = float("nan")            # the load generator's CPU seconds per second of load
    ceiling_rps: float = float("nan")               # the load generator's ceiling at this point
    near_ceiling: bool = False
    correct: bool = False
    wrong_replies: int = 0
    load_average: float = float("nan")              # the machine's, over the last minute, when measured
    note: str = ""


def load_results(path) -> tuple[dict, list[Point]]:
    """Read a results.json back: the machine it came from, and its points."""
    from .labreport import load_results as load
    return load(path, Point)


def measure(server: ServerProcess, name: str, generator: LoadGenerator, connections: int, idle: int = 0,
            size: int = 1024, duration: float = 3.0, hold: float = 1.0, experiment: str = "busy") -> Point:
    """One point: open ``idle`` + ``connections``, hold them idle, then load the busy ones."""
    point = Point(name, connections, idle, experiment, load_average=os_loadavg()[0])
    base_rss, at_open, at_end = server.rss_kib(), {}, {}

    def opened():   # every connection open and idle: let the server take them all, then read it
        time.sleep(hold)
        wait_until_accepted(server, connections + idle)
        at_open.update(rss=server.rss_kib(), cpu=server.cpu_seconds())

    def done():     # the last reply: read the CPU time before the server tears connections down
        at_end["cpu"] = server.cpu_seconds()

    result = generator.run(server.address, connections, size=size, duration=duration, idle=idle,
                           on_opened=opened, on_done=done, stall_timeout=max(0.5, duration),
                           connect_timeout=30 + (connections + idle) / 500)
    point.correct = result.correct and result.answered == result.opened   # everyone served, and in time
    point.wrong_replies = result.wrong_replies
    point.requests_per_second = result.requests_per_second
    point.p50_ms, point.p99_ms = result.latency(0.5) * 1e3, result.latency(0.99) * 1e3
    point.server_cpu_seconds = at_end.get("cpu", server.cpu_seconds()) - at_open.get("cpu", 0.0)
    if result.requests:
        point.cpu_us_per_request = point.server_cpu_seconds / result.requests * 1e6
    if result.seconds:
        point.generator_busy = result.generator_cpu_seconds / result.seconds
    point.server_rss_kib = at_open.get("rss", 0)
    held = idle if experiment == "idle" else connections
    # Below 1,000 the difference is noise; and it means nothing if the server dropped some.
    if "rss" in at_open and held >= 1000 and at_open["rss"] > base_rss and not result.errors + result.idle_closed:
        point.rss_per_idle_connection = (at_open["rss"] - base_rss) * 1024 / held
    problems = []
    if not server.alive():
        problems.append(f"server exited ({server.proc.returncode})")
    if result.errors:
        problems.append(f"{result.errors:,} connections closed or reset by the server")
    if result.opened and result.answered < result.opened:
        problems.append(f"only {result.answered:,} of {result.opened:,} connections were answered in time")
    elif result.failure:
        problems.append(result.failure)
    if result.wrong_replies:
        problems.append(f"{result.wrong_replies:,} wrong replies")
    if result.idle_closed:
        problems.append(f"{result.idle_closed:,} of {idle:,} idle connections closed by the server")
    point.note = "; ".join(problems)
    return point


def wait_until_accepted(server: ServerProcess, connections: int, patience: float = 1.0,
                        limit: float = 60.0) -> None:
    """Wait until the server holds every connection (its open descriptors say so), or stops taking
    more for ``patience`` seconds (it refuses them), or ``limit`` passes. The kernel completes a
    connection before the server accepts it, and starting a thread for each of 10,000 takes seconds."""
    deadline, last, since = time.monotonic() + limit, None, time.monotonic()
    while (count := server.open_files()) is not None and count < connections and time.monotonic() < deadline:
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > patience:
            return
        time.sleep(0.05)


def run_lab(architectures: dict, sweep: list[int], size: int = 1024, duration: float = 3.0,
            hold: float = 1.0, progress: bool = True, warm_up: float = 0.5, idle_sweep=(),
            idle_designs=None, generator: LoadGenerator | None = None, fresh: bool = True,
            yardstick: str | None = None) -> list[Point]:
    """Measure every design at every point of both sweeps; never stop on a failure.

    ``fresh``: a new server process for every point (clean memory readings);
    otherwise one per design, for speed. ``yardstick``: the design whose rate
    is the load generator's ceiling (else the fastest at each point).
    """
    generator = generator or load_generator()
    server_cpus, _ = core_plan()
    raise_fd_limit(2 * (max(sweep, default=0) + max(idle_sweep, default=0)) + 1024)
    # Experiment 2 with no idle connection is experiment 1 with ten: measured once, when both ask for it.
    same = BUSY_CLIENTS in sweep

    def in_experiment_2(name: str) -> bool:
        return idle_designs is None or name in idle_designs or name == yardstick

    plan = {name: [("busy", n, 0) for n in sweep]
            + [("idle", BUSY_CLIENTS, n) for n in (idle_sweep if in_experiment_2(name) else ()) if n or not same]
            for name in architectures}
    tasks = [(name, step) for name in architectures for step in plan[name]]
    if fresh:   # point by point, every design in turn: all are measured at one load within a minute or
        # two of each other (and of the ceiling), on a machine in much the same state
        order = {step: i for i, step in enumerate(dict.fromkeys(step for _, step in tasks))}
        tasks.sort(key=lambda task: order[task[1]])
    points: list[Point] = []
    servers: dict = {}
    fell_over: dict = {name: {} for name in architectures}
    with _progress(progress) as bar:
        task = bar.add_task("starting", total=len(tasks))
        try:
            for name, (experiment, busy, idle) in tasks:
                bar.update(task, description=f"{name}, {busy + idle:,} connections")
                bar.advance(task)
                if experiment in fell_over[name]:
                    why = fell_over[name][experiment]
                    points.append(Point(name, busy, idle, experiment, note=f"not run: {why}"))
                    continue
                if name not in servers:
                    try:
                        servers[name] = start(architectures[name], server_cpus)
                    except RuntimeError as exc:
                        points.append(Point(name, busy, idle, experiment, note=str(exc)))
                        fell_over[name] = {"busy": "did not start", "idle": "did not start"}
                        continue
                    # Warm up on connections of its own, then close them: a fresh asyncio server has been
                    # seen to run at a quarter of its speed until its first connections close.
                    generator.run(servers[name].address, min(busy, 10), size=size, duration=warm_up,
                                  stall_timeout=max(0.2, warm_up))
                point = measure(servers[name], name, generator, busy, idle, size, duration, hold, experiment)
                points.append(point)
                if not point.correct:
                    fell_over[name][experiment] = f"fell over at {busy + idle:,}"
                if fresh or not point.correct:
                    servers.pop(name).stop()
        finally:
            for server in servers.values():
                server.stop()
    if same and 0 in idle_sweep:
        points += [dataclasses.replace(p, experiment="idle") for p in points
                   if p.experiment == "busy" and p.connections == BUSY_CLIENTS and in_experiment_2(p.architecture)]
    names = list(architectures)
    points.sort(key=lambda p: (names.index(p.architecture), p.experiment != "busy", p.connections, p.idle))
    mark_ceilings(points, yardstick)
    return points


def mark_ceilings(points: list[Point], yardstick: str | None) -> None:
    """Each point's ceiling: the yardstick's rate there (the fastest rate, without one); mark those near it."""
    for key in {(p.experiment, p.connections, p.idle) for p in points}:
        here = [p for p in points if (p.experiment, p.connections, p.idle) == key and p.correct]
        best = ([p for p in here if p.architecture == yardstick]
                or sorted(here, key=lambda p: -p.requests_per_second))
        if not best:
            continue
        for p in here:
            p.ceiling_rps = best[0].requests_per_second
            p.near_ceiling = p is not best[0] and p.requests_per_second >= NEAR_CEILING * p.ceiling_rps


def _progress(show: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description:36.36}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                    TimeElapsedColumn(), disable=not show, transient=True)


def os_loadavg() -> tuple:
    """The machine's load average (1, 5, 15 minutes): how busy it was while we measured."""
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
