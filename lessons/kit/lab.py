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

Experiment 3 is a chat room's fan-out (:mod:`.fanout`): in a fresh process
for each point, ``members`` join and stay silent (memory per idle member),
leave, then join again and ten of them talk while everyone listens (lines
delivered per second, every one checked for order):

    points = run_chat({"08 asyncio": ("-m", "lessons.08_asyncio", "serve", "--quiet")}, [10, 100])
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from . import fanout
from .echoservers import EchoServer
from .generators import LoadGenerator, core_plan, load_generator, pinned
from .processes import ServerProcess
from .server import raise_fd_limit

BUSY_CLIENTS = 10           # the busy ones in experiment 2
NEAR_CEILING = 0.9          # a rate within 10% of the load generator's ceiling is marked
CHAT_SENDERS = 10           # the members who talk in experiment 3 (everyone listens)
CHAT_MEMORY_FROM = 100      # memory per idle member is shown from this many: below, it is a few pages


def start(spec, cpus=None) -> ServerProcess:
    """Start a design in its own process: an EchoServer from the list, or a raw Python argv."""
    if isinstance(spec, EchoServer):
        return spec.start(cpus=cpus)
    return ServerProcess(list(spec), cpus=cpus)


@dataclass
class Point:
    """One design under one load, and what it measured. In experiment 3 ("chat"), ``connections``
    is the room's members, a request is one line delivered to one member, and the load
    generator is the lab's own process reading every member's socket."""
    architecture: str
    connections: int                 # busy connections, one message in flight on each
    idle: int = 0                    # idle connections held open meanwhile
    experiment: str = "busy"         # "busy" (experiment 1), "idle" (experiment 2) or "chat" (3)
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
    sent: int = 0                                   # chat: lines said
    delivered: int = 0                              # chat: lines received, all members together


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


def measure_chat(server: ServerProcess, name: str, members: int, duration: float = 3.0,
                 senders: int = CHAT_SENDERS, client_cpus=None) -> Point:
    """One point of experiment 3, on a fresh room: memory per idle member, then the fan-out."""
    point = Point(name, members, experiment="chat", load_average=os_loadavg()[0])
    empty, alone, cpu = server.open_files(), server.rss_kib(), server.cpu_seconds()
    try:
        per_member = fanout.idle_member_kib(server.address, members, server.rss_kib)
    except (OSError, TimeoutError) as exc:
        point.server_cpu_seconds = server.cpu_seconds() - cpu   # what the room spent trying
        joining = 2 * members + members * (members - 1) // 2    # greeting, welcome, and each join announced
        point.note = f"could not hold {members:,} idle members: {exc}" + (
            f", of the {joining:,} that joining takes" if isinstance(exc, TimeoutError) else "")
        return point
    if members >= CHAT_MEMORY_FROM:
        point.rss_per_idle_connection = max(0.0, per_member * 1024)
    point.server_rss_kib = round(alone + per_member * members)   # with every member in, idle
    wait_until_left(server, empty)   # a leave announced while the talkers join would spoil their count
    at: dict = {}

    def clocks(when: str) -> None:   # joining costs work too: count only the talking
        at[when] = (server.cpu_seconds(), time.process_time())

    with pinned(client_cpus):
        result = fanout.measure(server.address, members, senders, duration,
                                on_talk=lambda: clocks("talk"), on_done=lambda: clocks("done"))
    point.sent, point.delivered = result.sent, result.delivered
    point.requests_per_second = result.per_second
    point.correct = result.complete and not result.error
    if "done" in at:
        point.server_cpu_seconds = at["done"][0] - at["talk"][0]
        point.cpu_us_per_request = point.server_cpu_seconds / max(1, result.delivered) * 1e6
        point.generator_busy = (at["done"][1] - at["talk"][1]) / result.seconds
        point.near_ceiling = point.generator_busy >= NEAR_CEILING   # the client, not the room, may be the limit
    problems = [result.error] if result.error else []
    if not result.error and not result.complete:
        problems.append("some lines were lost or came out of order")
    if not server.alive():
        problems.append(f"server exited ({server.proc.returncode})")
    point.note = "; ".join(problems)
    return point


def wait_until_left(server: ServerProcess, empty: int | None, limit: float = 30.0) -> None:
    """Wait until the server holds no more descriptors than ``empty`` (its count with no one in),
    or ``limit`` passes: a room may take a while to see every member go."""
    deadline = time.monotonic() + limit
    while empty is not None and (server.open_files() or 0) > empty and time.monotonic() < deadline:
        time.sleep(0.05)


def run_chat(rooms: dict, sizes: list[int], duration: float = 3.0, senders: int = CHAT_SENDERS,
             progress: bool = True) -> list[Point]:
    """Experiment 3: each room at each size, in a fresh process each time; never stop on a failure.

    ``rooms`` maps a name to the room's argv after ``python`` (it must take ``--max-members``);
    the room is sized to the point's members, and a room that fails at one size is not run
    at the larger ones."""
    server_cpus, client_cpus = core_plan()
    raise_fd_limit(max(sizes, default=0) + 1024)
    points: list[Point] = []
    fell_over: dict = {}
    tasks = [(size, name) for size in sorted(sizes) for name in rooms]   # both rooms at one size, then the next
    with _progress(progress) as bar:
        task = bar.add_task("starting", total=len(tasks))
        for size, name in tasks:
            bar.update(task, description=f"{name}, {size:,} members")
            bar.advance(task)
            if name in fell_over:
                points.append(Point(name, size, experiment="chat", note=f"not run: {fell_over[name]}"))
                continue
            try:
                server = ServerProcess([*rooms[name], "--max-members", str(size)], cpus=server_cpus)
            except RuntimeError as exc:
                points.append(Point(name, size, experiment="chat", note=str(exc)))
                fell_over[name] = "did not start"
                continue
            with server:
                point = measure_chat(server, name, size, duration, senders, client_cpus)
            points.append(point)
            if not point.correct:
                fell_over[name] = f"fell over at {size:,}"
    names = list(rooms)
    points.sort(key=lambda p: (names.index(p.architecture), p.connections))
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
