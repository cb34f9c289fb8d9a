"""Lesson 07: the lab measures, survives servers that crash or refuse, and writes its results."""
from __future__ import annotations

import json
import math

from tests.conftest import lesson, run_module

scaling = lesson("07_scaling")

CRASHES = ["-c", "import sys; sys.exit(3)"]
REFUSES = ["-c", """
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print("listening on 127.0.0.1:%d" % s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept(); c.close()
"""]


def test_a_crashed_or_refusing_server_is_reported_and_the_lab_goes_on(tmp_path):
    architectures = {
        "crashes": CRASHES,
        "refuses": REFUSES,
        "05 selectors (default)": scaling.ARCHITECTURES["05 selectors (default)"],
    }
    points = scaling.run_lab(architectures, [2, 4], duration=0.3, hold=0.1, progress=False)
    by = {(p.architecture, p.connections): p for p in points}
    assert by[("crashes", 2)].note == "did not start (exit 3)" and not by[("crashes", 2)].correct
    assert by[("crashes", 4)].note == "not run: fell over at 2"
    refused = by[("refuses", 2)]
    assert not refused.correct and refused.note
    for n in (2, 4):
        good = by[("05 selectors (default)", n)]
        assert good.correct and good.requests_per_second > 0 and good.note == ""
        assert good.p50_ms <= good.p99_ms and good.server_rss_kib > 0
    paths = scaling.write_results(points, tmp_path, scaling.machine())
    assert paths["figure"].stat().st_size > 10_000
    data = json.loads(paths["json"].read_text())   # strict JSON: no NaN
    assert len(data["points"]) == 6 and data["machine"]["cores"] >= 1
    assert paths["csv"].read_text().splitlines()[0].startswith("architecture,connections,")
    info, again = scaling.load_results(paths["json"])
    assert [p.architecture for p in again] == [p.architecture for p in points]
    assert math.isnan(again[0].p50_ms)


def test_an_iterative_server_falls_over_with_a_reason():
    points = scaling.run_lab({"02 iterative": scaling.ARCHITECTURES["02 iterative"]}, [1, 3],
                             duration=0.3, hold=0.1, progress=False)
    assert points[0].correct
    assert not points[1].correct and points[1].note == "only 1 of 3 connections were answered"


def test_the_command_line_writes_its_files(tmp_path):
    result = run_module("lessons.07_scaling", "--only", "selectors (default)", "--connections", "1", "3",
                        "--duration", "0.2", "--out", str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "05 selectors (default)" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.csv", "scaling.png"}


def test_bad_lab_options_are_refused():
    result = run_module("lessons.07_scaling", "--only", "nothing-like-this", "--quick")
    assert result.returncode == 2 and "--only must match a server" in result.stdout
