"""Hyper-parameter search over probes trained on a bank: a small grid (the demo) and the paper's Optuna
search (Sobol then TPE, successive halving; SQLite or PostgreSQL storage). The benchmark grid that
drives extraction and searches over many encoders and datasets is `patchprobe.bench`."""

from .grid import grid_then_seeds, seed_summary
from .search import (LR_RANGES, WEIGHT_DECAY_RANGE, SobolThenTPE, SweepConfig, best_trial, default_storage, edge_flags, open_study,
                     run_sweep, trial_rows)

__all__ = ["LR_RANGES", "WEIGHT_DECAY_RANGE", "SobolThenTPE", "SweepConfig", "best_trial", "default_storage", "edge_flags",
           "grid_then_seeds", "open_study", "run_sweep", "seed_summary", "trial_rows"]
