"""Read any results into one tidy table for `patchprobe report`.

An input is a results table (the bench's results.parquet / results.csv), a bench folder holding
`results/results.parquet`, a sweep folder (`summary.json` + `final/seed=N`), a demo folder
(`summary.json` with its `runs/`), or any folder of run folders. Readers are tried in the order of
`READERS`; the first whose `accepts` says yes reads the input. (A grid file is read one layer up, by
the `report` command, which may import the bench; it passes its reader in `extra_readers`.)

The table has one row per (encoder, dataset, draw, probe, seed, split, metric): columns encoder,
dataset, draw (NaN without k-shot draws), probe (the label shown), probe_name (the registered probe),
seed, split, metric, value, num_parameters, train_seconds, search_seconds (NaN where unknown), run
(the run folder, or "" when the input does not say where its runs are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import PatchprobeError
from ..train import Run

COLUMNS = ["encoder", "dataset", "draw", "probe", "probe_name", "seed", "split", "metric", "value", "num_parameters",
           "train_seconds", "search_seconds", "run"]
REQUIRED = ["encoder", "dataset", "probe", "seed", "split", "metric", "value"]


@dataclass
class ResultsInput:
    """What was read: the tidy table and, per input, a line saying what it was and what it held."""

    table: pd.DataFrame
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reader:
    name: str
    accepts: Callable[[Path], bool]
    read: Callable[[Path], tuple[pd.DataFrame, list[str]]]  # -> (rows, notes)


def _run_rows(run: Run, probe: str | None = None, search_seconds: float = float("nan"), draw: float = float("nan"),
              splits: tuple[str, ...] = ("valid", "test")) -> list[dict]:
    """Tidy rows of one finished run (numbers only; a diverged run gives none)."""
    metrics, config = run.metrics, run.config
    rows = []
    for split in splits:
        for metric, value in metrics.split(split).items():
            if isinstance(value, float) and not isinstance(value, bool):
                rows.append({"encoder": run.bank.encoder, "dataset": run.bank.dataset, "draw": draw,
                             "probe": probe or config.probe, "probe_name": config.probe, "seed": config.seed, "split": split,
                             "metric": metric, "value": value, "num_parameters": metrics.num_parameters,
                             "train_seconds": metrics.train_seconds, "search_seconds": search_seconds, "run": str(run.root)})
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


# --- readers ---------------------------------------------------------------------------------------


def _is_table(path: Path) -> bool:
    return path.is_file() and path.suffix in (".parquet", ".csv")


def _read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise PatchprobeError(f"{path}: cannot read this results table ({exc})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        hint = " (cells.csv is a summary without seeds: pass results.parquet or results.csv beside it)" if "mean" in frame.columns else ""
        raise PatchprobeError(f"{path}: not a results table, missing column(s) {', '.join(missing)}{hint}")
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = {"probe_name": frame["probe"], "run": ""}.get(column, np.nan)
    frame["run"] = [run if isinstance(run, str) else "" for run in frame["run"]]  # an empty CSV field reads as NaN
    notes = [] if (frame["run"] != "").any() else [
        f"{path.name} does not say where its runs are, so per-clip scores cannot be read from it "
        "(pass the grid file instead)"]
    return frame[COLUMNS], notes


def _is_bench_folder(path: Path) -> bool:
    return path.is_dir() and (path / "results" / "results.parquet").is_file()


def _read_bench_folder(path: Path) -> tuple[pd.DataFrame, list[str]]:
    return _read_table(path / "results" / "results.parquet")


def _summary(path: Path) -> dict | None:
    try:
        return json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else None
    except ValueError as exc:
        raise PatchprobeError(f"{path / 'summary.json'}: unreadable ({exc})") from None


def _is_sweep(path: Path) -> bool:
    summary = _summary(path) if path.is_dir() else None
    return bool(summary) and "seeds" in summary and (path / "final").is_dir()


def _read_sweep(path: Path) -> tuple[pd.DataFrame, list[str]]:
    summary = _summary(path)
    rows = []
    for seed in summary["seeds"]:
        folder = path / "final" / f"seed={seed}"
        if Run.is_finished(folder):
            rows += _run_rows(Run(folder), search_seconds=float(summary.get("search_seconds", np.nan)))
    return _frame(rows), []


def _is_demo(path: Path) -> bool:
    summary = _summary(path) if path.is_dir() else None
    return bool(summary) and "datasets" in summary and (path / "runs").is_dir()


def _read_demo(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The runs each demo table cell rests on: every seed at the chosen rate (or the one converged L-BFGS run)."""
    summary = _summary(path)
    rows = []
    for block in summary["datasets"].values():
        for label, cell in block["probes"].items():
            chosen = path / cell["run"]
            folders = sorted(chosen.parent.glob("seed=*")) if chosen.name.startswith("seed=") else [chosen]
            for folder in folders:
                if Run.is_finished(folder):
                    rows += _run_rows(Run(folder), probe=label)
    return _frame(rows), ["demo: each probe's learning rate was chosen on validation with the first seed, "
                          "then every seed trained at it"]


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and next(Run.find(path), None) is not None


