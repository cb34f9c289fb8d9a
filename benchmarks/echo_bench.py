"""Lesson 05's selectors echo server against a standard-library asyncio baseline.

    python benchmarks/echo_bench.py                 # the full run, about a minute
    python benchmarks/echo_bench.py --quick         # a smaller one, a few seconds

Two measurements, each server in its own process, all on loopback:

1. Throughput: 10 connections, one 1 KiB message in flight on each, for a few
   seconds; rounds alternate between the servers, and the median of each is
   compared, so that a slow moment of the machine hits both. A first warm-up
   round is reported apart: a fresh asyncio server process has been seen to
   run at a third of its later speed for its first few seconds.
2. Scale: 10,000 concurrent connections to lesson 05's default-selector server,
   each exchanging a few messages, every reply checked byte for byte.

The same load generator drives every server. By default it is
benchmarks/loadgen.c, compiled on the spot: the Python one
(lessons/kit/loadgen.py) tops out near the rate of the servers it measures,
which squeezes every ratio towards 1. With two or more cores, the server is
pinned to one core and the load generator to another, so they do not compete.
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import tempfile
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessons.kit.loadgen import run_load          # noqa: E402
from lessons.kit.echoservers import echo_servers  # noqa: E402
from lessons.kit.processes import ServerProcess, machine  # noqa: E402
from lessons.kit.server import raise_fd_limit     # noqa: E402

OURS = "05 selectors (default)"
SERVERS = {s.name: list(s.argv) for s in echo_servers()
           if s.name in (OURS, "asyncio Protocol", "asyncio streams")}


PIN = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
SERVER_CPU, LOAD_CPU = 0, 1


class Server(ServerProcess):
    def __init__(self, argv):
        super().__init__(argv)
        if PIN:
            os.sched_setaffinity(self.proc.pid, {SERVER_CPU})


def build_c_loadgen() -> str | None:
    """Compile loadgen.c; None if there is no C compiler or no epoll."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler or not sys.platform.startswith("linux"):
        return None
    binary = pathlib.Path(tempfile.mkdtemp()) / "loadgen"
    built = subprocess.run([compiler, "-O2", "-o", str(binary), str(ROOT / "benchmarks" / "loadgen.c")],
                           capture_output=True, text=True)
    return str(binary) if built.returncode == 0 else None


def load(generator: str | None, address, seconds: float) -> dict:
    """One timed run of 10 connections with 1 KiB messages."""
    if generator is None:
        result = run_load(address, connections=10, size=1024, duration=seconds)
        return {"rps": result.requests_per_second, "p50_us": result.latency(0.5) * 1e6,
                "p99_us": result.latency(0.99) * 1e6, "correct": result.correct}
    command = [generator, address[0], str(address[1]), "10", "1024", str(seconds)]
    if PIN:
        command = ["taskset", "-c", str(LOAD_CPU), *command] if shutil.which("taskset") else command
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    fields = dict(pair.split("=") for pair in out.split())
    return {"rps": int(fields["requests"]) / float(fields["seconds"]), "p50_us": float(fields["p50_us"]),
            "p99_us": float(fields["p99_us"]), "correct": fields["wrong"] == "0" and fields["errors"] == "0"}


def throughput(rounds: int, seconds: float, generator: str | None) -> dict:
    """Round 0 warms each server up and is reported apart; rounds 1..N are measured."""
    runs = {name: [] for name in SERVERS}
    servers = {name: Server(args) for name, args in SERVERS.items()}
    try:
        for round_number in range(rounds + 1):
            for name, server in servers.items():
                cpu_before = server.cpu_seconds()
                result = load(generator, server.address, seconds)
                requests = result["rps"] * seconds
                result["server_cpu_us_per_request"] = (server.cpu_seconds() - cpu_before) / requests * 1e6 if requests else 0
                runs[name].append(result)
                label = "warm-up" if round_number == 0 else f"round {round_number}"
                print(f"  {label:8} {name:32} {result['rps']:>10,.0f} req/s"
                      f"  p50 {result['p50_us']:,.0f} µs  p99 {result['p99_us']:,.0f} µs"
                      f"  server {result['server_cpu_us_per_request']:.1f} µs CPU/request"
                      f"  {'correct' if result['correct'] else 'WRONG'}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return {name: {"warm_up_rps": r[0]["rps"],
                   "median_rps": statistics.median(x["rps"] for x in r[1:]),
                   "median_server_cpu_us_per_request": statistics.median(x["server_cpu_us_per_request"] for x in r[1:]),
                   "rounds": r[1:], "all_correct": all(x["correct"] for x in r)}
            for name, r in runs.items()}


