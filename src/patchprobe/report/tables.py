"""Result tables: collect run folders into a tidy DataFrame and render Markdown."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..train import Run


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per (run folder, evaluated split, metric) under `root` (folders holding metrics.json).

    Columns: run, encoder, dataset, probe, lr, weight_decay, seed, split, metric, value,
    num_parameters, train_seconds, and one column per probe argument (e.g. prototypes_per_class;
    missing where a run does not set it).
    """
    rows = []
    for run in Run.find(root):
        config, metrics = run.config, run.metrics
        probe_args = {key: value for key, value in config.probe_args.items() if not isinstance(value, (dict, list))}
        for split in ("valid", "test"):
            for metric, value in metrics.split(split).items():
                rows.append(
                    {
                        "run": str(run.root.relative_to(root)),
                        "encoder": run.bank.encoder,
                        "dataset": run.bank.dataset,
                        "probe": config.probe,
                        "lr": config.lr,
                        "weight_decay": config.weight_decay,
                        "seed": config.seed,
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "num_parameters": metrics.num_parameters,
                        "train_seconds": metrics.train_seconds,
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
