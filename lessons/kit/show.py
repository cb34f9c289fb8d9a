"""Showing code and rich output in notebooks and terminals.

Importing the kit also fixes how rich draws its output in a notebook (see
:func:`fit_rich_html`): every print, table and check line a lesson shows.

``source(obj, ...)`` returns a :class:`Listing` of the code as written in the
lesson module. A terminal (rich) shows it highlighted by rich. A notebook
shows our own small HTML: a ``<pre>`` in a monospace font with the colours
inline, and no background on any span.

Why our own: rich's HTML for a highlighted listing gives every line a
background and ``line-height: normal``, so in browsers each line painted over
the underscores of the line above (``naive_select_server`` read "naive select
server"); and a Markdown code block is drawn in the page's proportional font
by nbconvert's HTML. Highlighting with the standard library's ``tokenize``
also keeps the stored output identical whatever Pygments version is installed.
"""
from __future__ import annotations

import html
import inspect
import io
import keyword
import textwrap
import tokenize


WIDTH = 99   # lesson code shown in notebooks is kept within this many columns (a test checks)

PRE_STYLE = ("font-family: Menlo, Consolas, 'DejaVu Sans Mono', 'Courier New', monospace; "
             "font-size: 13px; line-height: 1.45; white-space: pre; overflow-x: auto; "
             "margin: 0; padding: 4px 0; background: none; color: inherit")
COLOURS = {"keyword": "#8250df", "string": "#0a7d33", "comment": "#6e7781", "number": "#0550ae",
           "name": "#953800"}


def fit_rich_html() -> None:
    """Give rich's notebook output room for underscores.

    rich wraps each output in ``<pre style="overflow-x:auto; line-height:normal">``.
    A scrolling box clips what hangs below its last line's box, so in browsers
    every underscore vanished ("AF_INET6" read "AF INET6"). A taller line keeps
    descenders inside the box. rich reads this format each time it draws.
    """
    import rich.jupyter
    rich.jupyter.JUPYTER_HTML_FORMAT = rich.jupyter.JUPYTER_HTML_FORMAT.replace(
        "line-height:normal", "line-height:1.45")


fit_rich_html()


class Listing:
    """The source of some functions or classes, for reading."""

    def __init__(self, code: str):
        self.code = code

    def _repr_html_(self) -> str:
        return f'<pre style="{PRE_STYLE}">{highlight(self.code)}</pre>'

    def __rich__(self):
        # Imported here: Pygments costs every `python -m lessons...` 50 ms of start-up,
        # and only a listing shown in a terminal needs it.
        from rich.syntax import Syntax
        return Syntax(self.code, "python", theme="ansi_dark", background_color="default")

    def __repr__(self) -> str:   # the text/plain a notebook stores beside the HTML
        return self.code

    __str__ = __repr__


def source(*objects) -> Listing:
    """The source of functions or classes, as written in the lesson module."""
    return Listing("\n\n".join(textwrap.dedent(inspect.getsource(obj)).rstrip() for obj in objects))


def highlight(code: str) -> str:
    """Python code as HTML, with keywords, strings, comments, numbers and defined names coloured."""
    lines = code.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    spans: list[tuple[int, int, str]] = []   # (start, end, colour)
    previous = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(code).readline):
            kind = _kind(token, previous)
            if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                previous = token
            if kind:
                (srow, scol), (erow, ecol) = token.start, token.end
                spans.append((offsets[srow - 1] + scol, offsets[erow - 1] + ecol, COLOURS[kind]))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass   # show what was coloured so far; the rest plain
    out, at = [], 0
    for start, end, colour in spans:
        out.append(html.escape(code[at:start]))
        out.append(f'<span style="color: {colour}">{html.escape(code[start:end])}</span>')
        at = end
    out.append(html.escape(code[at:]))
    return "".join(out)


def _kind(token: tokenize.TokenInfo, previous) -> str | None:
    if token.type == tokenize.COMMENT:
        return "comment"
    if token.type == tokenize.STRING or token.type in _FSTRING:
        return "string"
    if token.type == tokenize.NUMBER:
        return "number"
    if token.type == tokenize.NAME:
        if keyword.iskeyword(token.string) or token.string in ("self", "cls"):
            return "keyword"
        if previous is not None and previous.type == tokenize.NAME and previous.string in ("def", "class"):
            return "name"
    return None


# Python 3.12 splits f-strings into several tokens.
_FSTRING = {getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
            if hasattr(tokenize, name)}
