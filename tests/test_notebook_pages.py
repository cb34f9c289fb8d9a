"""What a learner sees of the notebooks in a browser, checked without one.

Screenshots (scripts/screenshot-notebooks) showed three problems that no other
test could see; each has a cause that can be checked in the stored notebooks:

- listings lost their underscores: rich's HTML gave every line a background
  span that painted over the line above. Listings now come from kit.show, whose
  HTML has no background on any span; no output may have one.
- printed lines lost their underscores too: rich's notebook HTML put them in a
  scrolling box with ``line-height: normal``, which clips what hangs below the
  last line. Importing the kit gives rich a taller line (kit.show.fit_rich_html).
- long listing lines were cut off: code shown in a notebook stays within
  kit.show.WIDTH columns.
- diagrams lost their right border: a character the monospace font lacks
  (an arrow, say) is drawn from another font, at another width. Inside a box,
  only ASCII and box-drawing characters, and every line of a box equally long.
"""
from __future__ import annotations

import json
import pathlib
import re

import pytest

from lessons.kit.show import PRE_STYLE, WIDTH
from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BACKGROUND_SPAN = re.compile(r'<span[^>]*style="[^"]*background', re.I)
FENCE = re.compile(r"^(```+)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
BOX_SIDES = "│┃║|"


def cells(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_output_paints_a_background_over_its_text(path):
    for number, cell in enumerate(cells(path)):
        for output in cell.get("outputs", []):
            page = text(output.get("data", {}).get("text/html", ""))
            assert not BACKGROUND_SPAN.search(page), f"cell {number}: a span with a background"
            assert "line-height:normal" not in page, f"cell {number}: rich output that clips underscores"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_listings_fit_the_page(path):
    for number, cell in enumerate(cells(path)):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PRE_STYLE in text(data.get("text/html", "")):
                for line in text(data["text/plain"]).splitlines():
                    assert len(line) <= WIDTH, f"cell {number}: listing line of {len(line)} columns: {line!r}"


def boxes(block: str) -> list[list[str]]:
    """Runs of consecutive lines that end in a box side: the inside of a drawn box."""
    runs, run = [], []
    for line in block.splitlines():
        if line.rstrip() and line.rstrip()[-1] in BOX_SIDES + "┐┘╮╯┤":
            run.append(line.rstrip())
        else:
            if len(run) > 1:
                runs.append(run)
            run = []
    if len(run) > 1:
        runs.append(run)
    return runs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_diagrams_keep_their_borders(path):
    for number, cell in enumerate(cells(path)):
        if cell["cell_type"] != "markdown":
            continue
        for _, block in FENCE.findall(text(cell["source"])):
            for line in block.splitlines():
                assert len(line) <= WIDTH, f"cell {number}: diagram line of {len(line)} columns"
            for box in boxes(block):
                odd = {ch for line in box for ch in line if ord(ch) > 127 and not 0x2500 <= ord(ch) <= 0x257F}
                assert not odd, f"cell {number}: {sorted(odd)} inside a box may come from another font"
                assert len({len(line) for line in box}) == 1, f"cell {number}: a box with a ragged right side"


def test_the_box_reader_finds_a_ragged_box():
    ragged = "┌────┐\n│ ab │\n│ c → │\n└────┘\n"
    box = boxes(ragged)[0]
    assert len({len(line) for line in box}) > 1
