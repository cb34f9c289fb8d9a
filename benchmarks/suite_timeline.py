"""Where `pytest --nbval`'s time goes: each worker's tests on a timeline, and their CPU.

    python benchmarks/suite_timeline.py                  # the whole suite, as an instructor runs it
    python benchmarks/suite_timeline.py -- -n 6          # arguments after -- go to pytest
    python benchmarks/suite_timeline.py --top 60 --rows timeline.jsonl   # more rows; keep them

Runs pytest here (not in a clone) with this file loaded as a plugin too: every
worker appends one line per test to a file (worker, test, start, end, CPU
seconds). CPU is the worker's own (all its threads) plus its children reaped
during the test, so a notebook's kernel counts in its last cell. Then it prints:
when the first test started (start-up and collection before it), how busy each
worker was, and the costliest modules and tests. Compare it with `time`'s user
and system seconds to see how much of both cores the run kept busy.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = "SUITE_TIMELINE_OUT"


# --- the plugin: loaded by each pytest process when OUT is set ---

def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started, cpu = time.time(), _cpu()
    yield
    if OUT in os.environ:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(f"{os.environ[OUT]}.{worker}", "a", encoding="utf-8") as f:
            f.write(json.dumps([worker, item.nodeid, started, time.time(), _cpu() - cpu]) + "\n")


# --- the script ---

def report(rows: list, started: float, top: int = 15) -> None:
    """Print the timeline's summary."""
    for worker in sorted({r[0] for r in rows}):
        mine = sorted((r for r in rows if r[0] == worker), key=lambda r: r[2])
        busy, cpu = sum(r[3] - r[2] for r in mine), sum(r[4] for r in mine)
        print(f"{worker}: tests from {mine[0][2] - started:5.1f} s to {mine[-1][3] - started:5.1f} s, "
              f"busy {busy:5.1f} s, CPU {cpu:5.1f} s, {len(mine)} tests")
    modules: dict = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        m = modules[r[1].split("::")[0]]
        m[0], m[1], m[2] = m[0] + r[3] - r[2], m[1] + r[4], m[2] + 1
    print(f"CPU in tests: {sum(r[4] for r in rows):.1f} s\n\nmodules by CPU (s):")
    for name, (wall, cpu, n) in sorted(modules.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {cpu:6.1f} CPU {wall:6.1f} wall {n:4d} tests  {name}")
    print("\ntests by CPU (s):")
    for r in sorted(rows, key=lambda r: -r[4])[:top]:
        print(f"  {r[4]:6.2f} CPU {r[3] - r[2]:6.2f} wall  {r[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="modules and tests to list (default %(default)s)")
    parser.add_argument("--rows", type=pathlib.Path, help="also write every test's row to this file (JSON lines)")
    parser.add_argument("pytest_args", nargs="*", help="after --: extra arguments for pytest")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, **{OUT: str(pathlib.Path(tmp) / "timeline")},
                   PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
        started, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", "-p", "suite_timeline",
                                 *args.pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
        wall, after = time.time() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [json.loads(line) for path in pathlib.Path(tmp).glob("timeline.*")
                for line in path.read_text(encoding="utf-8").splitlines()]
    print((result.stdout.strip().splitlines() or ["(no output)"])[-1])
    user, system = after.ru_utime - cpu.ru_utime, after.ru_stime - cpu.ru_stime
    print(f"wall {wall:.1f} s; CPU {user:.1f} s user + {system:.1f} s system: "
          f"{(user + system) / wall:.2f} cores busy on average, of {os.cpu_count()}")
    if args.rows:
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if rows:
        report(rows, started, args.top)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
