"""``python -m lessons``: the table of lessons."""
from __future__ import annotations

import ast
import pathlib

from rich.console import Console
from rich.table import Table

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOKS = HERE.parent / "notebooks"


def catalogue() -> list[dict]:
    """Each lesson module's number, title and concept, read without importing it."""
    rows = []
    for path in sorted(HERE.glob("[0-9][0-9]_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree) or ""
        title = next((node.value.value for node in tree.body
                      if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                      and any(getattr(t, "id", None) == "TITLE" for t in node.targets)), path.stem)
        notebook = NOTEBOOKS / f"{path.stem}.ipynb"
        rows.append({
            "number": path.stem[:2],
            "title": title,
            "concept": doc.strip().splitlines()[0] if doc else "",
            "command": f"python -m lessons.{path.stem}",
            "notebook": f"notebooks/{notebook.name}" if notebook.exists() else "—",
        })
    return rows


def main() -> int:
    table = Table(title="Network programming with Python sockets: the lessons", title_justify="left")
    table.add_column("#", no_wrap=True)
    table.add_column("title")
    table.add_column("concept", ratio=1)
    table.add_column("run it", no_wrap=True, style="bold")
    table.add_column("notebook", no_wrap=True)
    for row in catalogue():
        table.add_row(row["number"], row["title"], row["concept"], row["command"], row["notebook"])
    console = Console()
    console.print(table)
    console.print("Open the notebooks with [bold]jupyter lab notebooks/[/]; "
                  "check every lesson with [bold]pytest --nbval[/].")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
