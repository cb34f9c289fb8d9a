"""Draw a transcript as a sequence diagram: one lane per side, time flowing down.

The table of :mod:`.transcript` says what each side did; this picture shows
what went *between* them. Each event gets a row, in the order it is given
(``Transcript.ordered()``, the same on every run), and a mark on its lane::

      client                 server
        |                      |  listen
connect o---- handshake ------>o  accept client 1
   send o----- 11 bytes ------>o  recv 11 bytes
        o<---- 11 bytes -------o  send 11 bytes
    EOF o<------- FIN ---------o  close

Arrows: data (a send to the recv(s) that got its bytes, or one datagram to
its recv), the handshake (connect to accept), FIN (shutdown or close to the
peer's EOF), RST in red (an error such as ConnectionResetError). An orange
clock marks a timeout: an error such as TimeoutError, or a UDP client sending
again after waiting in vain (lesson 06's "try 1, then wait up to 0.5 s").
Notes are yellow boxes on their lane; row numbers are the table's numbers.

A side that recorded nothing but that the other side talked to (the chat
clients of lesson 03, seen only from the server) is drawn as a dashed lane
marked "not recorded"; its arrows are inferred from the recorded side.

The SVG is plain SVG 1.1 with inline attributes, no ids, scripts or CSS, a
white background (readable in dark themes), fixed sizes, and coordinates that
are integers or computed with + - * / and sqrt only (exactly rounded in IEEE
754), so the same events give the same bytes on every machine: nbval compares
it as text.
"""
from __future__ import annotations

import base64
import collections
import math
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, ERROR, NOTE, RECV, SEND,
                         SERVER, SHUTDOWN, Event)

WIDTH = 900          # fits a notebook column and a GitHub page
NUM_W = 34           # the left margin, for row numbers (the table's numbers)
LABEL_W = 210        # room for labels left of the first client lane
SERVER_W = 240       # ...and right of the server lane
TOP = 94             # first row's y: below the title and the lane headers
ROW, LINE = 26, 14   # a row's height, and each extra line of its label
FONT = "'DejaVu Sans Mono', Menlo, Consolas, 'Liberation Mono', monospace"
CHAR_W = 7.3         # width of a 12 px monospace character (DejaVu: 7.22), to fit labels
MAX_CLIENT_LANES = 3 # more connections than this share one client lane, labelled

LANE_COLOR = {CLIENT: "#0b7285", SERVER: "#862e9c"}   # the table's cyan and magenta, darker
INK, FAINT, WHITE = "#212529", "#868e96", "#ffffff"
STYLE = {  # arrow kind: (colour, width, dash pattern, legend text)
    "data": ("#343a40", 2, "", "data"),
    "handshake": ("#2b8a3e", 2, "", "handshake"),
    "fin": ("#5f3dc4", 2, "7 4", "FIN (no more data)"),
    "rst": ("#e03131", 3, "", "RST (reset)"),
    "timeout": ("#e8590c", 2, "", "timed out"),   # drawn as a clock, not an arrow
}
NOTE_FILL, NOTE_EDGE = "#fff9db", "#e0b100"

RESET = re.compile(r"Reset|Refused|Aborted|BrokenPipe|\bRST\b|\breset\b")
TIMEOUT = re.compile(r"Timeout|timed out|\btimeout\b", re.IGNORECASE)
WAITS = re.compile(r"\bwait\w*(?: up to| for)? ?([0-9][0-9.,]* ?(?:ms|s)\b)?")  # a datagram send that
                                   # waits for a reply: lesson 06's "try 1, then wait up to 0.5 s"
TALK = {CONNECT, ACCEPT, SEND, RECV, EOF, SHUTDOWN, CLOSE}


@dataclass
class Lane:
    side: str
    title: str
    recorded: bool   # False: drawn from what the other side recorded
    x: int = 0


class SequenceDiagram:
    """An SVG picture that Jupyter shows as an image; ``.svg`` is its text.

    It offers Jupyter two forms of the same picture. JupyterLab treats image/svg+xml as
    unsafe and shows only the text/plain summary for a notebook it does not trust (any
    notebook freshly cloned), so the picture also comes as text/html: an <img> whose
    source is the SVG, which survives JupyterLab's HTML sanitizer, nbconvert and GitHub.
    """

    def __init__(self, svg: str, summary: str, width: int, height: int):
        self.svg = svg
        self._summary = summary
        self._size = width, height

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_html_(self) -> str:
        data = base64.b64encode(self.svg.encode("utf-8")).decode("ascii")
        width, height = self._size
        return (f'<img src="data:image/svg+xml;base64,{data}" width="{width}" height="{height}" '
                f'style="max-width: 100%; height: auto" alt="{_xml(self._summary)}"/>')

    def __repr__(self) -> str:
        return self._summary

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self._summary)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.svg, encoding="utf-8")
        return path


