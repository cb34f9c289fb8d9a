"""A thread-safe record of what each side of a conversation did, and a view of it.

Servers in this workbook never print: a print from a background thread lands in
whichever notebook cell happens to be running, and its timing varies from run to
run. Instead both sides *record* events here, and the notebook renders the
record after the client step, as two lanes::

    #  client                      server
    1                              listen
    2  connect
    3  send 5 bytes  b'hello'
    4                              accept client 1
    5                              recv 5 bytes  b'hello'

Threads interleave differently on every run, so the view does not use arrival
order. It merges the two lanes by cause and effect (a recv comes after the send
that fed it, an EOF after the peer's close, an accept after a connect), which
gives the same picture on every run and on every machine. For that to hold,
record a send, connect, shutdown or close *before* doing it, and a recv or
accept *after* it returns.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from rich.table import Table
from rich.text import Text

CLIENT, SERVER = "client", "server"

# Event kinds. Only these take part in the causal merge; any other kind
# (a free-form "note") is placed by arrival order within its own lane.
LISTEN, CONNECT, ACCEPT = "listen", "connect", "accept"
SEND, RECV, EOF = "send", "recv", "eof"
SHUTDOWN, CLOSE, ERROR, NOTE = "shutdown", "close", "error", "note"
READY = "ready"   # a wake-up of an event loop; detail lists what was ready (lessons 04, 05)
HANDSHAKE_DONE = "handshake done"   # a note's detail that starts so takes part too (TLS, lesson 11)


@dataclass(frozen=True)
class Event:
    """One thing one side did: a send, a recv, an accept, a note..."""
    side: str          # CLIENT or SERVER
    kind: str          # one of the kinds above
    who: str = ""      # which connection, as a label: "client 1", "alice", ...
    nbytes: int = 0    # for SEND and RECV
    detail: str = ""   # short, deterministic text: never a port or an address

    def describe(self) -> str:
        """The event in a few words, as a transcript row shows it."""
        words = {
            SEND: f"send {self.nbytes:,} byte{'s' * (self.nbytes != 1)}",
            RECV: f"recv {self.nbytes:,} byte{'s' * (self.nbytes != 1)}",
            EOF: "recv → b'' (EOF)",
            ACCEPT: f"accept {self.who}".rstrip(),
        }
        text = words.get(self.kind, self.kind)
        if self.kind == NOTE:
            text = self.detail
        elif self.detail:
            text = f"{text}  {self.detail}"
        return text


class Transcript:
    """Events from both sides, appended under a lock, capped in length."""

    def __init__(self, maxlen: int = 100_000, live: Optional[Callable[[Event], None]] = None,
                 kinds: Optional[set] = None):
        self._events: collections.deque[Event] = collections.deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._live = live    # serve mode: show each event as it happens
        self._kinds = kinds  # keep only these kinds (None: all); drops the rest cheaply

    def wants(self, kind: str) -> bool:
        """Whether record(kind) would keep anything: skip building costly details if not."""
        return self._kinds is None or kind in self._kinds

    def record(self, side: str, kind: str, who: str = "", nbytes: int = 0, detail: str = "") -> Optional[Event]:
        """Append an event (thread-safe); returns it, or None if this transcript does not keep that kind."""
        if self._kinds is not None and kind not in self._kinds:
            return None
        event = Event(side, kind, who, nbytes, detail)
        with self._changed:
            self._events.append(event)
            self._changed.notify_all()
        if self._live is not None:
            self._live(event)
        return event

    def events(self, side: Optional[str] = None) -> list[Event]:
        """The events so far, in arrival order (only one side's, if given)."""
        with self._lock:
            return [e for e in self._events if side is None or e.side == side]

    def wait_for(self, predicate: Callable[[list[Event]], bool], timeout: float = 5.0) -> bool:
        """Block until predicate(events) holds, or timeout; returns whether it held."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self._events)), timeout)

    def wait_for_event(self, side: str, kind: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until ``side`` has recorded ``count`` events of ``kind``, or timeout; returns whether it did."""
        return self.wait_for(lambda evs: sum(e.side == side and e.kind == kind for e in evs) >= count, timeout)

    def timeline(self, title: str = "readiness timeline", max_rows: int = 40):
        """A rich Table with one row per event-loop wake-up: what was ready, what was done."""
        return render_timeline(self.events(SERVER), title=title, max_rows=max_rows)

    def ordered(self) -> list[Event]:
        """The events in causal order: the same on every run (see causal_order)."""
        return causal_order(self.events())

    def render(self, title: str = "transcript", max_rows: int = 60, causal: bool = True):
        """A rich Table with a client lane and a server lane.

        ``causal=False`` keeps arrival order, which is only deterministic when a
        single thread recorded everything (as in lesson 01's anatomy).
        """
        events = self.ordered() if causal else self.events()
        return render_lanes(events, title=title, max_rows=max_rows)

    def sequence(self, title: str = "transcript", max_rows: int = 60, causal: bool = True):
        """The same record as a sequence diagram (an SVG picture): see kit.sequence."""
        from .sequence import sequence_diagram   # (sequence imports this module)
        return sequence_diagram(self.ordered() if causal else self.events(), title=title, max_rows=max_rows)


def _other(side: str) -> str:
    return SERVER if side == CLIENT else CLIENT


def causal_order(events: Iterable[Event]) -> list[Event]:
    """Merge the client lane and the server lane in an order that respects causes.

    Each lane keeps its own order. The merge advances the client lane while its
    next event's cause has happened, then the server lane, and falls back to
    arrival order only if neither can move (a record that breaks the rules above).
    """
    events = list(events)
    arrival = {id(e): i for i, e in enumerate(events)}
    lanes = {CLIENT: [e for e in events if e.side == CLIENT],
             SERVER: [e for e in events if e.side == SERVER]}
    pos = {CLIENT: 0, SERVER: 0}
    sent = collections.Counter()      # (side, who) -> bytes sent so far
    received = collections.Counter()  # (side, who) -> bytes received so far
    closed = set()                    # (side, who) that shut down or closed
    accepted, handshaken = set(), set()   # who the server accepted; (side, who) done with TLS
    listening = False
    connects = accepts = 0
    out: list[Event] = []

    def ready(e: Event) -> bool:
        peer = (_other(e.side), e.who)
        if e.kind == RECV:
            return sent[peer] >= received[(e.side, e.who)] + e.nbytes
        if e.kind == EOF:
            return peer in closed
        if e.kind == ACCEPT:
            return connects > accepts
        if e.kind == CONNECT:
            return listening or not lanes[SERVER]
        if e.kind == NOTE and e.detail.startswith(HANDSHAKE_DONE):
            # TLS (lesson 11): the client's handshake ends with the server's answer, so after
            # the accept; the server's ends with the client's last message.
            if e.side == CLIENT:
                return e.who in accepted or not any(x.kind == ACCEPT and x.who == e.who
                                                    for x in lanes[SERVER])
            return (CLIENT, e.who) in handshaken or not any(
                x.kind == NOTE and x.who == e.who and x.detail.startswith(HANDSHAKE_DONE)
                for x in lanes[CLIENT])
        return True

    def take(e: Event) -> None:
        nonlocal listening, connects, accepts
        key = (e.side, e.who)
        if e.kind == SEND:
            sent[key] += e.nbytes
        elif e.kind == RECV:
            received[key] += e.nbytes
        elif e.kind in (SHUTDOWN, CLOSE):
            closed.add(key)
        elif e.kind == LISTEN:
            listening = True
        elif e.kind == CONNECT:
            connects += 1
        elif e.kind == ACCEPT:
            accepts += 1
            accepted.add(e.who)
        elif e.kind == NOTE and e.detail.startswith(HANDSHAKE_DONE):
            handshaken.add(key)
        out.append(e)

    while pos[CLIENT] < len(lanes[CLIENT]) or pos[SERVER] < len(lanes[SERVER]):
        for side in (CLIENT, SERVER):
            if pos[side] < len(lanes[side]) and ready(lanes[side][pos[side]]):
                take(lanes[side][pos[side]])
                pos[side] += 1
                break
        else:  # neither lane can move: the record broke the rules; keep arrival order
            # (by identity: two events with equal fields are still two different events)
            nxt = min((lanes[s][pos[s]] for s in lanes if pos[s] < len(lanes[s])),
                      key=lambda e: arrival[id(e)])
            take(nxt)
            pos[nxt.side] += 1
    return out


def render_lanes(events: list[Event], title: str = "transcript", max_rows: int = 60) -> Table:
    """A rich Table with one column per side (client, server) and one row per event."""
    # A lane nobody recorded in (a server-only view, say) is left out.
    lanes = [side for side in (CLIENT, SERVER) if any(e.side == side for e in events)] or [CLIENT, SERVER]
    table = Table(title=title, title_justify="left", show_lines=False, min_width=len(title) + 2)
    table.add_column("#", justify="right", style="dim")
    for side in lanes:
        table.add_column(side, style="cyan" if side == CLIENT else "magenta")
    shown = events if len(events) <= max_rows else events[: max_rows - 1]
    # Name the connection on each row only when there is more than one to tell apart.
    several = len({e.who for e in events if e.who}) > 1
    for i, e in enumerate(shown, 1):
        text = e.describe()
        if several and e.who and e.kind != ACCEPT:
            text = f"[{e.who}] {text}"
        style = "bold red" if e.kind == ERROR else ""
        # Text(), not a str: "[client 2]" must not be read as rich markup.
        cells = [Text(text, style=style) if side == e.side else Text("") for side in lanes]
        table.add_row(str(i), *cells)
    if len(events) > len(shown):
        table.add_row("…", f"{len(events) - len(shown):,} more events", *[""] * (len(lanes) - 1))
    return table


def render_timeline(events: list[Event], title: str = "readiness timeline", max_rows: int = 40):
    """Group a server's events under the READY event that woke the loop before them."""
    rows: list[tuple[str, list[str]]] = []
    for e in events:
        if e.kind == READY:
            rows.append((e.detail, []))
        elif rows and e.kind != LISTEN:
            who = f"{e.who}: " if e.who and e.kind != ACCEPT else ""
            rows[-1][1].append(who + e.describe())
    table = Table(title=title, title_justify="left", min_width=len(title) + 2)
    table.add_column("wake-up", justify="right", style="dim")
    table.add_column("ready", style="cyan")
    table.add_column("what the loop did", style="magenta")
    for i, (ready, done) in enumerate(rows[:max_rows], 1):
        table.add_row(str(i), Text(ready), Text("\n".join(done) or "(nothing)"))
    if len(rows) > max_rows:
        table.add_row("…", f"{len(rows) - max_rows:,} more wake-ups", "")
    return table
