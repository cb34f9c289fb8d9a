"""Small display helpers for notebooks and demos."""
from __future__ import annotations

import inspect
import textwrap


def source(*objects):
    """The source of functions or classes, syntax-highlighted, for reading in a notebook."""
    from rich.syntax import Syntax

    code = "\n\n".join(textwrap.dedent(inspect.getsource(obj)).rstrip() for obj in objects)
    return Syntax(code, "python", theme="ansi_dark", background_color="default")
