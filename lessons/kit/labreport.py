"""The scaling lab's report (lesson 07): tables that never cut a number, result files, figures.

The lab measures points (one design, one number of connections); this module
shows them. A table of measurements must never truncate a number, whatever
the terminal's width: :func:`lab_tables` lets the server names wrap, keeps
every number whole, and below the narrowest table that fits prints one line
a point instead. The full table, with every column, goes to ``table.txt``.

    for renderable in lab_tables(points, info, width=80): console.print(renderable)   # experiment 3's too
    paths = write_results(points, pathlib.Path("scaling-results"), info)   # json, csv, txt, png
    info, points = load_results(paths["json"], Point)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pathlib
import sys

EXPERIMENTS = {
    "busy": ("1. Every connection busy: one message in flight on each", "conns", "connections"),
    "idle": ("2. Ten busy connections while N idle ones are held open", "idle", "idle"),
}
MIN_NAME = 12   # the server column never gets narrower than this; below that, one line a point


def _x(p) -> int:
    return p.connections if p.experiment == "busy" else p.idle


def _ms(value: float) -> str:
    if value != value:
        return ""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _count(value: float) -> str:
    return "" if value != value else f"{value:,.0f}"


def _us(value: float) -> str:
    return "" if value != value else f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _rate(p, where: str, footnotes: list[str]) -> str:
    """A point's rate cell: the rate (* near the load generator's ceiling), "not run", or
    "fails [n]" with its reason added to the footnotes."""
    if p.note.startswith("not run"):
        return "not run"
    if not p.correct:
        footnotes.append(f"{p.architecture}, {where}: {p.note or 'failed'}")
        return f"fails [{len(footnotes)}]"
    return f"{p.requests_per_second:,.0f}" + ("*" if p.near_ceiling else "")


def _rows(points, experiment: str, footnotes: list[str]) -> list[list[str]]:
    rows = []
    for p in (p for p in points if p.experiment == experiment):
        rate = _rate(p, f"{_x(p):,} {EXPERIMENTS[experiment][2]}", footnotes)
        ran = p.correct or p.requests_per_second > 0
        measured = [_ms(p.p50_ms), _ms(p.p99_ms), _us(p.cpu_us_per_request)] if ran else ["", "", ""]
        rows.append([p.architecture, f"{_x(p):,}", rate, *measured, _count(p.rss_per_idle_connection)])
    return rows


HEADERS = ["req/s", "p50 ms", "p99 ms", "CPU µs/req", "B/idle conn"]
CHAT_TITLE = "3. Chat fan-out: ten members talk, every member listens"
CHAT_HEADERS = ["lines/s", "said", "µs/line", "KiB/idle", "client CPU"]


def _fitted(title: str, first: str, x_name: str, headers: list[str], rows: list[list[str]], width: int) -> list:
    """A table of ``rows`` fitted to ``width``, or, below the narrowest that fits, one line a row
    (which wraps between words, never inside a number). ``headers`` name the columns after the x column."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    columns = [first, x_name, *headers]
    numbers = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(columns) if i > 0]
    if sum(numbers) + MIN_NAME + 3 * (len(columns) - 1) <= width:   # a space either side of each rule
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1),
                      pad_edge=False, show_edge=False, title_style="bold")
        table.add_column(first, overflow="fold", min_width=MIN_NAME)
        for header, least in zip(columns[1:], numbers):
            table.add_column(header, justify="right", no_wrap=True, min_width=least)
        for row in rows:
            table.add_row(*row)
        return [table]
    out = [Text(title, style="bold")]
    for row in rows:
        fields = [f"{row[1]} {x_name}", f"{row[2]} {headers[0]}"]
        fields += [f"{h} {v}" for h, v in zip(headers[1:], row[3:]) if v]
        out.append(Text(f"{row[0]}: " + "; ".join(fields)))
    return out


def _chat_rows(points, footnotes: list[str]) -> list[list[str]]:
    rows = []
    for p in (p for p in points if p.experiment == "chat"):
        rate = _rate(p, f"{p.connections:,} members", footnotes)
        ran = p.delivered > 0
        kib = p.rss_per_idle_connection / 1024
        rows.append([p.architecture, f"{p.connections:,}", rate, f"{p.sent:,}" if ran else "",
                     _us(p.cpu_us_per_request) if ran else "", "" if kib != kib else f"{kib:,.1f}",
                     f"{p.generator_busy:.0%}" if ran and p.generator_busy == p.generator_busy else ""])
    return rows


