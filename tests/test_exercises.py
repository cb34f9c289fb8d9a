"""Every exercise check fails on the notebook's stub and on the tutorial's code, and passes on the answer."""
from __future__ import annotations

import inspect

import pytest

from lessons.exercises import ex01, ex02, ex03, ex04, ex05, ex06
from tests.conftest import lesson, notebook_exercise, solution

EXERCISES = [
    # notebook, function, check, the tutorial's naive version
    ("01_basics.ipynb", "fetch_greeting", ex01.check_fetch_greeting, ex01.naive_fetch_greeting),
    ("01_basics.ipynb", "make_listener", ex01.check_make_listener, ex01.naive_make_listener),
    ("02_echo.ipynb", "recv_exactly", ex02.check_recv_exactly, ex02.naive_recv_exactly),
    ("02_echo.ipynb", "recv_message", ex02.check_recv_message, ex02.naive_recv_message),
    ("03_chat.ipynb", "private_message", ex03.check_private_message, ex03.naive_private_message),
    ("03_chat.ipynb", "broadcast", ex03.check_broadcast, lesson("03_chat").naive_broadcast),
    ("04_nonblocking.ipynb", "flush", ex04.check_flush, ex04.naive_flush),
    ("04_nonblocking.ipynb", "read_available", ex04.check_read_available, ex04.naive_read_available),
    ("05_select.ipynb", "SelectorChat", ex05.check_selector_chat, ex05.NaiveSelectorChat),
    ("06_udp.ipynb", "reliable_request", ex06.check_reliable_request, ex06.naive_reliable_request),
]
IDS = [e[1] for e in EXERCISES]


def answer(notebook: str, function: str):
    return getattr(solution(notebook.removesuffix(".ipynb")), function)


@pytest.mark.parametrize("notebook, function, check, naive", EXERCISES, ids=IDS)
def test_the_stub_fails_every_scenario(notebook, function, check, naive, capsys):
    stub, _ = notebook_exercise(notebook, function)
    result = check(stub)
    assert result.total >= 2 and result.passed == 0, result
    assert "✗" in capsys.readouterr().out


@pytest.mark.parametrize("notebook, function, check, naive", EXERCISES, ids=IDS)
def test_the_tutorial_code_fails(notebook, function, check, naive):
    result = check(naive)
    assert not result.ok, result


@pytest.mark.parametrize("notebook, function, check, naive", EXERCISES, ids=IDS)
def test_the_answer_passes(notebook, function, check, naive, capsys):
    result = check(answer(notebook, function))
    assert result.ok, capsys.readouterr().out


@pytest.mark.parametrize("notebook, function, check, naive", EXERCISES, ids=IDS)
def test_stub_and_answer_share_signature_and_docstring(notebook, function, check, naive):
    stub, source = notebook_exercise(notebook, function)
    good = answer(notebook, function)
    assert "# TODO" in source
    pairs = [(stub, good)]
    if inspect.isclass(good):   # a class: its docstring, and each of its methods
        assert inspect.getdoc(stub) == inspect.getdoc(good)
        pairs = [(getattr(stub, name), method) for name, method in vars(good).items()
                 if inspect.isfunction(method) and not name.startswith("_") and name in vars(stub)]
        missing = {name for name, m in vars(good).items() if inspect.isfunction(m)} - set(vars(stub))
        assert not missing - {"broadcast"}, f"the stub lacks {missing}"   # helpers may be the learner's own
    for stub_fn, good_fn in pairs:
        assert inspect.signature(stub_fn) == inspect.signature(good_fn, eval_str=True)
        assert inspect.getdoc(stub_fn) == inspect.getdoc(good_fn)


def test_the_kit_helpers_pass_the_lesson_02_checks():
    from lessons.kit import stream
    assert ex02.check_recv_exactly(stream.recv_exactly).ok
    assert ex02.check_recv_message(stream.recv_message).ok
