"""Every exercise declared in lessons/exercises: its check fails on the stub and on the
tutorial's naive code, passes on the answer, and the notebook's stub matches the answer."""
from __future__ import annotations

import inspect
import json

import pytest

from lessons.exercises import all_exercises, drift, make_stub

EXERCISES = list(all_exercises())
IDS = [f"{e.lesson}:{e.name}" for e in EXERCISES]


@pytest.fixture(params=EXERCISES, ids=IDS)
def exercise(request):
    return request.param


def test_the_stub_fails_every_scenario(exercise, capsys):
    result = exercise.check(exercise.stub())
    assert result.total >= 2 and result.passed == 0, result
    assert "✗" in capsys.readouterr().out


def test_the_naive_code_fails(exercise):
    result = exercise.check(exercise.naive)
    assert not result.ok, result


def test_the_answer_passes(exercise, capsys):
    result = exercise.check(exercise.answer())
    assert result.ok, capsys.readouterr().out


def test_the_notebook_stub_is_made_from_the_answer(exercise):
    notebook = json.loads(exercise.notebook.read_text(encoding="utf-8"))
    assert drift(exercise, notebook) is None


def test_stub_and_answer_share_signature_and_docstring(exercise):
    stub, answer = exercise.stub(), exercise.answer()
    assert "# TODO" in exercise.stub_source()
    pairs = [(stub, answer)]
    if inspect.isclass(answer):
        pairs += [(getattr(stub, name), method) for name, method in vars(answer).items()
                  if inspect.isfunction(method) and name in vars(stub)]
    for stub_part, answer_part in pairs:
        assert inspect.cleandoc(stub_part.__doc__ or "") == inspect.cleandoc(answer_part.__doc__ or "")
        if callable(answer_part) and not inspect.isclass(answer_part):
            assert inspect.signature(stub_part) == inspect.signature(answer_part, eval_str=True)


def test_every_exercise_has_a_notebook_and_a_unique_name():
    assert len(set(IDS)) == len(IDS) and EXERCISES
    for exercise in EXERCISES:
        assert exercise.notebook.exists(), exercise.notebook


def test_a_stub_edited_by_hand_is_caught():
    exercise = EXERCISES[0]
    notebook = json.loads(exercise.notebook.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if exercise.tag in cell.get("metadata", {}).get("tags", []):
            cell["source"] = "".join(cell["source"]).replace("# TODO", "# TODO: just guess", 1)
    assert "differs" in drift(exercise, notebook)


def test_make_stub_cuts_each_region():
    source = '''def f(x):
    """Doc."""
    ### BEGIN SOLUTION
    return x + 1
    ### END SOLUTION
'''
    assert make_stub(source, "f", "add one") == (
        'def f(x):\n    """Doc."""\n    # TODO: add one\n    raise NotImplementedError("f is not written yet")')
    with pytest.raises(ValueError, match="no ### BEGIN SOLUTION"):
        make_stub("def f():\n    return 1\n", "f")


def test_the_kit_helpers_pass_the_lesson_02_checks():
    from lessons.exercises import ex02
    from lessons.kit import stream
    assert ex02.check_recv_exactly(stream.recv_exactly).ok
    assert ex02.check_recv_message(stream.recv_message).ok