def chat_tables(points, width: int = 80) -> list:
    """Experiment 3's table (fitted to ``width``) and its footnotes."""
    from rich.text import Text

    footnotes: list[str] = []
    rows = _chat_rows(points, footnotes)
    if not rows:
        return []
    out = _fitted(CHAT_TITLE, "room", "members", CHAT_HEADERS, rows, width)
    legend = [f"[{n}] {text}" for n, text in enumerate(footnotes, 1)]
    if any(p.near_ceiling for p in points if p.experiment == "chat"):
        legend.append("* the lab's client used 90% of a core or more: there the rate may be the client's, "
                      "not the room's")
    legend += ["lines/s: lines delivered per second, all members together (each line said reaches every other "
               "member); shown only where every line reached every other member, in each sender's order",
               "said: lines the talkers said in all; µs/line: the room's CPU time per line delivered; "
               "client CPU: the lab's own CPU time per second of talking (one thread reads every member's socket)",
               "KiB/idle: the room's memory per member while all are in and silent, shown from 100 members"]
    out.extend(Text(line) for line in legend)
    out.append(Text(""))
    return out


def lab_tables(points, info: dict, width: int = 80) -> list:
    """What the terminal shows: each experiment's table (fitted to ``width``), its footnotes, its ceiling."""
    from rich.text import Text

    out = []
    for experiment, (title, x_name, _) in EXPERIMENTS.items():
        if not any(p.experiment == experiment for p in points):
            continue
        footnotes: list[str] = []
        rows = _rows(points, experiment, footnotes)
        out += _fitted(title, "server", x_name, HEADERS, rows, width)
        legend = [f"[{n}] {text}" for n, text in enumerate(footnotes, 1)]
        if any(p.near_ceiling for p in points if p.experiment == experiment):
            legend.append("* within 10% of the load generator's ceiling at that point, or above it: "
                          "there the lab may be measuring the generator (or the machine), not the server")
        legend.append(_ceiling_line(points, experiment, info))
        if experiment == "busy":
            legend.append("B/idle conn: server memory per connection while all are open and idle, "
                          "shown from 1,000 connections")
        else:
            legend.append("B/idle conn: server memory per idle connection, shown from 1,000")
        out.extend(Text(line) for line in legend)
        out.append(Text(""))
    return out + chat_tables(points, width)


def _ceiling_line(points, experiment: str, info: dict) -> str:
    yardstick = info.get("yardstick", "")
    ceilings = {}
    for p in points:
        if p.experiment == experiment and p.ceiling_rps == p.ceiling_rps:
            ceilings[_x(p)] = (p.ceiling_rps, p.generator_busy if p.architecture == yardstick else None)
    parts = [f"{x:,}: {rps:,.0f}" + (f" (generator {busy:.0%} busy)" if busy is not None and busy == busy else "")
             for x, (rps, busy) in sorted(ceilings.items())]
    line = (f"load generator's ceiling ({info.get('load_generator', 'load generator')} against {yardstick}), "
            f"req/s at each {EXPERIMENTS[experiment][1]}: " + "; ".join(parts))
    busy = [b for _, b in ceilings.values() if b is not None and b == b]
    if busy and min(busy) < 0.5:   # neither the generator nor the yardstick used its core: something else did
        line += (". Where the generator was under half busy against the C server, neither used its core "
                 "fully: the machine was busy with other work, so compare CPU per request, not requests/s")
    return line


