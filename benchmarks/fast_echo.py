"""How fast can one Python thread echo? Lesson 05's selectors server, step by step, against asyncio, uvloop and C.

    python benchmarks/fast_echo.py                # the full run (about 10 minutes): profiles, then side by side
    python benchmarks/fast_echo.py --quick        # a smoke test, a few seconds
    python benchmarks/fast_echo.py --no-profiles  # only the side-by-side run (about 5 minutes)

Part 1, the profile behind each step. The steps (benchmarks/fast_echo_steps.py)
go from lesson 05's server to lessons/kit/fastecho.py, one change at a time.
For each, 10 connections with 1 KiB messages, and:
  - instructions per request in the server's user space, counted by valgrind's
    callgrind: repeatable even on a busy machine, unlike a clock. They are
    grouped (bytecode interpreter, the GIL, memory, objects, the C behind each
    call) so that the group a step should shrink is visible;
  - Python function calls per request, and the most frequent ones, from cProfile.
Callgrind sees only user space; the kernel's share of each request is part 2's
user/system split.

Part 2, side by side, in one run: each server in its own process pinned to
core 0, benchmarks/loadgen.c pinned to core 1 (10 and 1,000 connections, one
1 KiB message in flight on each, every reply checked). Each server is warmed
up, then the rounds alternate between servers, so a slow moment of the machine
hits them all; the median of the rounds is reported, with the server's CPU
time per request split into user and system (kernel) time, and the load
average when it ran. The load generator's own ceiling is its rate against the
fastest echo there is (the C server); results within 10% of it are marked,
since there the load generator, not the server, may be what was measured.

Raw output and JSON go to benchmarks/results/fast-echo-DATE.txt and .json.
uvloop is optional (pip install uvloop): without it the run says so and goes on.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import glob
import importlib.util
import io
import json
import os
import pathlib
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from lessons.kit import running                         # noqa: E402
from lessons.kit.processes import machine               # noqa: E402
from lessons.kit.server import raise_fd_limit           # noqa: E402
from lessons.kit.transcript import Transcript           # noqa: E402

PY = sys.executable
SIZE = 1024
PIN = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
SERVER_CPU, LOAD_CPU = (sorted(os.sched_getaffinity(0))[:2] if PIN else (None, None))
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
FAST = "fast (kit/fastecho.py)"
FAST_SPLICE = "fast --splice"

# The steps, in order (names in fast_echo_steps.STEPS), and what each changed; then
# the ways tried and not kept ("x-"), each a variant of the step named in its text.
STEPS = [
    ("0-lesson05", "lesson 05's selectors server, as taught"),
    ("1-epoll", "select.epoll directly instead of selectors"),
    ("2-straight", "straight path: recv, send those bytes back; stop reading while echo is pending"),
    ("3-quiet", "no transcript call per recv and send"),
    ("4-descriptors", "os.read/os.write on the fd epoll returns; functions in locals"),
    ("5-final", "per wake-up: 64-event buffer, stop flag every 16 wake-ups; dispatch on the event mask"),
    ("6-splice", "opt-in (--splice): os.splice socket -> pipe -> socket, no bytes object at all"),
    ("x-recv_into", "tried on step 4: sock.recv_into a reused buffer, send a memoryview slice"),
    ("x-readv", "tried on step 4: os.readv into a reused buffer, os.write a memoryview slice"),
]


# --- Building and running things. ---

def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(source: str, into: pathlib.Path) -> str | None:
    """Compile benchmarks/<source> with -O2; None without a C compiler or on a platform without epoll."""
    cc = compiler()
    if not cc or not sys.platform.startswith("linux"):
        return None
    binary = into / pathlib.Path(source).stem
    done = subprocess.run([cc, "-O2", "-o", str(binary), str(HERE / source)], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"could not compile {source}: {done.stderr.strip()[:300]}")
        return None
    return str(binary)


def pinned(cpu):
    """A preexec_fn that pins the child (and every thread it starts) to one core."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    """A server in a child process, pinned to the server core: its address and CPU time."""

    def __init__(self, argv: list[str], wrap: list[str] = (), start_timeout: float = 60.0):
        self.proc = subprocess.Popen([*wrap, *argv, "--port", "0"], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     preexec_fn=pinned(SERVER_CPU))
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(start_timeout)
        line = box[0] if box else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{' '.join(argv)} did not start: {line!r}")
        host, port = line.split()[-1].rsplit(":", 1)
        self.address = (host.strip("[]"), int(port))

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the whole process so far (Linux; NaN elsewhere)."""
        try:
            fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan"), float("nan")
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def load(loadgen: str | None, address, connections: int, seconds: float) -> dict:
    """One timed run of the load generator; its own CPU time too."""
    if loadgen is None:   # no C compiler: the Python load generator, in this process
        from lessons.kit.loadgen import run_load
        cpu0 = time.process_time()
        result = run_load(address, connections=connections, size=SIZE, duration=seconds, connect_timeout=60)
        return {"requests": result.requests, "seconds": result.seconds or seconds,
                "p50_us": result.latency(0.5) * 1e6, "p99_us": result.latency(0.99) * 1e6,
                "correct": result.correct, "loadgen_cpu_s": time.process_time() - cpu0}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([loadgen, address[0], str(address[1]), str(connections), str(SIZE), str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 120, preexec_fn=pinned(LOAD_CPU))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        fields = dict(pair.split("=") for pair in done.stdout.split())
        return {"requests": int(fields["requests"]), "seconds": float(fields["seconds"]),
                "p50_us": float(fields["p50_us"]), "p99_us": float(fields["p99_us"]),
                "correct": fields["wrong"] == "0" and fields["errors"] == "0",
                "loadgen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}
    except (KeyError, ValueError):
        return {"requests": 0, "seconds": seconds, "p50_us": 0.0, "p99_us": 0.0, "correct": False,
                "loadgen_cpu_s": 0.0, "failure": (done.stdout + done.stderr).strip()[:300]}


# --- Part 1: the profile behind each step. ---

GROUPS = [   # (group, pattern on callgrind's "file:function"); the first match wins
    ("GIL and thread switching", r"ceval_gil|take_gil|drop_gil|pthread_mutex|pthread_cond|SaveThread|RestoreThread"
                                 r"|pystate\.c|_PyThreadState"),
    ("memory allocation", r"malloc\.c|arena\.c|obmalloc\.c|:(malloc|free|realloc)$"),
    ("bytecode interpreter", r"ceval\.c|frame\.c|pycore_frame|specialize\.c|object\.h:_PyEval"),
    ("C behind each call: arguments, system-call wrappers", r"sysdeps|cancellation|fileutils|socketmodule"
                                 r"|selectmodule|posixmodule|getargs|clinic|modsupport|abstract\.c"),
    ("objects: ints, tuples, bytes, dicts, calls", r"Objects/|gcmodule|call\.c|Python/"),
]


def callgrind_profile(step: str, loadgen: str, seconds: float) -> dict:
    """User-space instructions of one step under callgrind, per request at 1 and at 10 connections.

    Only the server's thread is counted (the main thread of serve mode just
    waits for a signal). With 1 connection every request costs one wake-up
    (epoll_wait) and one event; with 10, a wake-up serves several events. The
    two runs give the cost per event and per wake-up apart, which does not
    depend on how busy the machine was, as the number of events per wake-up does.
    """
    out = pathlib.Path(tempfile.mkdtemp(prefix="fast-echo-cg-"))
    server = Server([PY, str(HERE / "fast_echo_steps.py"), step],
                    wrap=["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                          f"--callgrind-out-file={out}/cg.out"], start_timeout=180)

    def control(*args):
        subprocess.run(["callgrind_control", *args, str(server.proc.pid)], capture_output=True, timeout=120)

    requests = {}
    try:
        load(loadgen, server.address, 10, 1.0)                 # warm up, uncounted
        control("--instr=on")
        for n in (1, 10):
            control("--zero")
            requests[n] = load(loadgen, server.address, n, seconds)["requests"]
            control("--dump")                                  # dump n° 1, then 2
        control("--instr=off")
    finally:
        server.stop()
    result = {}
    for part, n in enumerate((1, 10), start=1):
        # One file per thread: the server's thread is the one that did the work.
        dumps = [(int(re.search(r"^summary: (\d+)", t, re.M).group(1)), path, t)
                 for path in glob.glob(f"{out}/cg.out.{part}-*")
                 for t in [pathlib.Path(path).read_text(errors="replace")]]
        if not dumps or not requests[n]:
            return {"failure": f"no callgrind dump or no requests at {n} connection(s)"}
        total, path, text = max(dumps)
        result[n] = _callgrind_summary(path, text, total, requests[n])
    shutil.rmtree(out, ignore_errors=True)
    # per request = per event + per wake-up x wake-ups per request: two runs, two unknowns.
    one, ten = result[1], result[10]
    waits1, waits10 = one["epoll_waits_per_request"], ten["epoll_waits_per_request"]
    if waits1 - waits10 > 0.2:
        per_wakeup = (one["per_request"] - ten["per_request"]) / (waits1 - waits10)
        result["per_event"] = ten["per_request"] - per_wakeup * waits10
        result["per_wakeup"] = per_wakeup
    return result


def _callgrind_summary(path: str, text: str, total: int, requests: int) -> dict:
    annotate = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True,
                              text=True).stdout
    functions = []
    for m in re.finditer(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", annotate, re.M):
        name = m.group(2)
        if name == "PROGRAM":
            continue
        name = re.sub(r".*Python-3\.\d+\.\d+/", "", name)
        name = re.sub(r"^\./\w+/\./\w+/|^\./", "", name)
        functions.append((name, int(m.group(1).replace(",", ""))))
    groups = {g: 0 for g, _ in GROUPS} | {"other": 0}
    for name, ir in functions:
        group = next((g for g, pattern in GROUPS if re.search(pattern, name)), "other")
        groups[group] += ir
    return {"requests": requests, "instructions": total, "per_request": total / requests,
            "epoll_waits_per_request": _calls_to(text, "epoll_wait") / requests,
            "groups_per_request": {g: ir / requests for g, ir in groups.items()},
            "top_per_request": [(n, ir / requests) for n, ir in sorted(functions, key=lambda f: -f[1])[:8]]}


def _calls_to(text: str, function: str) -> int:
    """How many calls callgrind recorded to a function (callgrind compresses names to (id))."""
    ids = set(re.findall(rf"^c?fn=\((\d+)\) {re.escape(function)}$", text, re.M))
    calls = 0
    for m in re.finditer(r"^cfn=\((\d+)\)(?: .*)?\ncalls=(\d+)", text, re.M):
        if m.group(1) in ids:
            calls += int(m.group(2))
    return calls


def python_profile(step: str, loadgen: str | None, seconds: float) -> dict:
    """Python function calls per request of one step, from cProfile, with the server in a thread here."""
    import fast_echo_steps
    serve = fast_echo_steps.STEPS[step]
    profiler = cProfile.Profile()

    def profiled(listener, stop, log):
        profiler.enable()          # profiles only the thread that enables it: the server's
        try:
            serve(listener, stop, log)
        finally:
            profiler.disable()

    mask = os.sched_getaffinity(0)
    if PIN:
        os.sched_setaffinity(0, {SERVER_CPU})
    try:
        # Serve mode's transcript: it keeps only accepts, closes and errors, and keeps none here.
        with running(profiled, log=Transcript(maxlen=1000, kinds=set())) as server:
            result = load(loadgen, server.address, 10, seconds)
    finally:
        if PIN:
            os.sched_setaffinity(0, mask)
    stats = pstats.Stats(profiler, stream=io.StringIO())
    requests = max(1, result["requests"])
    calls = sorted(((pstats.func_std_string(f), v[1]) for f, v in stats.stats.items()), key=lambda c: -c[1])
    return {"requests": result["requests"], "calls_per_request": stats.total_calls / requests,
            "top_calls_per_request": [(_short(name), n / requests) for name, n in calls[:6]]}


def _short(name: str) -> str:
    name = re.sub(r".*/lessons/", "lessons/", name)
    name = re.sub(r".*/benchmarks/", "benchmarks/", name)
    return re.sub(r".*/lib/python3\.\d+/", "", name)


def profiles(loadgen: str | None, quick: bool) -> dict:
    valgrind = shutil.which("valgrind") and shutil.which("callgrind_control") and loadgen
    if not valgrind:
        print("no valgrind (or no C load generator): instruction counts skipped, cProfile only")
    results = {}
    for step, change in STEPS:
        if quick and step not in ("0-lesson05", "5-final"):
            continue
        entry = {"change": change, "cprofile": python_profile(step, loadgen, 0.3 if quick else 2.0)}
        if valgrind and not quick:
            entry["callgrind"] = callgrind_profile(step, loadgen, 3.0)
        results[step] = entry
        cp, cg = entry["cprofile"], entry.get("callgrind", {})
        print(f"  {step:14} {change}")
        print(f"      cProfile: {cp['calls_per_request']:.1f} Python calls per request; most: "
              + ", ".join(f"{n} {c:.2f}" for n, c in cp["top_calls_per_request"]))
        if 10 in cg:
            print(f"      callgrind, user-space instructions per request: {cg[1]['per_request']:,.0f} at 1 connection, "
                  f"{cg[10]['per_request']:,.0f} at 10 ({cg[10]['epoll_waits_per_request']:.2f} epoll_wait per request)"
                  + (f"; per event {cg['per_event']:,.0f}, per wake-up {cg['per_wakeup']:,.0f}" if "per_event" in cg else ""))
            print("      by group, at 10: " + ", ".join(f"{g} {ir:,.0f}" for g, ir in cg[10]["groups_per_request"].items()))
            print("      top functions, at 10: " + ", ".join(f"{n} {ir:,.0f}" for n, ir in cg[10]["top_per_request"]))
        elif cg:
            print(f"      callgrind: {cg.get('failure')}")
        sys.stdout.flush()
    print("\n| step | what changed | Python calls/request | instructions/request, 1 connection | 10 connections "
          "| per event | per wake-up |")
    print("|---|---|---|---|---|---|---|")
    for step, entry in results.items():
        cg = entry.get("callgrind", {})
        cells = [f"{cg[n]['per_request']:,.0f}" if n in cg else "" for n in (1, 10)]
        cells += [f"{cg[k]:,.0f}" if k in cg else "" for k in ("per_event", "per_wakeup")]
        print(f"| {step} | {entry['change']} | {entry['cprofile']['calls_per_request']:.1f} | " + " | ".join(cells) + " |")
    return results


# --- Part 2: side by side. ---

def contenders(echo_c: str | None, with_steps: bool) -> dict[str, list[str]]:
    servers = {"lesson 05 selectors": [PY, "-m", "lessons.05_select", "serve", "--quiet"]}
    step = lambda name: [PY, str(HERE / "fast_echo_steps.py"), name]   # noqa: E731
    if with_steps:
        for name in ("1-epoll", "2-straight", "3-quiet", "4-descriptors"):
            servers[f"step {name}"] = step(name)
    servers[FAST] = [PY, "-m", "lessons.kit.fastecho", "--quiet"]
    servers[FAST_SPLICE] = [PY, "-m", "lessons.kit.fastecho", "--quiet", "--splice"]
    servers["asyncio Protocol"] = [PY, "-m", "lessons.kit.baselines", "protocol"]
    if HAVE_UVLOOP:
        servers["uvloop Protocol"] = [PY, "-m", "lessons.kit.baselines", "protocol", "--uvloop"]
    if echo_c:
        servers["C epoll echo"] = [echo_c]
    return servers


def side_by_side(loadgen, servers: dict, connections: list[int], warmup: float, rounds: int,
                 seconds: float) -> dict:
    results: dict = {}
    running_servers = {name: Server(argv) for name, argv in servers.items()}
    try:
        for n in connections:
            print(f"  {n:,} connections: warm-up {warmup:g} s each, then {rounds} rounds of {seconds:g} s", flush=True)
            for name, server in running_servers.items():
                load(loadgen, server.address, n, warmup)
            runs: dict = {name: [] for name in servers}
            for r in range(rounds):
                for name, server in running_servers.items():
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"{name} exited")
                    load1 = os.getloadavg()[0]
                    user0, sys0 = server.cpu()
                    result = load(loadgen, server.address, n, seconds)
                    user1, sys1 = server.cpu()
                    requests = max(1, result["requests"])
                    result.update(rps=result["requests"] / result["seconds"], loadavg_1min=load1,
                                  server_user_us=(user1 - user0) / requests * 1e6,
                                  server_sys_us=(sys1 - sys0) / requests * 1e6,
                                  loadgen_busy=result["loadgen_cpu_s"] / result["seconds"])
                    runs[name].append(result)
                    print(f"    round {r + 1} {name:28} {result['rps']:>9,.0f} req/s  server CPU/request "
                          f"{result['server_user_us']:5.1f} µs user + {result['server_sys_us']:5.1f} µs system  "
                          f"load generator {result['loadgen_busy']:4.0%} busy  p99 {result['p99_us']:,.0f} µs  "
                          f"load {load1:.2f}  {'correct' if result['correct'] else 'WRONG: ' + result.get('failure', '')}",
                          flush=True)
            results[n] = {name: summarize(r) for name, r in runs.items()}
    finally:
        for server in running_servers.values():
            server.stop()
    return results


def summarize(runs: list[dict]) -> dict:
    med = lambda key: statistics.median(r[key] for r in runs)   # noqa: E731
    return {"median_rps": med("rps"), "server_user_us": med("server_user_us"),
            "server_sys_us": med("server_sys_us"), "loadgen_busy": med("loadgen_busy"),
            "p50_us": med("p50_us"), "p99_us": med("p99_us"), "loadavg_1min": med("loadavg_1min"),
            "all_correct": all(r["correct"] for r in runs), "rounds": runs}


def table(results: dict, ceiling_name: str | None) -> tuple[str, dict]:
    """The side-by-side table in Markdown, and each connection count's ceiling."""
    lines, ceilings = [], {}
    for n, by_server in results.items():
        ceiling = (by_server[ceiling_name]["median_rps"] if ceiling_name in by_server
                   else max(s["median_rps"] for s in by_server.values()))
        ceilings[n] = ceiling
        uv = by_server.get("uvloop Protocol", {}).get("median_rps")
        c = by_server.get("C epoll echo", {}).get("median_rps")
        lines.append(f"\n{n:,} connections (load generator's ceiling: {ceiling:,.0f} req/s, "
                     f"its rate against {ceiling_name or 'the fastest server'})\n")
        lines.append("| server | req/s | × uvloop | × C | server CPU µs/request (user + system) "
                     "| load generator busy | p99 µs | load avg |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, s in by_server.items():
            mark = " ≈ceiling" if s["median_rps"] >= 0.9 * ceiling else ""
            lines.append(
                f"| {name} | {s['median_rps']:,.0f}{mark} | {_ratio(s['median_rps'], uv)} | {_ratio(s['median_rps'], c)} "
                f"| {s['server_user_us'] + s['server_sys_us']:.1f} ({s['server_user_us']:.1f} + {s['server_sys_us']:.1f}) "
                f"| {s['loadgen_busy']:.0%} | {s['p99_us']:,.0f} | {s['loadavg_1min']:.2f} |"
                + ("" if s["all_correct"] else " WRONG REPLIES"))
        for name in (FAST, FAST_SPLICE):
            fast = by_server.get(name, {}).get("median_rps")
            if fast and uv and c:
                lines.append(f"\ntargets at {n:,} connections, {name}: {fast / uv:.2f}× uvloop (target 1.0: "
                             f"{'met' if fast >= uv else 'not met'}), {fast / c:.2f}× C (target 0.8: "
                             f"{'met' if fast >= 0.8 * c else 'not met'})")
    return "\n".join(lines), ceilings


def _ratio(x, base) -> str:
    return f"{x / base:.2f}×" if base else "n/a"


class Tee(io.TextIOBase):
    """Print to the terminal and keep a copy for the results file."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.copy.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test: a few seconds, nothing saved")
    parser.add_argument("--no-profiles", action="store_true", help="skip part 1 (the profiles)")
    parser.add_argument("--no-steps", action="store_true", help="leave the intermediate steps out of part 2")
    parser.add_argument("--profiles-only", action="store_true", help="run part 1 only")
    parser.add_argument("--save", action="store_true", help="save results even with --quick")
    args = parser.parse_args()
    tee = Tee(sys.stdout)
    sys.stdout = tee
    raise_fd_limit(4096)   # the load generator's 1,000 connections, and each server's: children inherit it
    build_dir = pathlib.Path(tempfile.mkdtemp(prefix="fast-echo-"))
    loadgen, echo_c = build("loadgen.c", build_dir), build("echo_c.c", build_dir)
    info = machine() | {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                        "load_average_at_start": os.getloadavg(), "uvloop": HAVE_UVLOOP,
                        "pinned": PIN, "server_cpu": SERVER_CPU, "load_cpu": LOAD_CPU,
                        "load_generator": "loadgen.c" if loadgen else "python (lessons/kit/loadgen.py)",
                        "command": " ".join(["python", "benchmarks/fast_echo.py", *sys.argv[1:]])}
    if args.quick:
        connections, warmup, rounds, seconds = [10, 100], 0.2, 1, 0.5
        args.no_steps = True
    else:
        connections, warmup, rounds, seconds = [10, 1000], 2.0, 3, 3.0
    print(f"machine: {info}")
    print(f"load generator: {info['load_generator']}; "
          + (f"server pinned to core {SERVER_CPU}, load generator to core {LOAD_CPU}" if PIN else "no CPU pinning"))
    if not HAVE_UVLOOP:
        print("uvloop is not installed (pip install uvloop; not on Windows): its row is left out")
    if not echo_c:
        print("no C compiler (or not Linux): no C epoll echo; the ceiling is the fastest server's rate")
    report: dict = {"machine": info, "connections": connections, "warmup_s": warmup, "rounds": rounds,
                    "round_s": seconds, "message_bytes": SIZE}
    ok = True
    try:
        if not args.no_profiles:
            print("\npart 1: the profile behind each step (10 connections)")
            report["profiles"] = profiles(loadgen, args.quick)
        if not args.profiles_only:
            print("\npart 2: side by side")
            servers = contenders(echo_c, with_steps=not args.no_steps)
            results = side_by_side(loadgen, servers, connections, warmup, rounds, seconds)
            text, ceilings = table(results, "C epoll echo" if echo_c else None)
            print(text)
            report["side_by_side"] = {str(n): r for n, r in results.items()}
            report["ceilings"] = {str(n): c for n, c in ceilings.items()}
            ok = all(s["all_correct"] for r in results.values() for s in r.values())
        report["load_average_at_end"] = os.getloadavg()
        print(f"\nload average at the end: {report['load_average_at_end']}")
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        sys.stdout = tee.stream
    if not args.quick or args.save:
        kind = "-quick" if args.quick else "-profiles" if args.profiles_only else ""
        stem = HERE / "results" / f"fast-echo-{datetime.date.today().isoformat()}{kind}"
        stem.with_suffix(".txt").write_text(tee.copy.getvalue())
        stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"saved {stem.relative_to(ROOT)}.txt and .json")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
