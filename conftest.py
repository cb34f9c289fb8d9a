"""Defaults for `pytest --nbval`, which takes its options from the command line only.

With no options, nbval would start whatever kernel a notebook names (which may
not exist on the learner's machine), wait 2000 s for a hung cell, and compare
outputs byte for byte. Here, unless the command line says otherwise:

- notebooks run in the current environment's Python (``--nbval-current-env``);
- a cell that runs past 60 s fails (``--nbval-cell-timeout``);
- anything machine-specific in an output is masked by the patterns in
  ``nbval_sanitize.cfg`` (``--nbval-sanitize-with``).

Tests run on several workers (pytest-xdist): three per core, since most tests
spend much of their time waiting on sockets and timers. Each notebook runs whole
on one worker (its cells share one kernel and run in order); every other test
goes to whichever worker is free. Before they start, the sources are compiled
once for all of them (``compile_once``).
"""
import compileall
import fnmatch
import os
import pathlib
import sys
import tempfile
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent
NBVAL_DEFAULT_CELL_TIMEOUT = 2000  # nbval's own default, i.e. "not given"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):   # the controller (or the only process)
        compile_once(config, rewrite_tests=bool(config.getoption("numprocesses", None)))
    option = config.option
    if not hasattr(option, "nbval_current_env"):  # nbval is not installed
        return
    if not option.nbval_kernel_name:
        option.nbval_current_env = True
    if option.nbval_cell_timeout == NBVAL_DEFAULT_CELL_TIMEOUT:
        option.nbval_cell_timeout = 60
    if not option.nbval_sanitize_with:
        option.nbval_sanitize_with = str(ROOT / "nbval_sanitize.cfg")
    talk_to_kernels_over_unix_sockets()


SOURCES = ("lessons", "solutions", "tests", "benchmarks")


def compile_once(config, rewrite_tests: bool = True) -> int:
    """Compile the workbook's modules and (``rewrite_tests``) rewrite the test modules'
    asserts, once, before any worker starts.

    Python caches a module's bytecode in ``__pycache__`` and pytest caches each test
    module with its asserts rewritten, unless PYTHONDONTWRITEBYTECODE is set (it is on
    some CI machines): then each of the six workers rewrote every test module (about 2 s
    apiece), and each of the 200-odd servers and clients the tests start compiled the kit
    again (about 0.1 s apiece). Even without it, six workers on a fresh clone all do the
    same at once. So the controller writes both caches first, as pip and compileall
    would. Python uses a cached module only if its source's modification time and size
    still match (pytest 9: its hash); restoring an older file with its old time and size
    (``cp -p``, ``tar``) can fool the first check, as it can with any ``__pycache__``.

    Test modules are rewritten only for workers: a single process (``-n 0``, one test
    file) rewrites just the ones it runs. The rewriting uses pytest's own, internal
    functions; if they change, this does nothing (slower, never wrong), and
    tests/test_suite_setup.py fails. Returns how many test modules have their
    rewritten code cached.
    """
    for name in SOURCES:   # (test modules excepted: pytest never imports them plainly)
        compileall.compile_dir(ROOT / name, quiet=2, rx=_rewritten_by_pytest(config))
    if not rewrite_tests:
        return 0
    try:
        from _pytest.assertion import rewrite
        state = config.stash[rewrite.assertstate_key]
    except (ImportError, AttributeError, KeyError):   # another pytest, or --assert=plain
        return 0
    count = 0
    rewritten = _rewritten_by_pytest(config)
    for path in [ROOT / "conftest.py", *(ROOT / "tests").glob("*.py")]:
        if not rewritten.search(path.name):
            continue
        try:
            pyc = rewrite.get_cache_dir(path) / (path.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(path, pyc) is None:
                pyc.parent.mkdir(parents=True, exist_ok=True)
                source_key, code = rewrite._rewrite_test(path, config)
                if not rewrite._write_pyc(state, code, source_key, pyc):
                    return count   # cannot write here: leave the rest to the workers
            count += 1
        except (AttributeError, TypeError, ValueError, OSError, SyntaxError):
            return count   # pytest changed, a read-only clone, a broken test: the workers cope
    return count


class _rewritten_by_pytest:
    """Matches the test modules pytest rewrites (python_files, and conftest.py)."""

    def __init__(self, config):
        self.patterns = [*config.getini("python_files"), "conftest.py"]

    def search(self, path) -> bool:
        name = os.path.basename(str(path))
        return any(fnmatch.fnmatch(name, pattern) for pattern in self.patterns)


def talk_to_kernels_over_unix_sockets() -> None:
    """Each notebook's kernel listens on Unix sockets, not on five loopback TCP ports.

    jupyter_client picks a kernel's ports by binding port 0 and closing the socket; the
    kernel binds them a second or so later. Meanwhile the tests open thousands of loopback
    connections, and one of them can take such a port as its own: the kernel then cannot
    bind it, and nbval waits 60 s for it ("Kernel didn't respond in 60 seconds", every
    cell of that notebook an error; once in about 18 full runs). ZeroMQ has no Unix
    sockets on Windows, which keeps TCP.
    """
    if sys.platform == "win32":
        return
    import nbval.kernel
    if not getattr(nbval.kernel.KernelManager, "over_unix_sockets", False):
        nbval.kernel.KernelManager = _unix_socket_manager(nbval.kernel.KernelManager)


def _unix_socket_manager(manager: type) -> type:
    class UnixSocketKernelManager(manager):
        """A KernelManager whose kernel's sockets are files: an absolute path of their own
        (the kernel runs in notebooks/, nbval elsewhere; a relative one would differ)."""
        over_unix_sockets = True

        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(tempfile.gettempdir(), f"nbval-{uuid.uuid4().hex[:12]}"))
            super().__init__(**kwargs)

    return UnixSocketKernelManager


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: three workers per core. A test here is a server and its clients, and
    they mostly wait (for a timeout, a peer, a child process): on 2 cores, 2 workers kept
    the cores 51% busy, 4 workers 76% and 6 workers 88% (benchmarks/RESULTS.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(3 * (cores or 1), 32)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` with a notebook as the only scope that must stay together."""
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling   # xdist is installed: it calls this hook

    class NotebookScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            # nbval's items are "notebooks/NN_name.ipynb::Cell 3": one kernel, in order.
            # Any other test is a scope of its own. Scopes go out largest first, so
            # the notebooks start before the single tests.
            path = nodeid.split("::", 1)[0]
            return path if path.endswith(".ipynb") else nodeid

    return NotebookScheduling(config, log)
