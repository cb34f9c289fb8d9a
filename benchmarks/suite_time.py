"""How long an instructor waits for `pytest --nbval`: wall time on a fresh clone, run after run.

    python benchmarks/suite_time.py                      # HEAD, three runs
    python benchmarks/suite_time.py --rev 85cd9da --runs 1 -- -p no:xdist   # an older commit, serially

Each run clones the repository at ``--rev`` into a temporary directory and runs
``pytest --nbval`` there with this environment's packages (PYTHONPATH points
at the clone, so the clone's lessons are the ones imported, notebooks included).
It prints each run's wall time and pass/fail, and the machine. Arguments after
``--`` go to pytest. Run it on an otherwise quiet machine: other work on the
same cores makes every number larger.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lessons.kit.processes import machine  # noqa: E402


def one_run(rev: str, extra: list[str]) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        clone = pathlib.Path(tmp) / "clone"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", rev], check=True)
        env = dict(os.environ, PYTHONPATH=str(clone), COLUMNS="400")   # failures with their messages
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", *extra], cwd=clone, env=env,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        lines = result.stdout.strip().splitlines() or ["(no output)"]
        failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
        return elapsed, result.returncode, "\n".join([lines[-1], *("    " + f for f in failures)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to time (default %(default)s)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("pytest_args", nargs="*", help="after --: extra arguments for pytest")
    args = parser.parse_args()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True,
                         text=True, check=True).stdout.strip()
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['os']}, Python {info['python']}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"commit {rev}: pytest --nbval {' '.join(args.pytest_args)}".rstrip())
    times, ok = [], True
    for n in range(1, args.runs + 1):
        elapsed, code, summary = one_run(rev, args.pytest_args)
        times.append(elapsed)
        ok &= code == 0
        print(f"  run {n}: {elapsed:6.1f} s  exit {code}  {summary}", flush=True)
    print(f"median {statistics.median(times):.1f} s, max {max(times):.1f} s; all green: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