def full_table(points, info: dict) -> str:
    """Every column of every point, as plain text: what table.txt holds."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=io.StringIO(), width=200, color_system=None, legacy_windows=False)
    console.print(f"{info.get('cpu')}, {info.get('cores')} cores, {info.get('os')}, Python {info.get('python')}; "
                  f"load average {info.get('load_average_at_start')} at the start, "
                  f"{info.get('load_average_at_end')} at the end; load from {info.get('load_generator')}")
    table = Table(title="every point", title_justify="left")
    columns = ["server", "experiment", "busy", "idle", "req/s", "ceiling", "p50 ms", "p99 ms", "server CPU s",
               "CPU µs/req", "RSS KiB", "B/idle conn", "generator busy", "correct", "note"]
    for c in columns:
        words = c in ("server", "note")
        table.add_column(c, no_wrap=not words, justify="left" if words else "right")
    for p in (p for p in points if p.experiment != "chat"):
        table.add_row(p.architecture, p.experiment, f"{p.connections:,}", f"{p.idle:,}",
                      f"{p.requests_per_second:,.0f}" + ("*" if p.near_ceiling else ""), _count(p.ceiling_rps),
                      _ms(p.p50_ms), _ms(p.p99_ms), f"{p.server_cpu_seconds:.2f}", _us(p.cpu_us_per_request),
                      f"{p.server_rss_kib:,}", _count(p.rss_per_idle_connection),
                      "" if p.generator_busy != p.generator_busy else f"{p.generator_busy:.0%}",
                      "yes" if p.correct else "no", p.note)
    if table.rows:
        console.print(table)
        console.print("* within 10% of the load generator's ceiling at that point, or above it")
    chat = [p for p in points if p.experiment == "chat"]
    if chat:
        table = Table(title="every point of experiment 3, chat fan-out", title_justify="left")
        columns = ["room", "members", "said", "delivered", "lines/s", "server CPU s", "CPU µs/line",
                   "RSS KiB", "KiB/idle member", "client CPU", "complete", "note"]
        for c in columns:
            words = c in ("room", "note")
            table.add_column(c, no_wrap=not words, justify="left" if words else "right")
        for p in chat:
            kib = p.rss_per_idle_connection / 1024
            table.add_row(p.architecture, f"{p.connections:,}", f"{p.sent:,}", f"{p.delivered:,}",
                          f"{p.requests_per_second:,.0f}" + ("*" if p.near_ceiling else ""),
                          f"{p.server_cpu_seconds:.2f}", _us(p.cpu_us_per_request), f"{p.server_rss_kib:,}",
                          "" if kib != kib else f"{kib:,.1f}",
                          "" if p.generator_busy != p.generator_busy else f"{p.generator_busy:.0%}",
                          "yes" if p.correct else "no", p.note)
        console.print(table)
        console.print("* the lab's client used 90% of a core or more; RSS KiB: the room's, with every member "
                      "in and idle; complete: every line reached every other member, in each sender's order")
    return console.file.getvalue()


# --- Files ---

def write_results(points, out: pathlib.Path, info: dict, figures: bool = True) -> dict:
    """Write results.json, results.csv, table.txt and (``figures``) the figures into ``out``;
    return their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # JSON has no NaN: a value that was not measured is written as null.
    rows = [{k: (None if isinstance(v, float) and v != v else v) for k, v in dataclasses.asdict(p).items()}
            for p in points]
    paths = {"json": out / "results.json", "csv": out / "results.csv", "table": out / "table.txt"}
    paths["json"].write_text(json.dumps({"machine": info, "points": rows}, indent=1, allow_nan=False) + "\n")
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["table"].write_text(full_table(points, info), encoding="utf-8")
    for name, fig in (lab_figures(points, info) if figures else {}).items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110, bbox_inches="tight")
    return paths


def load_results(path, point_class) -> tuple[dict, list]:
    """Read a results.json back: the machine it came from, and its points (as ``point_class``)."""
    data = json.loads(pathlib.Path(path).read_text())
    known = {f.name for f in dataclasses.fields(point_class)}
    points = [point_class(**{k: (float("nan") if v is None else v) for k, v in row.items() if k in known})
              for row in data["points"]]
    return data["machine"], points


# --- Figures ---

def _pyplot():
    import matplotlib
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")   # a terminal needs no screen; a notebook keeps its inline backend
    import matplotlib.pyplot as plt
    return plt


def lab_figures(points, info: dict | None = None) -> dict:
    """{"scaling": experiment 1's figure, "idle": experiment 2's}, for the experiments that ran."""
    figures = {}
    if any(p.experiment == "busy" for p in points):
        figures["scaling"] = busy_figure(points, info)
    if any(p.experiment == "idle" for p in points):
        figures["idle"] = idle_figure(points, info)
    return figures


