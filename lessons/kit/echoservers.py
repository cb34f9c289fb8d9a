"""Every echo server in the workbook, in one list: for the contract tests, the lab and the benchmarks.

Each keeps lesson 02's echo contract (every byte back, in order, until the
client half-closes; resets and silent or greedy clients hurt nobody else).
An entry says how to start the server as a child process (the lab and the
benchmarks measure it there) and where its serve function lives (the tests
run it in process). Written as names, not imports: the kit imports no lesson.
"""
from __future__ import annotations

import importlib.util
import selectors
import shutil
import sys
from dataclasses import dataclass, field

from .processes import ROOT


@dataclass(frozen=True)
class EchoServer:
    """One server design: its name, its command line, and its serve function."""
    name: str
    argv: tuple                      # python ARGV --port 0 starts it in a child process
    lesson: str = ""                 # in process: lessons.<lesson>.<function>(**kwargs)
    function: str = "serve"
    kwargs: dict = field(default_factory=dict)
    concurrent: bool = True          # serves many clients at once (lesson 02's does not)
    needs: str = ""                  # an optional module it needs (uvloop), or ""
    program: str = ""                # a C program in benchmarks/ (argv are then its arguments), or ""

    def available(self) -> bool:
        """Whether this machine can run it (its optional module is installed; for a C program,
        a compiler, epoll and the source are here: kit.generators.build compiles it)."""
        if self.program:
            return (sys.platform.startswith("linux") and (BENCHMARKS / self.program).exists()
                    and any(shutil.which(cc) for cc in ("cc", "gcc", "clang")))
        return not self.needs or importlib.util.find_spec(self.needs) is not None

    def start(self, **kwargs):
        """Start it in a child process (compiling a C program first): a :class:`.processes.ServerProcess`."""
        from .processes import ServerProcess
        if self.program:
            from .generators import build
            binary = build(self.program)
            if binary is None:
                raise RuntimeError(f"could not build benchmarks/{self.program}")
            return ServerProcess([binary, *self.argv], python=False, **kwargs)
        return ServerProcess(list(self.argv), **kwargs)


def _lesson(name: str, lesson: str, *options: str, function: str = "serve", concurrent: bool = True,
            **kwargs) -> EchoServer:
    return EchoServer(name, ("-m", f"lessons.{lesson}", "serve", "--quiet", *options), lesson, function,
                      kwargs, concurrent)


BENCHMARKS = ROOT / "benchmarks"   # the C sources: in the checkout, not in the package

_BACKENDS = [name for name, cls in [("select", "SelectSelector"), ("poll", "PollSelector"),
                                    ("epoll", "EpollSelector"), ("kqueue", "KqueueSelector")]
             if hasattr(selectors, cls)]

ECHO_SERVERS: list[EchoServer] = [
    _lesson("02 iterative", "02_echo", concurrent=False),
    _lesson("07 thread per client", "07_scaling"),
    _lesson("04 polling", "04_nonblocking"),
    EchoServer("05 select() by hand", (), "05_select", "serve_select"),   # step 2: in process only
    _lesson("05 select()", "05_select", "--selector", "select", function="serve_selectors", selector="select"),
    _lesson("05 selectors (default)", "05_select"),
    *[_lesson(f"05 selectors/{backend}", "05_select", "--selector", backend, function="serve_selectors",
              selector=backend) for backend in _BACKENDS if backend != "select"],
    _lesson("08 asyncio streams", "08_asyncio", "--echo", function="serve_echo"),
    EchoServer("08 asyncio Protocol", (), "08_asyncio", "serve_echo_protocol"),   # in process only
    EchoServer("asyncio streams", ("-m", "lessons.kit.baselines", "streams")),
    EchoServer("asyncio Protocol", ("-m", "lessons.kit.baselines", "protocol")),
    EchoServer("asyncio Protocol + uvloop", ("-m", "lessons.kit.baselines", "protocol", "--uvloop"),
               needs="uvloop"),
    # Lesson 05's loop with the Python work per message cut down (lessons/kit/fastecho.py).
    _lesson("05 selectors --fast", "05_select", "--fast", function="serve_fast"),
    # The yardstick: a C epoll echo server, the ceiling that the lab measures its load generator against.
    EchoServer("C epoll echo", ("--quiet",), program="echo_c.c"),
]


def echo_servers(in_process: bool = False) -> list[EchoServer]:
    """The servers this machine can run: as child processes, or (``in_process``) as serve functions."""
    return [s for s in ECHO_SERVERS if s.available() and (s.lesson if in_process else s.argv)]
