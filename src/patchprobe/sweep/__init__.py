"""Hyper-parameter search over probes trained on a bank."""

from .grid import fit_missing, grid_then_seeds, run_finished

__all__ = ["fit_missing", "grid_then_seeds", "run_finished"]
