"""Figures a user can put in a paper.

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so drawing one needs no
GUI backend and changes no global state (importing patchprobe leaves `matplotlib.use` to the user).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def new_figure(rows: int = 1, columns: int = 1, **options):
    """A figure and its axes, like `pyplot.subplots` but unmanaged by pyplot: (figure, axes)."""
    subplot_options = {key: options.pop(key) for key in ("sharex", "sharey", "squeeze") if key in options}
    figure = Figure(**options)
    return figure, figure.subplots(rows, columns, **subplot_options)


def palette(name: str = "tab10") -> tuple:
    """The colours of a qualitative colormap."""
    return matplotlib.colormaps[name].colors


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a figure as a 150-dpi PNG (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


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
    figure, axis = new_figure(figsize=(1.6 + 1.9 * len(groups), 3.8), layout="constrained")
    colors = palette("tab10")
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
    return save_figure(figure, path)


def ranked_bar_chart(
    panels: dict[str, dict[str, tuple[float, float]]],
    path: str | Path,
    title: str,
    groups: dict[str, str] | None = None,
    xlabel: str = "score (mean ± sd over seeds)",
) -> Path:
    """One panel per outer key; horizontal bars sorted best first, error bars, colour by group.

    Args:
        panels: {panel: {bar: (mean, sd)}}, e.g. {"multilabel (test mAP)": {"protobin": (0.79, 0.01), ...}}.
        groups: bar -> group name (e.g. probe family), one colour per group, shown in the legend.
    """
    groups = groups or {}
    names = list(dict.fromkeys(groups.get(b, "other") for p in panels.values() for b in p))
    colors = {name: palette("tab10")[i % 10] for i, name in enumerate(names)}
    rows = max(len(p) for p in panels.values())
    figure, axes = new_figure(1, len(panels), figsize=(4.2 * len(panels), 0.9 + 0.28 * rows), layout="constrained", squeeze=False)
    for axis, (panel, bars) in zip(axes[0], panels.items()):
        ranked = sorted(bars.items(), key=lambda item: item[1][0])
        ys = np.arange(len(ranked))
        means = [v[0] for _, v in ranked]
        axis.barh(ys, means, xerr=[v[1] for _, v in ranked], capsize=2, height=0.75,
                  color=[colors[groups.get(b, "other")] for b, _ in ranked])
        for y, (_, (mean, sd)) in zip(ys, ranked):
            axis.text(mean + sd + 0.008, y, f"{mean:.3f}", va="center", fontsize=7)  # right of the error bar
        axis.set_yticks(ys, [b for b, _ in ranked], fontsize=8)
        low = min(means)
        axis.set_xlim(max(0.0, low - 0.1), min(1.1, max(v[0] + v[1] for _, v in ranked) + 0.09))
        axis.set_title(panel, fontsize=9)
        axis.set_xlabel(xlabel, fontsize=8)
        axis.grid(axis="x", alpha=0.3)
    handles = [Rectangle((0, 0), 1, 1, color=colors[n]) for n in names]
    figure.legend(handles, names, fontsize=8, ncols=len(names), loc="outside lower center", frameon=False)
    figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)


# collect_runs columns that are not settings of a run: what a point aggregates over (seed), or results.
NOT_SETTINGS = ("run", "seed", "split", "metric", "value", "num_parameters", "train_seconds", "lr")


def sweep_plot(
    frame,
    x: str,
    path: str | Path,
    metric: str = "map",
    split: str = "test",
    title: str = "",
    log_x: bool = True,
) -> pd.DataFrame:
    """Metric against one setting (e.g. prototypes_per_class), mean ± sd over seeds.

    A point pools runs that differ only in their seed: one line per combination of every other setting
    that differs among the plotted runs (probe, dataset, task, J, epochs, solver, how lr was set, ...),
    named by those settings. Runs chosen by lr "auto" count as one setting whatever rate each chose;
    L-BFGS runs have no lr and are left out of an lr axis.

    Args:
        frame: `collect_runs` output; runs without column `x` are left out.
    Returns:
        the plotted table: line, probe, the differing settings, x, mean, sd, seeds.
    """
    if x not in frame.columns:
        raise ValueError(f"no run sets {x!r}; columns are {sorted(frame.columns)}")
    chosen = frame[(frame["metric"] == metric) & (frame["split"] == split) & frame[x].notna()]
    if chosen.empty:
        raise ValueError(f"no {split} {metric!r} values for runs with {x!r}")
    settings = [c for c in chosen.columns if c not in NOT_SETTINGS and c != x and not (x == "lr" and c == "lr_setting")]
    # missing probe arguments (a run that does not set one) group as "-", not dropped by groupby
    chosen = chosen.assign(**{c: chosen[c].map(lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else v)
                              for c in settings})
    differing = [c for c in settings if c != "probe" and chosen[c].astype(str).nunique() > 1]
    keys = ["probe", *differing]
    table = chosen.groupby([*keys, x])["value"].agg(mean="mean", sd="std", seeds="count").reset_index().fillna({"sd": 0.0})
    table.insert(0, "line", table[keys].astype(str).apply(
        lambda row: row["probe"] + "".join(f", {c}={row[c]}" for c in differing), axis=1))
    figure, axis = new_figure(figsize=(5.0 + 1.2 * bool(differing), 3.4), layout="constrained")
    for line, rows in table.groupby("line", sort=False):
        rows = rows.sort_values(x)
        axis.errorbar(rows[x], rows["mean"], yerr=rows["sd"], marker="o", capsize=3, label=f"{line} ({int(rows['seeds'].max())} seeds)")
    if log_x:
        axis.set_xscale("log")
        ticks = sorted(table[x].unique())
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
    axis.set_xlabel(x)
    axis.set_ylabel(f"{split} {metric}")
    axis.set_title(title or f"{split} {metric} vs {x}", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, frameon=False)
    save_figure(figure, path)
    return pd.DataFrame(table)
