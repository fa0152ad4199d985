"""Figures a user can put in a paper."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def grouped_bar_chart(
    values: dict[str, dict[str, float]],
    path: str | Path,
    title: str,
    ylabel: str = "score",
    errors: dict[str, dict[str, float]] | None = None,
) -> Path:
    """Bars grouped by outer key (e.g. dataset), one bar per inner key (e.g. probe), values annotated.

    Args:
        values: {group: {bar: value}}; errors: same shape, drawn as error bars (e.g. sd over seeds).
    """
    groups = list(values)
    bars = list(dict.fromkeys(b for g in groups for b in values[g]))
    width = 0.8 / max(len(bars), 1)
    figure, axis = plt.subplots(figsize=(1.6 + 1.9 * len(groups), 3.8), layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for i, bar in enumerate(bars):
        xs = np.arange(len(groups)) + (i - (len(bars) - 1) / 2) * width
        ys = [values[g].get(bar, np.nan) for g in groups]
        err = [errors[g].get(bar, 0.0) for g in groups] if errors else None
        drawn = axis.bar(xs, ys, width * 0.92, yerr=err, capsize=3, label=bar, color=colors[i % len(colors)])
        axis.bar_label(drawn, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=2)
    axis.set_xticks(np.arange(len(groups)), groups)
    axis.set_ylim(0, 1.08)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=10)
    figure.legend(fontsize=8, ncols=len(bars), loc="outside lower center", frameon=False)
    axis.grid(axis="y", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)
    return path