def sequence_diagram(events, title: str = "transcript", max_rows: int = 60,
                     datagrams: Optional[bool] = None) -> SequenceDiagram:
    """Draw events (a list in causal order, or a Transcript) as a sequence diagram.

    ``datagrams``: pair each send with one recv (UDP) instead of following a
    byte stream (TCP). By default, a record with no listen, connect or accept
    is taken as datagrams.
    """
    if hasattr(events, "ordered"):
        events = events.ordered()
    events = list(events)
    max_rows = max(2, max_rows)
    if datagrams is None:
        datagrams = not any(e.kind in (CONNECT, ACCEPT, "listen") for e in events)
    lanes, lane_of, peer_of = _lanes(events)
    arrows, timeouts = _pair(events, lane_of, peer_of, datagrams)
    svg, height = _draw(events, title, max_rows, lanes, lane_of, arrows, timeouts)
    counts = collections.Counter(a.kind for a in arrows)
    summary = (f"<sequence diagram {title!r}: {' | '.join(lane.title for lane in lanes)}; "
               f"{len(events)} events; arrows: "
               f"{', '.join(f'{counts[k]} {k}' for k in STYLE if counts[k]) or 'none'}>")
    return SequenceDiagram(svg, summary, WIDTH, height)


# --- Who is on which lane. ---

