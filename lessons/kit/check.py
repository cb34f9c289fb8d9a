"""Run a learner's function against scenarios and report one line per scenario.

    result = check("recv_exactly", recv_exactly, SCENARIOS)
    ✓ all at once: recv_exactly(sock, 5) → b'hello'
    ✗ one byte at a time: recv_exactly(sock, 5) → b'h', expected b'hello'

A check never raises and never hangs: an exception from the learner's code is
reported as what came back, and a call that runs past its deadline is cut off
by shutting down the sockets it was given (which makes a blocked or looping
recv() return or fail). So the output of an unfinished exercise is stable.
"""
from __future__ import annotations

import contextlib
import errno
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from rich.console import Console
from rich.markup import escape

DEADLINE = 3.0  # seconds a single scenario may take


@dataclass
class Outcome:
    """What a scenario saw: the call, what came back, what was expected."""
    call: str
    got: str
    expected: str
    ok: bool


class Guard:
    """Sockets a scenario hands to the learner's code, to cut off if it overruns."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def add(self, sock: socket.socket) -> socket.socket:
        """Hand a socket to the learner's code, and remember it."""
        self.socks.append(sock)
        return sock

    def cut_off(self) -> None:
        """End whatever the learner's code is doing with these sockets."""
        # shutdown() wakes a blocked recv(); close() then makes the next recv()
        # raise, which ends even a loop that spins on b'' without checking it.
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@dataclass
class CheckResult:
    """The tally of one check: a (passed?, text) line per scenario."""
    name: str
    lines: list = field(default_factory=list)  # (ok, text)

    @property
    def passed(self) -> int:
        return sum(ok for ok, _ in self.lines)

    @property
    def total(self) -> int:
        return len(self.lines)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def __repr__(self) -> str:
        verdict = "all passed" if self.ok else "not yet"
        return f"{self.name}: {self.passed}/{self.total} scenarios passed ({verdict})"


def describe(value) -> str:
    """A short, deterministic description of a value or an exception."""
    if isinstance(value, BaseException):
        return f"raised {describe_error(value)}"
    if isinstance(value, tuple):
        return "(" + ", ".join(describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    text = repr(value)
    if len(text) <= 60:
        return text
    if isinstance(value, (bytes, bytearray)):
        return f"{text[:30]}… ({len(value):,} bytes)"
    if isinstance(value, str):
        return f"{text[:30]}… ({len(value):,} characters)"
    return text[:57] + "…"


def describe_error(exc: BaseException) -> str:
    """Name an exception the same way on every OS: errno numbers and messages
    differ between Linux, macOS and Windows, errno *names* do not."""
    name = type(exc).__name__
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in errno.errorcode:
        return f"{name} ({errno.errorcode[code]})"
    text = str(exc)
    return f"{name}: {text}" if text else name


def run_scenario(scenario: Callable, fn: Callable, deadline: float = DEADLINE) -> Outcome:
    """Run one scenario in a worker thread; never raise, never hang."""
    guard = Guard()
    box: dict = {}

    def work():
        try:
            box["outcome"] = scenario(fn, guard)
        except BaseException as exc:  # a scenario's own bug still gives a line
            box["error"] = exc

    worker = threading.Thread(target=work, name="exercise-check", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        guard.cut_off()
        worker.join(1.0)
        if "outcome" in box and not box["outcome"].ok:
            outcome = box["outcome"]
            return Outcome(outcome.call, f"no answer within {deadline:g} s", outcome.expected, False)
        call = getattr(scenario, "call", "the call")
        return Outcome(call, f"no answer within {deadline:g} s (stuck in a loop or waiting forever?)",
                       getattr(scenario, "expected", "an answer"), False)
    if "error" in box:
        call = getattr(scenario, "call", "the call")
        return Outcome(call, describe(box["error"]), getattr(scenario, "expected", "an answer"), False)
    return box["outcome"]


def check(name: str, fn: Callable, scenarios: dict, console=None, deadline: float = DEADLINE) -> CheckResult:
    """Print a ✓ or ✗ line for each scenario and return the tally."""
    console = console or Console(highlight=False)
    result = CheckResult(name)
    for title, scenario in scenarios.items():
        outcome = run_scenario(scenario, fn, deadline)
        if outcome.ok:
            text = f"✓ {title}: {outcome.call} → {outcome.got}"
        else:
            text = f"✗ {title}: {outcome.call} → {outcome.got}; expected {outcome.expected}"
        result.lines.append((outcome.ok, text))
        console.print(escape(text), style="green" if outcome.ok else "red")
    return result


def scenario(call: str, expected: str):
    """Decorator: label a scenario with the call it makes and what it expects,
    so a timeout or a crash can still be reported in the same words."""
    def label(fn):
        fn.call, fn.expected = call, expected
        return fn
    return label


def expect_value(call: str, expected, run: Callable[[], object]) -> Outcome:
    """Call run(); the outcome passes if it returns ``expected``."""
    try:
        got = run()
    except Exception as exc:
        return Outcome(call, describe(exc), describe(expected), False)
    return Outcome(call, describe(got), describe(expected), got == expected)


def expect_error(call: str, error: type, run: Callable[[], object], hint: Optional[str] = None) -> Outcome:
    """Call run(); the outcome passes if it raises ``error``."""
    expected = f"raised {error.__name__}" + (f" ({hint})" if hint else "")
    try:
        got = run()
    except error as exc:
        return Outcome(call, describe(exc), expected, True)
    except Exception as exc:
        return Outcome(call, describe(exc), expected, False)
    return Outcome(call, describe(got), expected, False)
