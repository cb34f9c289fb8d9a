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
goes to whichever worker is free.
"""
import os
import pathlib
import sys
import tempfile
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parent
NBVAL_DEFAULT_CELL_TIMEOUT = 2000  # nbval's own default, i.e. "not given"


def pytest_configure(config):
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