def _styles(points, info):
    """(name, label, line style) for each design, in order: the same colour for a design in every figure."""
    yardstick = (info or {}).get("yardstick")
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    names = [n for n in dict.fromkeys(p.architecture for p in points) if n != yardstick]
    for i, name in enumerate(names):
        yield name, name, dict(marker="o", color=palette[i % len(palette)])
    if yardstick in {p.architecture for p in points}:
        yield yardstick, f"{yardstick} (the ceiling)", dict(marker=".", color="black", linestyle="--")


def _legend(fig, axes):
    handles, labels = axes.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)


def _suptitle(fig, info):
    if info:
        fig.suptitle(f"{info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}; "
                     f"load from {info.get('load_generator', '?')}", fontsize=9)


def busy_figure(points, info: dict | None = None):
    """Experiment 1: throughput against connections, and memory per connection."""
    plt = _pyplot()
    busy = [p for p in points if p.experiment == "busy"]
    xs = sorted({p.connections for p in busy})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for name, label, style in _styles(busy, info):
        mine = [p for p in busy if p.architecture == name]
        ran = [p for p in mine if p.correct]
        line, = left.plot([p.connections for p in ran], [p.requests_per_second for p in ran], label=label,
                          **style)
        failed = [p for p in mine if not p.correct and not p.note.startswith("not run")]
        left.plot([p.connections for p in failed], [0] * len(failed), "x", color=line.get_color(),
                  markersize=10, mew=2)
        held = [p for p in mine if p.rss_per_idle_connection == p.rss_per_idle_connection]
        right.plot([p.connections for p in held], [p.rss_per_idle_connection / 1024 for p in held], **style)
    left.set(xscale="log", xlabel="connections, all busy", ylabel="requests per second", title="throughput")
    right.set(xscale="log", xlabel="connections (1,000 and more)",
              ylabel="server memory per idle connection (KiB)", title="memory per connection")
    if right.lines and any(len(line.get_xdata()) for line in right.lines):
        right.set_yscale("log")
    else:
        right.annotate("shown from 1,000 connections", (0.5, 0.5), xycoords="axes fraction", ha="center")
    left.annotate("x: failed (see the table)", (0.01, 0.02), xycoords="axes fraction", fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.set_xticks(xs, [f"{n:,}" for n in xs])
        ax.minorticks_off()
    right.set_xlim(left.get_xlim())
    _legend(fig, left)
    _suptitle(fig, info)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    plt.close(fig)   # the caller decides whether to show it (a notebook shows a returned figure)
    return fig


def idle_figure(points, info: dict | None = None):
    """Experiment 2: what N idle connections cost ten busy ones, N on the x axis."""
    plt = _pyplot()
    idle = [p for p in points if p.experiment == "idle"]
    xs = sorted({p.idle for p in idle})
    where = {n: i for i, n in enumerate(xs)}   # evenly spaced: 0 has no place on a log axis
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [("requests_per_second", "busy clients' requests per second", 1),
              ("p99_ms", "busy clients' p99 round trip (ms)", 1),
              ("cpu_us_per_request", "server CPU per request (µs)", 1),
              ("server_rss_kib", "server memory with all open (MiB)", 1 / 1024)]
    for ax, (field, title, scale) in zip(axes.flat, panels):
        for name, label, style in _styles(idle, info):
            mine = [p for p in idle if p.architecture == name]
            ran = [p for p in mine if p.correct]
            line, = ax.plot([where[p.idle] for p in ran], [getattr(p, field) * scale for p in ran], label=label,
                            **style) if ran else ax.plot([], [], label=label, **style)
            failed = [p for p in mine if not p.correct and not p.note.startswith("not run")]
            if failed and field == "requests_per_second":
                ax.plot([where[p.idle] for p in failed], [0] * len(failed), "x", color=line.get_color(),
                        markersize=10, mew=2)
        ax.set(title=title, xticks=range(len(xs)), xticklabels=[f"{n:,}" for n in xs],
               xlabel="idle connections held open")
        if field in ("p99_ms", "cpu_us_per_request") and any(len(line.get_xdata()) for line in ax.lines):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].annotate("x: failed (see the table)", (0.01, 0.02), xycoords="axes fraction", fontsize=8)
    _legend(fig, axes[0][0])
    _suptitle(fig, info)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    plt.close(fig)
    return fig