def scale(connections: int, requests_each: int) -> dict:
    server = Server(SERVERS[OURS])
    rss = {}
    try:
        rss["before"] = server.rss_kib()
        result = run_load(server.address, connections=connections, size=64, duration=60,
                          requests_per_connection=requests_each, connect_timeout=60, idle_hold=1.0,
                          on_opened=lambda: rss.__setitem__("idle", server.rss_kib()))
    finally:
        server.stop()
    return {"connections": connections, "opened": result.opened, "requests": result.requests,
            "expected_requests": connections * requests_each, "wrong_replies": result.wrong_replies,
            "errors": result.errors, "failure": result.failure, "correct": result.correct
            and result.requests == connections * requests_each,
            "server_rss_kib_before": rss.get("before", 0), "server_rss_kib_idle": rss.get("idle", 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run, a few seconds")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    parser.add_argument("--python-loadgen", action="store_true",
                        help="drive the throughput test with the Python load generator instead of loadgen.c")
    args = parser.parse_args()
    if PIN:
        os.sched_setaffinity(0, {LOAD_CPU})   # this process runs the scale test's load
    generator = None if args.python_loadgen else build_c_loadgen()
    old, new = raise_fd_limit(2 * 10_000 + 1024)
    rounds, seconds, connections = (1, 1.0, 500) if args.quick else (5, 3.0, 10_000)
    info = machine()
    info["date"] = datetime.date.today().isoformat()
    print(f"machine: {info}")
    if new > old:
        print(f"raised the load generator's open-file limit from {old} to {new}")
    print(f"throughput: 10 connections, 1 KiB messages, {rounds} rounds of {seconds:g} s; load from "
          f"{'loadgen.c' if generator else 'the Python load generator'}; "
          f"{'server and load pinned to separate cores' if PIN else 'no CPU pinning'}")
    rates = throughput(rounds, seconds, generator)
    ours, baseline = rates[OURS], rates["asyncio Protocol"]
    ratio = ours["median_rps"] / baseline["median_rps"]
    print(f"ratio, lesson 05 selectors / asyncio Protocol, median of the measured rounds: {ratio:.2f}x "
          f"(warm-up round alone: {ours['warm_up_rps'] / baseline['warm_up_rps']:.2f}x)")
    print(f"server CPU per request, median: lesson 05 {ours['median_server_cpu_us_per_request']:.1f} µs, "
          f"asyncio Protocol {baseline['median_server_cpu_us_per_request']:.1f} µs")
    print(f"scale: {connections:,} concurrent connections, 3 messages each")
    held = scale(connections, 3)
    print(f"  opened {held['opened']:,}, replies {held['requests']:,} of {held['expected_requests']:,}, "
          f"wrong {held['wrong_replies']}, errors {held['errors']}"
          f"{', failure: ' + held['failure'] if held['failure'] else ''}")
    if held["server_rss_kib_idle"]:
        per = (held["server_rss_kib_idle"] - held["server_rss_kib_before"]) * 1024 / max(1, held["opened"])
        print(f"  server RSS {held['server_rss_kib_before']:,} KiB before, {held['server_rss_kib_idle']:,} KiB "
              f"holding them idle: about {per:,.0f} bytes per connection")
    report = {"machine": info, "load_generator": "loadgen.c" if generator else "python", "pinned": PIN,
              "throughput": rates, "ratio_selectors_vs_asyncio_protocol": ratio,
              "scale": held}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = held["correct"] and all(r["all_correct"] for r in rates.values())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
