"""The sequence diagram: what it draws between the lanes, and that it is the same every time."""
from __future__ import annotations

import base64
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from lessons.kit import running
from lessons.kit.echo import echo, handle
from lessons.kit.sequence import STYLE, sequence_diagram
from lessons.kit.server import accept_until
from lessons.kit.transcript import (ACCEPT, CLIENT, CLOSE, CONNECT, EOF, ERROR, LISTEN, NOTE,
                                    RECV, SEND, SERVER, SHUTDOWN, Event, Transcript)

from tests.conftest import ROOT

SVG = "{http://www.w3.org/2000/svg}"
COLOR = {STYLE[kind][0]: kind for kind in STYLE}


def E(side, kind, who="client 1", nbytes=0, detail=""):
    return Event(side, kind, who, nbytes, detail)


def ECHO():
    """Lesson 02's echo of 11 bytes, the server reading them in two pieces."""
    return [E(SERVER, LISTEN, ""), E(CLIENT, CONNECT), E(CLIENT, SEND, nbytes=11), E(CLIENT, SHUTDOWN),
            E(SERVER, ACCEPT), E(SERVER, RECV, nbytes=5), E(SERVER, SEND, nbytes=5),
            E(SERVER, RECV, nbytes=6), E(SERVER, SEND, nbytes=6), E(CLIENT, RECV, nbytes=11),
            E(SERVER, EOF), E(SERVER, CLOSE), E(CLIENT, EOF), E(CLIENT, CLOSE)]


def read(svg: str):
    """What a reader sees: the rows by number, the lanes by title, the arrows and the words."""
    root = ET.fromstring(svg)   # valid XML, or this raises
    texts = [(t.text or "", int(t.get("x")), int(t.get("y")), t.get("fill")) for t in root.iter(SVG + "text")]
    rows = {int(s): y - 4 for s, x, y, _ in texts if s.isdigit() and x < 34}
    lanes = {s: x for s, x, y, _ in texts if y == 52}

    def near(table: dict, at: str, slack: int = 6):   # arrows stop a few pixels short of a mark
        return next((name for name, v in table.items() if abs(v - float(at)) <= slack), None)

    arrows = []
    for line in root.iter(SVG + "line"):
        kind = COLOR.get(line.get("stroke"))
        x1, y1, x2, y2 = (line.get(k) for k in ("x1", "y1", "x2", "y2"))
        a, b = near(lanes, x1, 0), near(lanes, x2)
        if kind and a and b and a != b:   # lane to lane: not a mark or a legend sample
            arrows.append((kind, a, near(rows, y1, 0), b, near(rows, y2, 3)))
    return root, rows, lanes, arrows, texts


