"""Result tables: collect run folders into a tidy DataFrame and render Markdown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import read_json


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per (run folder, evaluated split, metric) under `root` (folders holding metrics.json)."""
    rows = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        run = metrics_path.parent
        metrics = read_json(metrics_path)
        config = read_json(run / "config.json")
        for split in ("valid", "test"):
            for metric, value in (metrics.get(split) or {}).items():
                rows.append(
                    {
                        "run": str(run.relative_to(root)),
                        "encoder": config["bank"]["encoder"],
                        "dataset": config["bank"]["dataset"],
                        "probe": config["train"]["probe"],
                        "lr": config["train"]["lr"],
                        "seed": config["train"]["seed"],
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "num_parameters": metrics.get("num_parameters"),
                        "train_seconds": metrics.get("train_seconds"),
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