def _read_runs(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every run under `path`; where one probe was trained with several settings on a bank, the setting with
    the best mean validation score is kept (so the report never mixes settings, and never picks on test)."""
    frame = _frame([row for run in Run.find(path) for row in _run_rows(run)])
    frame["setting"] = [_setting(Run(r)) for r in frame["run"]]
    keys = ["encoder", "dataset", "probe"]
    kept, notes = [], []
    for key, group in frame.groupby(keys, sort=False):
        settings = group["setting"].unique()
        if len(settings) > 1:
            valid = group[(group["split"] == "valid")]
            metric = "map" if "map" in set(valid["metric"]) else (valid["metric"].iloc[0] if len(valid) else None)
            by_setting = valid[valid["metric"] == metric].groupby("setting")["value"].mean()
            best = by_setting.idxmax() if len(by_setting) else settings[0]
            group = group[group["setting"] == best]
            notes.append(f"{'/'.join(key)}: {len(settings)} settings found, kept the best on validation ({best})")
        kept.append(group)
    return pd.concat(kept).drop(columns="setting") if kept else _frame([]), notes


def _setting(run: Run) -> str:
    config = run.config
    args = ", ".join(f"{k}={v}" for k, v in sorted(config.probe_args.items()))
    return f"lr {config.lr:g}, wd {config.weight_decay:g}" + (f", {args}" if args else "")


READERS = [
    Reader("results table", _is_table, _read_table),
    Reader("bench folder", _is_bench_folder, _read_bench_folder),
    Reader("sweep folder", _is_sweep, _read_sweep),
    Reader("demo folder", _is_demo, _read_demo),
    Reader("run folders", _is_run_folder, _read_runs),
]


def read_results(inputs: list[str | Path], extra_readers: list[Reader] | None = None) -> ResultsInput:
    """One tidy table from every input (see the module docstring for the columns), plus what each input was."""
    if not inputs:
        raise PatchprobeError("report needs at least one INPUT (a results table, grid file, sweep, run or demo folder)")
    frames, sources, notes = [], [], []
    readers = list(extra_readers or []) + READERS
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise PatchprobeError(f"{path}: no such file or folder")
        reader = next((r for r in readers if r.accepts(path)), None)
        if reader is None:
            raise PatchprobeError(f"{path}: not a results table (.parquet/.csv), grid file, sweep folder (summary.json + final/), "
                                  f"demo folder or folder of runs; nothing to report")
        frame, found = reader.read(path)
        frames.append(frame)
        notes += found
        sources.append(f"{path} ({reader.name}: {len(frame.drop_duplicates(['encoder', 'dataset', 'probe', 'seed', 'draw']))} runs)")
    table = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else _frame([])
    if table.empty:
        raise PatchprobeError(f"{', '.join(map(str, inputs))}: no finished runs with scores to report")
    table = table.drop_duplicates(subset=["encoder", "dataset", "draw", "probe", "seed", "split", "metric"], keep="first")
    return ResultsInput(table=table.reset_index(drop=True), sources=sources, notes=notes)
