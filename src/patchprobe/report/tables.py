"""Result tables: collect run folders into a tidy DataFrame and render Markdown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import read_json


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per (run folder, evaluated split, metric) under `root` (folders holding metrics.json).

    Columns: run, encoder, dataset, probe, lr, weight_decay, seed, split, metric, value,
    num_parameters, train_seconds, and one column per probe argument (e.g. prototypes_per_class;
    missing where a run does not set it).
    """
    rows = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        run = metrics_path.parent
        metrics = read_json(metrics_path)
        config = read_json(run / "config.json")
        probe_args = {key: value for key, value in config["train"].get("probe_args", {}).items() if not isinstance(value, (dict, list))}
        for split in ("valid", "test"):
            for metric, value in (metrics.get(split) or {}).items():
                rows.append(
                    {
                        "run": str(run.relative_to(root)),
                        "encoder": config["bank"]["encoder"],
                        "dataset": config["bank"]["dataset"],
                        "probe": config["train"]["probe"],
                        "lr": config["train"]["lr"],
                        "weight_decay": config["train"]["weight_decay"],
                        "seed": config["train"]["seed"],
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "num_parameters": metrics.get("num_parameters"),
                        "train_seconds": metrics.get("train_seconds"),
                        **probe_args,
                    }
                )
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency on `tabulate`)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
