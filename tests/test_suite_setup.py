"""How `pytest --nbval` sets itself up (the root conftest.py): compiled once, for every worker."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from tests.conftest import ROOT


def root_conftest(pytestconfig):
    """The root conftest.py as pytest loaded it (a plugin, not a package's module)."""
    return pytestconfig.pluginmanager.get_plugin(str(ROOT / "conftest.py"))


def test_compile_once_leaves_a_cache_that_pytest_and_python_read(pytestconfig):
    cached = root_conftest(pytestconfig).compile_once(pytestconfig)
    test_modules = list((ROOT / "tests").glob("test_*.py"))
    # Every test module (and the two conftests): if pytest's internals change, this fails.
    assert cached == len(test_modules) + 2
    # A pytest process that may not write bytecode reads the rewritten module...
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DEBUG": "1"}
    target = ROOT / "tests" / "test_01_basics.py"
    result = subprocess.run([sys.executable, "-m", "pytest", "-n0", "--collect-only", "-q", str(target)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert f"found cached rewritten pyc for {target}" in result.stdout + result.stderr
    assert f"rewriting {target!r}" not in result.stdout + result.stderr
    # ...and Python reads the kit's bytecode instead of compiling it in every server.
    for module in (ROOT / "lessons" / "kit").glob("*.py"):
        assert os.path.exists(importlib.util.cache_from_source(str(module))), module
