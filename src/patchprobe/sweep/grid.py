"""Grid search over learning rates with one seed, then repeats with more seeds at the chosen rate.

The protocol behind the demo's tables and the J sweep: for every variant (a probe with its
arguments), train once per learning rate with the first seed, keep the rate with the best
validation score, then train the remaining seeds at that rate. Every run is a folder
`RUNS/<variant>/lr=<lr>/seed=<seed>` written by `fit`; finished folders are reused, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bank import LoadedBank
from ..train import Run, TrainConfig, fit, primary_metric

# A run folder another process is writing (a second worker on the same grid) is waited for, then reused.
WAIT_FOR_OTHER_WRITERS = 3600.0


def seed_summary(runs: list[Run], metric: str) -> dict:
    """One result row over the seed runs of one setting (the first run's seed is the one a rate was chosen with).

    Returns {"metric", "test" (mean over non-diverged seeds), "test_sd", "test_per_seed", "diverged_seeds", "valid",
    "test_auroc", "num_parameters", "train_seconds", "run" (the first run's folder)}.
    """
    finished = {run.config.seed: run.metrics for run in runs}
    per_seed = [m for m in finished.values() if not m.diverged]
    test_per_seed = {str(seed): m.split("test")[metric] for seed, m in finished.items() if not m.diverged}
    tests = list(test_per_seed.values())
    return {
        "metric": metric,
        "test": float(np.mean(tests)),
        "test_sd": float(np.std(tests, ddof=1)) if len(tests) > 1 else 0.0,
        "test_per_seed": test_per_seed,
        "diverged_seeds": [seed for seed, m in finished.items() if m.diverged],
        "valid": float(np.mean([m.split("valid")[metric] for m in per_seed])),
        "test_auroc": float(np.mean([m.split("test")["auroc"] for m in per_seed])),
        "num_parameters": per_seed[0].num_parameters,
        "train_seconds": float(np.mean([m.train_seconds for m in per_seed])),
        "run": str(runs[0].root),
    }


def grid_then_seeds(
    bank: str | Path | LoadedBank,
    variants: dict[str, TrainConfig],
    lr_grid: dict[str, list[float]],
    seeds: list[int],
    runs_root: str | Path,
    progress: bool = True,
) -> dict[str, dict]:
    """Choose each variant's learning rate on validation with `seeds[0]`, then train every seed at it.

    Args:
        bank: bank folder or LoadedBank (needs train, valid and test splits).
        variants: name -> template config (probe, probe_args, epochs, ...); lr and seeds are set here.
            Names become folder names, e.g. "protobin/J=5".
        lr_grid: name -> learning rates to try.
        seeds: the first one selects the rate; all of them are reported.
        runs_root: where the run folders go.

    Returns:
        name -> {"metric", "test" (mean over seeds), "test_sd", "test_per_seed", "valid", "test_auroc",
        "lr", "lr_at_grid_edge", "num_parameters", "train_seconds", "run", "lr_candidates"}.
    """
    bank = LoadedBank.coerce(bank, device=next(iter(variants.values())).device)
    bank.require("valid", "test", purpose="grid search")
    metric = primary_metric(bank.multilabel)
    runs_root = Path(runs_root)
    first, *others = seeds

    def plan(name: str, lr: float, seed: int) -> tuple[TrainConfig, Path]:
        config = variants[name].model_copy(update={"lr": lr, "seed": seed, "data_seed": seed})
        return config, runs_root / name / f"lr={lr:g}" / f"seed={seed}"

    def train_missing(runs: list[tuple[TrainConfig, Path]]) -> None:
        # finished folders of the same setting are reused; a stale one (another setting or bank) is retrained
        fit(bank, [config for config, _ in runs], [folder for _, folder in runs], progress=progress, overwrite=True,
            wait_seconds=WAIT_FOR_OTHER_WRITERS)

    search = {name: [plan(name, lr, first) for lr in lr_grid[name]] for name in variants}
    train_missing([run for runs in search.values() for run in runs])
    valid_scores = {name: {config.lr: Run(folder).metrics.score("valid", metric) for config, folder in runs}
                    for name, runs in search.items()}
    chosen = {}
    for name, scores in valid_scores.items():
        finite = [(score, lr) for lr, score in scores.items() if score is not None]
        if not finite:
            raise FloatingPointError(f"{name}: every learning rate in {lr_grid[name]} diverged; try smaller ones")
        chosen[name] = max(finite)[1]  # ties go to the larger rate
    repeats = {name: [plan(name, chosen[name], seed) for seed in others] for name in variants}
    train_missing([run for runs in repeats.values() for run in runs])

    table = {}
    for name in variants:
        best = [run for run in search[name] if run[0].lr == chosen[name]] + repeats[name]
        grid = lr_grid[name]
        row = seed_summary([Run(folder) for _, folder in best], metric)  # seed 0 never diverged at its chosen rate
        run_folder = row.pop("run")
        table[name] = {
            **row,
            "lr": chosen[name],
            # a pick at the end of its grid may be under-tuned: reports flag it
            "lr_at_grid_edge": len(grid) > 1 and chosen[name] in (min(grid), max(grid)),
            "run": run_folder,
            "lr_candidates": {f"{lr:g}": score for lr, score in valid_scores[name].items()},  # diverged: null
        }
    return table
