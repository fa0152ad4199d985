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

from .._io import read_json
from ..bank import LoadedSplit
from ..train import TrainConfig, fit, load_bank_splits, primary_metric


def run_finished(run_dir: Path, config: TrainConfig) -> bool:
    """True when `run_dir` holds a finished run of exactly `config`."""
    if not (run_dir / "metrics.json").exists():
        return False
    return read_json(run_dir / "config.json")["train"] == config.model_dump()


def _valid_score(folder: Path, metric: str) -> float | None:
    """A finished run's validation score; None when it diverged."""
    metrics = read_json(folder / "metrics.json")
    return None if metrics.get("diverged") else metrics["valid"][metric]


def fit_missing(bank: str | Path, runs: list[tuple[TrainConfig, Path]], splits: dict[str, LoadedSplit], progress: bool = True) -> None:
    """Train (in shared passes) only the runs whose folder does not already hold that exact config."""
    todo = [(config, folder) for config, folder in runs if not run_finished(folder, config)]
    if todo:
        fit(bank, [config for config, _ in todo], [folder for _, folder in todo], splits=splits, progress=progress)


def grid_then_seeds(
    bank: str | Path,
    variants: dict[str, TrainConfig],
    lr_grid: dict[str, list[float]],
    seeds: list[int],
    runs_root: str | Path,
    splits: dict[str, LoadedSplit] | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Choose each variant's learning rate on validation with `seeds[0]`, then train every seed at it.

    Args:
        bank: bank folder (needs train, valid and test splits).
        variants: name -> template config (probe, probe_args, epochs, ...); lr and seeds are set here.
            Names become folder names, e.g. "protobin/J=5".
        lr_grid: name -> learning rates to try.
        seeds: the first one selects the rate; all of them are reported.
        runs_root: where the run folders go.

    Returns:
        name -> {"metric", "test" (mean over seeds), "test_sd", "test_per_seed", "valid", "test_auroc",
        "lr", "lr_at_grid_edge", "num_parameters", "train_seconds", "run", "lr_candidates"}.
    """
    splits = splits or load_bank_splits(bank, device=next(iter(variants.values())).device)
    if "valid" not in splits or "test" not in splits:
        raise ValueError(f"{bank}: grid search needs valid and test splits (has {', '.join(splits)})")
    metric = primary_metric(splits["train"].meta.multilabel)
    runs_root = Path(runs_root)
    first, *others = seeds

    def plan(name: str, lr: float, seed: int) -> tuple[TrainConfig, Path]:
        config = variants[name].model_copy(update={"lr": lr, "seed": seed, "data_seed": seed})
        return config, runs_root / name / f"lr={lr:g}" / f"seed={seed}"

    search = {name: [plan(name, lr, first) for lr in lr_grid[name]] for name in variants}
    fit_missing(bank, [run for runs in search.values() for run in runs], splits, progress)
    valid_scores = {name: {config.lr: _valid_score(folder, metric) for config, folder in runs} for name, runs in search.items()}
    chosen = {}
    for name, scores in valid_scores.items():
        finite = [(score, lr) for lr, score in scores.items() if score is not None]
        if not finite:
            raise FloatingPointError(f"{name}: every learning rate in {lr_grid[name]} diverged; try smaller ones")
        chosen[name] = max(finite)[1]  # ties go to the larger rate
    repeats = {name: [plan(name, chosen[name], seed) for seed in others] for name in variants}
    fit_missing(bank, [run for runs in repeats.values() for run in runs], splits, progress)

    table = {}
    for name in variants:
        best = [run for run in search[name] if run[0].lr == chosen[name]] + repeats[name]
        finished = {config.seed: read_json(folder / "metrics.json") for config, folder in best}
        per_seed = [m for m in finished.values() if not m.get("diverged")]  # seed 0 never diverged at its chosen rate
        test_per_seed = {str(seed): m["test"][metric] for seed, m in finished.items() if not m.get("diverged")}
        tests = list(test_per_seed.values())
        grid = lr_grid[name]
        table[name] = {
            "metric": metric,
            "test": float(np.mean(tests)),
            "test_sd": float(np.std(tests, ddof=1)) if len(tests) > 1 else 0.0,
            "test_per_seed": test_per_seed,
            "diverged_seeds": [seed for seed, m in finished.items() if m.get("diverged")],
            "valid": float(np.mean([m["valid"][metric] for m in per_seed])),
            "test_auroc": float(np.mean([m["test"]["auroc"] for m in per_seed])),
            "lr": chosen[name],
            # a pick at the end of its grid may be under-tuned: reports flag it
            "lr_at_grid_edge": len(grid) > 1 and chosen[name] in (min(grid), max(grid)),
            "num_parameters": per_seed[0]["num_parameters"],
            "train_seconds": float(np.mean([m["train_seconds"] for m in per_seed])),
            "run": str(best[0][1]),
            "lr_candidates": {f"{lr:g}": score for lr, score in valid_scores[name].items()},  # diverged: null
        }
    return table
