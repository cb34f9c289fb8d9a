"""Defaults for `pytest --nbval`, which takes its options from the command line only.

With no options, nbval would start whatever kernel a notebook names (which may
not exist on the learner's machine), wait 2000 s for a hung cell, and compare
outputs byte for byte. Here, unless the command line says otherwise:

- notebooks run in the current environment's Python (``--nbval-current-env``);
- a cell that runs past 60 s fails (``--nbval-cell-timeout``);
- anything machine-specific in an output is masked by the patterns in
  ``nbval_sanitize.cfg`` (``--nbval-sanitize-with``).

Tests run on several workers (pytest-xdist, ``--dist loadscope``): each test
module, and each notebook (its cells share one kernel and run in order), runs
whole on one worker.
"""
import pathlib

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

