"""The workbook's shape: no lesson imports another, the kit imports no lesson, and
where a lesson teaches a piece that the kit keeps a tested copy of, the two are the same code."""
from __future__ import annotations

import ast
import inspect
import pathlib
import re
import textwrap

import pytest

from tests.conftest import ROOT, lesson

LESSON_FILES = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
KIT_FILES = sorted((ROOT / "lessons" / "kit").glob("*.py"))
A_LESSON = re.compile(r"^lessons\.\d\d_")


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a file imports: import statements, importlib.import_module() and __import__()."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__", "find_spec") and node.args:
                arg = node.args[0]
                names.add(arg.value if isinstance(arg, ast.Constant) else "<computed>")
    return names


def test_the_import_reader_sees_importlib_calls(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import importlib\nx = importlib.import_module('lessons.02_echo')\n"
                      "from lessons import kit\n")
    assert {"lessons.02_echo", "lessons.kit"} <= imported_modules(sample)


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.stem)
def test_no_lesson_imports_another_lesson(path):
    others = {name for name in imported_modules(path) if A_LESSON.match(name) or name == "<computed>"}
    assert not others, f"{path.name} imports {sorted(others)}: use the kit's tested copy instead"


@pytest.mark.parametrize("path", KIT_FILES, ids=lambda p: p.stem)
def test_the_kit_imports_no_lesson(path):
    lessons = {name for name in imported_modules(path) if A_LESSON.match(name)}
    assert not lessons, f"kit/{path.name} imports {sorted(lessons)}"


def test_the_kit_says_what_each_of_its_modules_holds():
    # A newcomer finds the kit through lessons/kit/__init__.py's list (and the README's).
    listed = set(re.findall(r":mod:`\.(\w+)`", (ROOT / "lessons" / "kit" / "__init__.py").read_text()))
    modules = {path.stem for path in KIT_FILES} - {"__init__"}
    assert modules - listed == set(), "kit modules missing from kit/__init__.py's docstring"
    assert listed - modules == set(), "kit/__init__.py's docstring lists modules that do not exist"


def code_of(obj) -> str:
    """A function's code without its docstring and comments, to compare two copies."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@pytest.mark.parametrize("taught, kept", [
    ("02_echo:handle", "lessons.kit.echo:handle"),
    ("02_echo:echo", "lessons.kit.echo:echo"),
    ("04_nonblocking:Connection", "lessons.kit.nonblocking:Connection"),
    ("03_chat:clean", "lessons.kit.chat:clean"),   # lesson 03 uses the kit's name rules themselves
])
def test_what_a_lesson_teaches_is_what_the_kit_keeps(taught, kept):
    import importlib
    module, name = taught.split(":")
    kit_module, kit_name = kept.split(":")
    assert code_of(getattr(lesson(module), name)) == code_of(getattr(importlib.import_module(kit_module), kit_name))
