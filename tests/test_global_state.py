"""Importing patchprobe, or running one of its searches, leaves the user's global settings alone."""

from __future__ import annotations

import subprocess
import sys
import textwrap

IMPORT_EVERYTHING = textwrap.dedent("""
    import sys, warnings
    import matplotlib, optuna
    # third-party libraries add their own warning filters when first imported: import them beforehand
    import numpy, pandas, scipy.special, scipy.stats, sqlalchemy, torch, torch.onnx, torch.jit

    def state():
        return (dict.__getitem__(matplotlib.rcParams, "backend"), optuna.logging.get_verbosity(), list(warnings.filters))

    before = state()
    import patchprobe, patchprobe.bench, patchprobe.cli, patchprobe.demo, patchprobe.export, patchprobe.report, patchprobe.sweep
    assert state() == before, (before, state())
    assert "matplotlib.pyplot" not in sys.modules, "figures are drawn without pyplot"
    print("unchanged")
""")


def test_importing_the_package_changes_no_global_state():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "unchanged", done.stderr


def test_a_search_restores_the_users_optuna_verbosity(tmp_path):
    import optuna

    from patchprobe.sweep import SweepConfig, open_study

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    try:
        open_study(SweepConfig(probe="linear", trials=1), f"sqlite:///{tmp_path / 'optuna.db'}", "verbosity")
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(previous)