def _distinct(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _natural(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


def _lanes(events: list[Event]):
    """The lanes (clients left, server right) and two maps: event → its lane, → its peer's lane.

    Each connection gets its own client lane (up to MAX_CLIENT_LANES), titled with the
    label both sides give it ("client 1"); a connection only the server recorded gets a
    dashed lane. Clients that label nothing (lesson 06's) share one lane.
    """
    talks = lambda e: e.kind in TALK or (e.kind == ERROR and RESET.search(e.detail))
    client = [e for e in events if e.side == CLIENT]
    server = [e for e in events if e.side == SERVER]
    mine = set(_distinct(e.who for e in client if e.who))   # connections the clients recorded
    if client and not mine:
        groups = {"": ("client", True)}                      # who → (lane title, recorded)
    else:
        whos = sorted(_distinct(e.who for e in events if e.who and (e.side == CLIENT or talks(e))),
                      key=_natural)   # client 2 right of client 1, and client 10 after client 9
        groups = {who: (who, who in mine) for who in whos}
        if len(groups) > MAX_CLIENT_LANES:   # too many: one lane for the recorded, one for the rest
            groups = {who: ("clients", who in mine) for who in whos}
        if len(groups) == 1:   # one connection: its lane is simply "client"
            groups = {who: ("client", rec) for who, (_, rec) in groups.items()}
        if not groups and (client or any(talks(e) for e in server)):
            groups = {"": ("client", bool(client))}
    lanes = [Lane(CLIENT, title, rec) for title, rec in _distinct(groups.values())]
    if server or any(talks(e) for e in client):
        lanes.append(Lane(SERVER, "server", bool(server)))
    if not lanes:
        lanes = [Lane(SERVER, "server", False)]
    # Client lanes share the space left of the server lane; the server's labels go right of it.
    clients = [lane for lane in lanes if lane.side == CLIENT]
    right = WIDTH - SERVER_W if len(lanes) > 1 else WIDTH // 2
    step = (right - NUM_W - LABEL_W) // max(1, len(clients))
    for i, lane in enumerate(clients):
        lane.x = NUM_W + LABEL_W + i * step
    if lanes[-1].side == SERVER:
        lanes[-1].x = right if clients else WIDTH // 2
    server_lane = len(lanes) - 1 if lanes[-1].side == SERVER else None
    index = {(lane.title, lane.recorded): i for i, lane in enumerate(clients)}

    def client_lane(who: str) -> Optional[int]:
        if not clients:
            return None
        return index.get(groups.get(who), 0)   # a connection nobody named: the first lane

    lane_of, peer_of = {}, {}
    for i, e in enumerate(events):
        if e.side == CLIENT:
            lane_of[i], peer_of[i] = client_lane(e.who), server_lane
        else:
            lane_of[i], peer_of[i] = server_lane, client_lane(e.who)
    return lanes, lane_of, peer_of


# --- Which event caused which: the arrows. ---

@dataclass
class Arrow:
    kind: str              # a key of STYLE
    start: Optional[int]   # index of the sending event, or None: from the peer's lifeline
    end: Optional[int]     # index of the receiving event, or None: to the peer's lifeline
    src: int               # lane indices
    dst: int
    label: str


def _bytes(n: int) -> str:
    return f"{n:,} byte{'s' * (n != 1)}"


def _pair(events: list[Event], lane_of, peer_of, datagrams: bool):
    """Match sends with recvs, connects with accepts, FINs with EOFs, and spot timeouts."""
    client_whos = {e.who for e in events if e.side == CLIENT and e.who}
    server_whos = {e.who for e in events if e.side == SERVER and e.who}
    by_who = bool(client_whos) and client_whos <= server_whos   # both sides name connections alike

    def conn(i: int):   # which connection an event belongs to, the same from either side
        e = events[i]
        client_lane = lane_of[i] if e.side == CLIENT else peer_of[i]
        return client_lane, (e.who if by_who else "")

    arrows: list[Arrow] = []
    waiting = collections.defaultdict(collections.deque)  # (kind, conn, receiving side) → sends
    stream = collections.defaultdict(list)                 # (conn, sending side) → [(start, end, index)]
    first = collections.Counter()                          # (conn, sending side) → first send not yet all read
    sent = collections.Counter()
    got = collections.Counter()
    finished = set()                                      # (conn, side) that sent FIN or RST
    timeouts: dict[int, str] = {}                          # retry index → "timed out after 0.2 s"
    last_wait: dict[int, int] = {}                        # lane → its datagram send still waiting

    def outgoing(kind, i, label):  # an arrow whose receiving end is not known yet
        arrow = Arrow(kind, i, None, lane_of[i], peer_of[i], label)
        if peer_of[i] is not None:
            arrows.append(arrow)
        return arrow

    def incoming(kind, i, label):  # the receiving end of something: match it, or infer it
        e = events[i]
        queue = waiting[(kind, conn(i), e.side)]
        if queue:
            arrow = queue.popleft()
            arrow.end = i
        elif peer_of[i] is not None:
            arrows.append(Arrow(kind, None, i, peer_of[i], lane_of[i], label))

    for i, e in enumerate(events):
        c, other = conn(i), (SERVER if e.side == CLIENT else CLIENT)
        if e.kind == CONNECT:
            waiting[("handshake", c, other)].append(outgoing("handshake", i, "handshake"))
        elif e.kind == ACCEPT:
            incoming("handshake", i, "handshake")
        elif e.kind == SEND and datagrams:   # (lesson 06's client records no size: "datagram")
            size = "datagram" if e.nbytes == 0 and e.detail else _bytes(e.nbytes)
            waiting[("data", c, other)].append(outgoing("data", i, size))
            if e.side == CLIENT:
                if lane_of[i] in last_wait:   # sent again without a reply: the wait timed out
                    wait = WAITS.search(events[last_wait.pop(lane_of[i])].detail)
                    timeouts[i] = f"timed out after {wait.group(1)}" if wait.group(1) else "timed out"
                if WAITS.search(e.detail):
                    last_wait[lane_of[i]] = i
        elif e.kind == RECV and datagrams:
            last_wait.pop(lane_of[i], None)
            queue = waiting[("data", c, e.side)]
            match = next((a for a in queue if events[a.start].nbytes in (0, e.nbytes)), None)
            if match is not None:      # a datagram comes whole, or not at all
                queue.remove(match)
                match.end, match.label = i, _bytes(e.nbytes)
            elif peer_of[i] is not None:
                arrows.append(Arrow("data", None, i, peer_of[i], lane_of[i], _bytes(e.nbytes)))
        elif e.kind == SEND:           # a byte stream: remember which bytes this send carried
            stream[(c, e.side)].append((sent[(c, e.side)], sent[(c, e.side)] + e.nbytes, i))
            sent[(c, e.side)] += e.nbytes
        elif e.kind == RECV:           # ...and draw one arrow from every send whose bytes it got
            lo, hi = got[(c, e.side)], got[(c, e.side)] + e.nbytes
            got[(c, e.side)] = hi
            sends, k = stream[(c, other)], first[(c, other)]
            while k < len(sends) and sends[k][1] <= lo:   # bytes read before: skip for good
                k += 1
            first[(c, other)] = k
            overlaps = []
            while k < len(sends) and sends[k][0] < hi:
                a, b, s = sends[k]
                overlaps.append((s, min(hi, b) - max(lo, a)))
                k += 1
            for s, n in overlaps:
                arrows.append(Arrow("data", s, i, lane_of[s], lane_of[i], _bytes(n)))
            if not overlaps and peer_of[i] is not None:
                arrows.append(Arrow("data", None, i, peer_of[i], lane_of[i], _bytes(e.nbytes)))
        elif e.kind in (SHUTDOWN, CLOSE) and not datagrams:
            if (c, e.side) not in finished:   # a close after a shutdown sends nothing new
                finished.add((c, e.side))
                waiting[("fin", c, other)].append(outgoing("fin", i, "FIN"))
        elif e.kind == EOF:
            incoming("fin", i, "FIN")
        elif e.kind == ERROR and RESET.search(e.detail):
            finished.add((c, e.side))         # a reset connection sends no FIN when closed
            if peer_of[i] is not None:
                arrows.append(Arrow("rst", None, i, peer_of[i], lane_of[i], "RST"))
    # Stream sends nobody recorded receiving keep an arrow, to the peer's lifeline.
    drawn = {a.start for a in arrows}
    for sends in stream.values():
        for a, b, s in sends:
            if s not in drawn and lane_of[s] is not None and peer_of[s] is not None:
                arrows.append(Arrow("data", s, None, lane_of[s], peer_of[s], _bytes(b - a)))
    return arrows, timeouts


# --- Drawing. ---

def _xml(text) -> str:
    """Text safe inside an element or a double-quoted attribute. Control characters, not
    allowed in XML 1.0, become U+FFFD."""
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _label(e: Event, several: bool) -> tuple[str, str]:
    """The event's words on its lane: a main line and a detail line. ``several``: the lane
    shows more than one connection, so name which one (as the table does)."""
    if e.kind == NOTE:
        main, detail = e.detail, ""
    elif e.kind == ERROR and e.detail:
        main, detail = e.detail, ""   # "ConnectionResetError" says it better than "error"
    elif e.kind in (SEND, RECV) and e.nbytes == 0 and e.detail:
        main, detail = e.kind, e.detail   # the byte count was not recorded (lesson 06's tries)
    else:
        main, detail = Event(e.side, e.kind, e.who, e.nbytes).describe(), e.detail
    if several and e.who and e.kind != ACCEPT:
        main = f"[{e.who}] {main}"
    return main, detail


def _wrap(text: str, chars: int, lines: int = 3) -> list[str]:
    out = textwrap.wrap(text, max(8, chars), break_long_words=True, break_on_hyphens=False) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: max(1, chars - 1)] + "…"
    return out


def _width(text: str, size: int = 12) -> int:
    return int(len(text) * CHAR_W * size / 12) + 1


class _Canvas:
    """SVG elements as text, with integer coordinates."""

    def __init__(self):
        self.parts: list[str] = []

    def add(self, tag: str, text: Optional[str] = None, **attrs) -> None:
        attributes = "".join(f' {k.replace("_", "-")}="{_xml(v)}"'
                             for k, v in attrs.items() if v not in (None, ""))
        if text is None:
            self.parts.append(f"<{tag}{attributes}/>")
        else:
            self.parts.append(f"<{tag}{attributes}>{_xml(text)}</{tag}>")

    def text(self, x, y, text, size=12, fill=INK, anchor=None, weight=None, backdrop=False):
        if backdrop:   # a white box behind, so arrows passing under do not cross the words
            w = _width(text, size)
            left = {None: x, "middle": x - w // 2, "end": x - w}[anchor]
            self.add("rect", x=left - 2, y=y - size + 1, width=w + 4, height=size + 3, fill=WHITE)
        self.add("text", text, x=x, y=y, font_size=size, fill=fill, text_anchor=anchor, font_weight=weight)

    def line(self, x1, y1, x2, y2, color, width=1, dash=""):
        self.add("line", x1=x1, y1=y1, x2=x2, y2=y2, stroke=color, stroke_width=width, stroke_dasharray=dash)

    def clock(self, x, y, color):
        """The mark of a timeout: a small clock face."""
        self.add("circle", cx=x, cy=y, r=7, fill=WHITE, stroke=color, stroke_width=2)
        self.line(x, y, x, y - 4, color, 2)
        self.line(x, y, x + 3, y + 1, color, 2)

    def cross(self, x, y, color):
        """The mark of an error."""
        self.line(x - 5, y - 5, x + 5, y + 5, color, 2)
        self.line(x - 5, y + 5, x + 5, y - 5, color, 2)


def _arrow(x1, y1, x2, y2, gap: int, size: int = 9) -> tuple[float, float, str]:
    """The tip, gap pixels short of (x2, y2), and the three points of the head there.
    Only + - * / and sqrt: exactly rounded, the same on every machine (sin, atan2 are not)."""
    dx, dy = x2 - x1, y2 - y1
    length = math.sqrt(dx * dx + dy * dy) or 1.0
    ux, uy = dx / length, dy / length
    tx, ty = round(x2 - ux * gap, 1), round(y2 - uy * gap, 1)
    bx, by, half = tx - ux * size, ty - uy * size, size * 0.45
    points = [(tx, ty), (bx - uy * half, by + ux * half), (bx + uy * half, by - ux * half)]
    return tx, ty, " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _draw(events, title, max_rows, lanes, lane_of, arrows, timeouts) -> tuple[str, int]:
    """The SVG text, and its height."""
    shown = len(events) if len(events) <= max_rows else max(0, max_rows - 1)

    def room(li: int, size: int = 12) -> int:
        """How many characters fit beside lane li: right of the server, left of a client."""
        lane = lanes[li]
        if lane.side == SERVER or len(lanes) == 1:
            space = WIDTH - 10 - lane.x - 12
        else:
            space = lane.x - 12 - max([l.x + 8 for l in lanes if l.x < lane.x], default=NUM_W)
        return int(space * 12 / size / CHAR_W)

    # The rows, top to bottom: one per event, plus one for each timeout, just before the retry.
    whos = collections.defaultdict(set)   # lane → connections it shows: name them if several
    for i, e in enumerate(events):
        if e.who:
            whos[lane_of[i]].add(e.who)
    rows = []   # (y, event index or None for a timeout, lane, main lines, detail lines)
    ys: dict[int, int] = {}
    y = TOP if not all(lane.recorded for lane in lanes) else TOP - 10   # room for "not recorded"
    for i, e in enumerate(events[:shown]):
        li = lane_of[i]
        if i in timeouts:
            rows.append((y, None, li, [timeouts[i]], []))
            y += ROW
        main, detail = _label(e, len(whos[li]) > 1)
        lines = _wrap(main, room(li) - (3 if e.kind == NOTE else 0))
        extra = _wrap(detail, room(li, 11), 2) if detail else []
        rows.append((y, i, li, lines, extra))
        ys[i] = y
        y += ROW + LINE * (len(lines) + len(extra) - 1) + (6 if e.kind == NOTE else 0)
    y_more = y if shown < len(events) else None
    bottom = y + (ROW if y_more else 0)
    visible = [a for a in arrows if (a.start if a.start is not None else a.end) < shown]
    clocks = any(i is None or (events[i].kind == ERROR and TIMEOUT.search(events[i].detail))
                 for _, i, *_ in rows)
    used = {a.kind for a in visible} | ({"timeout"} if clocks else set())
    height = bottom + (34 if used else 10)

    c = _Canvas()
    c.add("rect", x=0, y=0, width=WIDTH, height=height, fill=WHITE)   # dark themes: stay readable
    c.text(NUM_W - 20, 22, title, size=15, weight="bold")
    for lane in lanes:   # headers and lifelines; a lane nobody recorded is dashed and grey
        color = LANE_COLOR[lane.side] if lane.recorded else FAINT
        dash = "" if lane.recorded else "5 4"
        w = max(90, _width(lane.title, 13) + 20)
        c.add("rect", x=lane.x - w // 2, y=34, width=w, height=26, rx=5, fill=WHITE,
              stroke=color, stroke_width=2, stroke_dasharray=dash)
        c.text(lane.x, 52, lane.title, size=13, fill=color, anchor="middle", weight="bold")
        if not lane.recorded:
            c.text(lane.x, 72, "not recorded", size=10, fill=FAINT, anchor="middle")
        c.line(lane.x, 60 if lane.recorded else 78, lane.x, bottom - 6, color, 1, dash)

    def at(index: Optional[int], lane: int, other: Optional[int], lead: int) -> tuple[int, int]:
        """Where an arrow touches a lane: at its event's row; for an end nobody recorded, a
        little before or after the other end; for an end cut off, at the '… more' row."""
        if index is not None:
            return lanes[lane].x, ys.get(index, y_more)
        return lanes[lane].x, ys.get(other, y_more) + lead

    # Arrow labels go where they overlap no other label and no lifeline.
    placed: list[tuple[int, int, int, int]] = []
    for a in visible:
        color, width, dash, _ = STYLE[a.kind]
        x1, y1 = at(a.start, a.src, a.end, -9)
        x2, y2 = at(a.end, a.dst, a.start, 9)
        tx, ty, head = _arrow(x1, y1, x2, y2, 5 if a.end is not None else 0)   # stop at the mark
        c.line(x1, y1, tx, ty, color, width, dash)
        c.add("polygon", points=head, fill=color)
        w = _width(a.label, 11) + 4
        for t in (50, 35, 65, 22, 78, 12, 88):
            lx, ly = x1 + (x2 - x1) * t // 100, y1 + (y2 - y1) * t // 100 + 4
            box = (lx - w // 2, ly - 11, lx + w // 2, ly + 3)
            if all(box[2] < p[0] or p[2] < box[0] or box[3] < p[1] or p[3] < box[1] for p in placed) \
                    and not any(box[0] - 3 <= lane.x <= box[2] + 3 for lane in lanes):
                placed.append(box)
                c.text(lx, ly, a.label, size=11, fill=color, anchor="middle", backdrop=True,
                       weight="bold" if a.kind == "rst" else None)
                break

    for y, i, li, lines, extra in rows:   # marks and labels, above the arrows
        lane = lanes[li]
        e = events[i] if i is not None else None
        if i is not None:
            c.text(NUM_W - 8, y + 4, str(i + 1), size=10, fill=FAINT, anchor="end")
        left = lane.side == CLIENT and len(lanes) > 1
        anchor, tx = ("end", lane.x - 12) if left else (None, lane.x + 12)
        color, weight = INK, None
        if e is not None and e.kind == NOTE:   # a box on the lane's label side
            w = max(_width(line) for line in lines) + 14
            bx = lane.x - 6 - w if left else lane.x + 6
            c.add("rect", x=bx, y=y - 11, width=w, height=LINE * len(lines) + 10, rx=3,
                  fill=NOTE_FILL, stroke=NOTE_EDGE)
            for k, line in enumerate(lines):
                c.text(bx + 7, y + 4 + LINE * k, line)
            c.add("circle", cx=lane.x, cy=y, r=3, fill=NOTE_EDGE)
            continue
        if e is None or (e.kind == ERROR and TIMEOUT.search(e.detail)):
            color, weight = STYLE["timeout"][0], "bold"
            c.clock(lane.x, y, color)
        elif e.kind == ERROR:
            color, weight = STYLE["rst"][0], "bold"
            c.cross(lane.x, y, color)
        else:
            c.add("circle", cx=lane.x, cy=y, r=4, fill=LANE_COLOR[lane.side])
        for k, line in enumerate(lines):
            c.text(tx, y + 4 + LINE * k, line, fill=color, anchor=anchor, backdrop=True, weight=weight)
        for k, line in enumerate(extra):
            c.text(tx, y + 4 + LINE * (len(lines) + k), line, size=11, fill=FAINT, anchor=anchor,
                   backdrop=True)
    if y_more is not None:
        c.text(NUM_W - 8, y_more + 4, f"… {len(events) - shown:,} more events", size=12, fill=FAINT)

    x = NUM_W - 20   # the legend: only what this picture uses
    for kind in STYLE:
        if kind in used:
            color, width, dash, words = STYLE[kind]
            if kind == "timeout":
                c.clock(x + 13, height - 16, color)
            else:
                c.line(x, height - 16, x + 26, height - 16, color, width, dash)
            c.text(x + 32, height - 12, words, size=11)
            x += 32 + _width(words, 11) + 22
    header = (f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" '
              f'viewBox="0 0 {WIDTH} {height}" font-family="{_xml(FONT)}">')
    return "\n".join([header, *c.parts, "</svg>"]) + "\n", height

