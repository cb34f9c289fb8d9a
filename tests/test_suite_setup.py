"""How `pytest --nbval` sets itself up (the root conftest.py): compiled once, for every worker."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TARGET = ROOT / "tests" / "test_01_basics.py"
KIT_MODULE = ROOT / "lessons" / "kit" / "echo.py"


def root_conftest(pytestconfig):
    """The root conftest.py as pytest loaded it (a plugin, not a package's module)."""
    return pytestconfig.pluginmanager.get_plugin(str(ROOT / "conftest.py"))


def test_compile_once_leaves_a_cache_that_pytest_and_python_read(pytestconfig):
    if pytestconfig.getoption("assertmode") != "rewrite":
        pytest.skip("asserts are not rewritten (--assert=plain): nothing to cache")
    # Remove two of its entries (any run before this one made them), so that this run
    # proves compile_once writes them. Other workers have imported both already.
    kit_pyc = importlib.util.cache_from_source(str(KIT_MODULE))
    for stale in [kit_pyc, *(ROOT / "tests" / "__pycache__").glob(TARGET.stem + ".*-pytest-*.pyc")]:
        if os.path.exists(stale):
            os.remove(stale)
    cached = root_conftest(pytestconfig).compile_once(pytestconfig)
    # Every test module and the two conftests: if pytest's internals change, this fails.
    assert cached == len(list((ROOT / "tests").glob("test_*.py"))) + 2
    assert os.path.exists(kit_pyc)   # Python reads it instead of compiling the kit in every server
    # A pytest process that may not write bytecode reads the rewritten module.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DEBUG": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-n0", "--collect-only", "-q", str(TARGET)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert f"found cached rewritten pyc for {TARGET}" in result.stdout + result.stderr
    assert f"rewriting {TARGET!r}" not in result.stdout + result.stderr
