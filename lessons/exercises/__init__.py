"""The notebooks' exercises: one source for each, in the style of nbgrader.

An exercise's answer lives once, in ``solutions/NN_name.py``: its final
signature and docstring, with the work between two marker lines::

    def recv_exactly(sock, n: int) -> bytes:
        \"\"\"Return exactly n bytes from sock. ...\"\"\"
        ### BEGIN SOLUTION
        chunks, remaining = [], n
        ...
        ### END SOLUTION

The learner's stub is made from it: the same signature and docstring, and in
place of each marked region a ``# TODO:`` line and ``raise NotImplementedError``.
``scripts/exercise-stubs`` writes the stubs into the notebooks (into the code
cell tagged ``exercise:NAME``), and ``--check`` fails if one has drifted.

Each ``exNN.py`` module here holds the checks for one lesson, and declares its
exercises in ``EXERCISES``: the check, the tutorial's naive version (or the
common first attempt) and the hint. The tests prove, for every exercise
declared, that the check fails on the stub and on the naive version and
passes on the answer.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import pkgutil
import textwrap
from dataclasses import dataclass
from typing import Callable, Iterator, Union

from lessons.kit.processes import ROOT   # the checkout, where the notebooks are

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


@dataclass(frozen=True)
class Exercise:
    """One exercise: where its answer lives, how it is checked, and the hint for its stub."""
    lesson: str                  # "02_echo": solutions/02_echo.py, notebooks/02_echo.ipynb
    name: str                    # the function or class the learner writes
    check: Callable              # check(fn) -> CheckResult; prints one line per scenario
    naive: Callable              # the tutorial's code (or the common first attempt): must fail
    todo: Union[str, tuple] = "" # the "# TODO:" line, one per marked region (a tuple for several)

    def answer(self):
        """The finished function or class, from solutions/."""
        return getattr(importlib.import_module(f"solutions.{self.lesson}"), self.name)

    def stub_source(self) -> str:
        """The learner's starting point: the answer's source with each solution region cut out."""
        return make_stub(inspect.getsource(self.answer()), self.name, self.todo)

    def stub(self):
        """The stub, compiled in the answer's module (so its imports and constants resolve)."""
        namespace = dict(vars(importlib.import_module(f"solutions.{self.lesson}")))
        exec(compile(self.stub_source(), f"<stub of {self.name}>", "exec", dont_inherit=True), namespace)
        return namespace[self.name]

    @property
    def notebook(self) -> pathlib.Path:
        return ROOT / "notebooks" / f"{self.lesson}.ipynb"

    @property
    def tag(self) -> str:
        return f"exercise:{self.name}"


def make_stub(source: str, name: str, todo: Union[str, tuple] = "") -> str:
    """Replace each BEGIN/END SOLUTION region of ``source`` with a TODO.

    A region that holds statements becomes ``# TODO: ...`` and ``raise
    NotImplementedError``; a region that holds whole definitions (helper
    methods in a class body) becomes the ``# TODO`` line alone.
    """
    hints = (todo,) if isinstance(todo, str) else tuple(todo)
    lines = textwrap.dedent(source).rstrip().splitlines()
    out: list[str] = []
    region: list[str] | None = None
    regions, current = 0, name   # current: the function whose body a region is in
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(("def ", "async def ")):
            current = stripped.split("def ", 1)[1].split("(", 1)[0]
        if stripped == BEGIN:
            if region is not None:
                raise ValueError(f"{name}: {BEGIN} inside another region")
            region, indent = [], line[: len(line) - len(line.lstrip())]
            continue
        if stripped == END:
            if region is None:
                raise ValueError(f"{name}: {END} without {BEGIN}")
            hint = hints[regions] if regions < len(hints) else (hints[-1] if hints else "")
            out.append(f"{indent}# TODO: {hint}".rstrip() if hint else f"{indent}# TODO")
            code = [r.strip() for r in region if r.strip() and not r.strip().startswith("#")]
            if not code or not code[0].startswith(("def ", "async def ", "@", "class ")):
                out.append(f'{indent}raise NotImplementedError("{current} is not written yet")')
            region, regions = None, regions + 1
            continue
        if region is not None:
            region.append(line)
        else:
            out.append(line)
    if region is not None:
        raise ValueError(f"{name}: {BEGIN} without {END}")
    if not regions:
        raise ValueError(f"{name}: no {BEGIN} region in its answer")
    return "\n".join(out)


def all_exercises() -> Iterator[Exercise]:
    """Every exercise declared by a module of this package, in lesson order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ex"):
            yield from importlib.import_module(f"{__name__}.{info.name}").EXERCISES


# --- Stubs in notebooks ---

def stub_cells(notebook: dict) -> dict[str, dict]:
    """The notebook's exercise cells, by exercise name (from their ``exercise:NAME`` tag)."""
    cells = {}
    for cell in notebook["cells"]:
        for tag in cell.get("metadata", {}).get("tags", []):
            if tag.startswith("exercise:"):
                cells[tag.split(":", 1)[1]] = cell
    return cells


def drift(exercise: Exercise, notebook: dict) -> str | None:
    """Why the notebook's stub for this exercise differs from its solution, or None."""
    cell = stub_cells(notebook).get(exercise.name)
    if cell is None:
        return f"{exercise.notebook.name}: no code cell tagged {exercise.tag!r}"
    if "".join(cell["source"]).rstrip() != exercise.stub_source():
        return (f"{exercise.notebook.name}: the stub of {exercise.name} differs from "
                f"solutions/{exercise.lesson}.py (run scripts/exercise-stubs)")
    return None


def write_stubs(path: pathlib.Path, check_only: bool = False) -> list[str]:
    """Write every exercise's stub into its notebook at ``path``; return the problems found.

    With ``check_only``, change nothing and report the drift instead.
    """
    import nbformat   # installed with Jupyter; only this maintainer's tool needs it

    notebook = nbformat.read(path, as_version=4)
    problems, changed = [], False
    cells = stub_cells(notebook)
    for exercise in all_exercises():
        if exercise.notebook.resolve() != path.resolve():
            continue
        problem = drift(exercise, notebook)
        if problem is None:
            continue
        if check_only or exercise.name not in cells:
            problems.append(problem)
            continue
        cell = cells[exercise.name]
        cell["source"] = exercise.stub_source()
        cell["outputs"] = []
        changed = True
    if changed:
        nbformat.write(notebook, path)
    return problems
