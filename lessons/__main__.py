"""``python -m lessons``: the table of lessons."""
from __future__ import annotations

import ast
import pathlib

from rich.console import Console
from rich.padding import Padding
from rich.text import Text

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
    """Print the lessons as a list: number and title, concept, command and notebook.

    A list, not a table: at 80 columns a table left no room for the concept
    column, and when wider it wrapped one word a line. Each entry wraps its
    concept to the terminal's width, indented under its title.
    """
    console = Console(highlight=False)
    console.print(Text("Network programming with Python sockets: the lessons", style="bold"))
    for row in catalogue():
        console.print()
        console.print(Text.assemble((f"{row['number']}  ", "bold cyan"), (row["title"], "bold")))
        console.print(Padding(Text(row["concept"]), (0, 0, 0, 4), expand=False))
        where = Text.assemble(("run: ", "dim"), (row["command"], "bold"))
        if row["notebook"] != "—":
            where.append("   notebook: ", style="dim")
            where.append(row["notebook"])
        console.print(Padding(where, (0, 0, 0, 4), expand=False))
    console.print()
    console.print(Text.assemble("Open the notebooks with ", ("jupyter lab notebooks/", "bold"),
                                "; check every lesson with ", ("pytest --nbval", "bold"), "."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