def test_same_events_same_bytes_in_any_process():
    first = sequence_diagram(ECHO(), title="echo").svg
    assert sequence_diagram(ECHO(), title="echo").svg == first
    # Another interpreter, another hash seed: set and dict orders must not leak into the picture.
    code = ("import sys; from lessons.kit.transcript import Event; from lessons.kit.sequence import "
            f"sequence_diagram; sys.stdout.write(sequence_diagram({ECHO()!r}, title='echo').svg)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == first


def test_a_send_points_at_the_recvs_that_got_its_bytes():
    root, rows, lanes, arrows, texts = read(sequence_diagram(ECHO()).svg)
    assert set(lanes) == {"client", "server"}
    data = sorted(a for a in arrows if a[0] == "data")
    # The client's 11 bytes (row 3) reached the server in two recvs (rows 6 and 8); both
    # echoes (rows 7 and 9) reached the client's one recv (row 10).
    assert data == [("data", "client", 3, "server", 6), ("data", "client", 3, "server", 8),
                    ("data", "server", 7, "client", 10), ("data", "server", 9, "client", 10)]
    labels = [t for t, *_ in texts]
    assert labels.count("5 bytes") == 2 and labels.count("6 bytes") == 2
    assert ("handshake", "client", 2, "server", 5) in arrows
    # FIN: the client's shutdown to the server's EOF, the server's close to the client's EOF;
    # the client's close after its shutdown sends no second FIN.
    assert sorted(a for a in arrows if a[0] == "fin") == [("fin", "client", 4, "server", 11),
                                                        ("fin", "server", 12, "client", 13)]


def test_a_reset_is_a_red_rst_arrow_and_a_red_error():
    events = ECHO()[:7] + [E(SERVER, ERROR, detail="ConnectionResetError"), E(SERVER, CLOSE)]
    root, rows, lanes, arrows, texts = read(sequence_diagram(events).svg)
    assert [a for a in arrows if a[0] == "rst"] == [("rst", "client", None, "server", 8)]
    red = STYLE["rst"][0]
    assert ("RST", red) in [(t, fill) for t, x, y, fill in texts]
    assert ("ConnectionResetError", red) in [(t, fill) for t, x, y, fill in texts]
    # The client's shutdown sent a FIN (the server never read up to it); the server's close
    # after the reset sends none.
    assert [a for a in arrows if a[0] == "fin"] == [("fin", "client", 4, "server", None)]


def test_a_datagram_retry_marks_the_timeout():
    events = [E(CLIENT, SEND, "", 0, "try 1, then wait up to 0.5 s"), E(SERVER, RECV, nbytes=7),
              E(SERVER, NOTE, detail="dropped (simulated loss)"),
              E(CLIENT, SEND, "", 0, "try 2, then wait up to 1 s"), E(SERVER, RECV, nbytes=7),
              E(SERVER, SEND, nbytes=7), E(CLIENT, RECV, "", 7)]
    root, rows, lanes, arrows, texts = read(sequence_diagram(events).svg)
    orange = STYLE["timeout"][0]
    assert ("timed out after 0.5 s", orange) in [(t, fill) for t, x, y, fill in texts]
    assert "timed out after 1 s" not in [t for t, *_ in texts]   # the second try got its reply
    assert sorted(a for a in arrows if a[0] == "data") == [
        ("data", "client", 1, "server", 2), ("data", "client", 4, "server", 5),
        ("data", "server", 6, "client", 7)]
    assert "dropped (simulated loss)" in [t for t, *_ in texts]


def test_connections_only_the_server_recorded_get_dashed_lanes():
    events = [E(SERVER, LISTEN, ""), E(SERVER, ACCEPT, "client 1"), E(SERVER, NOTE, "", detail="alice joined"),
              E(SERVER, ACCEPT, "client 2"), E(SERVER, CLOSE, "client 2"), E(SERVER, CLOSE, "client 1")]
    root, rows, lanes, arrows, texts = read(sequence_diagram(events, title="the room").svg)
    assert list(lanes) == ["client 1", "client 2", "server"]
    assert [t for t, *_ in texts].count("not recorded") == 2
    assert sorted(a[:2] + a[3:] for a in arrows) == [
        ("fin", "server", "client 1", None), ("fin", "server", "client 2", None),
        ("handshake", "client 1", "server", 2), ("handshake", "client 2", "server", 4)]


def test_plain_svg_without_addresses_ids_or_scripts():
    events = ECHO() + [E(SERVER, NOTE, detail="evil \x1b[31mred\x07 <b>&"),
                       E(SERVER, ERROR, detail="TimeoutError")]
    diagram = sequence_diagram(events, title="a <title> & more")
    root = ET.fromstring(diagram.svg)
    assert root.tag == SVG + "svg" and root.get("version") == "1.1"
    width, height = int(root.get("width")), int(root.get("height"))
    assert width <= 900 and root.get("viewBox") == f"0 0 {width} {height}"
    first = next(iter(root))
    assert (first.tag, first.get("fill"), first.get("width")) == (SVG + "rect", "#ffffff", str(width))
    assert "a <title> & more" in [t.text for t in root.iter(SVG + "text")]
    for bad in ("id=", "class=", "style=", "<script", "foreignObject", "href", "0x", "\x1b", "<b>"):
        assert bad not in diagram.svg
    assert not re.search(r"\d\.\d{2,}", diagram.svg)   # no long floats to format differently
    assert "at 0x" not in repr(diagram) and repr(diagram).startswith("<sequence diagram 'a <title> & more'")


def test_long_transcripts_stop_at_max_rows():
    events = [E(SERVER, LISTEN, ""), E(CLIENT, CONNECT), E(SERVER, ACCEPT)]
    events += [E(CLIENT, SEND, nbytes=1) for _ in range(100)] + [E(SERVER, RECV, nbytes=100)]
    root, rows, lanes, arrows, texts = read(sequence_diagram(events, max_rows=10).svg)
    assert sorted(rows) == list(range(1, 10))
    assert "… 95 more events" in [t for t, *_ in texts]
    # The shown sends still point down, to where their recv is cut off.
    assert len([a for a in arrows if a[0] == "data"]) == 6


def test_a_real_echo_and_its_display_in_jupyter(tmp_path):
    def serve(listener, stop, log):
        for number, (conn, _) in enumerate(accept_until(listener, stop), 1):
            with conn:
                log.record(SERVER, ACCEPT, f"client {number}")
                handle(conn, log, f"client {number}")
                log.record(SERVER, CLOSE, f"client {number}")

    log = Transcript()
    with running(serve, log=log) as server:
        assert echo(server.address, b"hello, echo", log=log) == b"hello, echo"
        assert log.wait_for_event(SERVER, CLOSE)
    diagram = sequence_diagram(log, title="echo, one client")   # a Transcript: its causal order
    assert diagram.svg == sequence_diagram(log.ordered(), title="echo, one client").svg
    root, rows, lanes, arrows, texts = read(diagram._repr_svg_())
    assert sorted(a[0] for a in arrows) == ["data", "data", "fin", "fin", "handshake"]
    summary = "<sequence diagram 'echo, one client': client | server; 12 events; arrows: 2 data, 1 handshake, 2 fin>"
    assert repr(diagram) == summary
    assert diagram.save(tmp_path / "echo.svg").read_text(encoding="utf-8") == diagram.svg
    # What a notebook stores: the SVG, the same picture as an <img> (what an untrusted
    # JupyterLab shows), and the one-line summary.
    from IPython.core.formatters import DisplayFormatter
    bundle, _ = DisplayFormatter().format(diagram)
    assert sorted(bundle) == ["image/svg+xml", "text/html", "text/plain"]
    assert bundle["text/plain"] == summary and bundle["image/svg+xml"] == diagram.svg
    encoded = base64.b64encode(diagram.svg.encode()).decode()
    assert bundle["text/html"].startswith(f'<img src="data:image/svg+xml;base64,{encoded}" width="900"')
