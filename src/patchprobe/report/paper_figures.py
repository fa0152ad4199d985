"""The report's figures: win matrix, backbone re-ranking, parameter efficiency, critical-difference diagram.

Each function draws one `matplotlib.figure.Figure` (no pyplot, no global state) from values the
statistics in `stats.py` computed; `save_all` writes it as PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .figures import new_figure

FAMILY_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]


def save_all(figure: Figure, stem: Path) -> dict[str, Path]:
    """Write `stem`.png (150 dpi) and `stem`.svg; returns {"png": path, "svg": path}."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {"png": stem.with_suffix(".png"), "svg": stem.with_suffix(".svg")}
    figure.savefig(paths["png"], dpi=150)
    figure.savefig(paths["svg"])
    return paths


def win_heatmap(fraction: pd.DataFrame, wins: pd.DataFrame, shared: pd.DataFrame) -> Figure:
    """Heatmap of win fractions (row beats column), each square annotated with wins/shared cells."""
    probes = list(fraction.index)
    size = max(4.0, 0.55 * len(probes) + 2.0)
    figure, axis = new_figure(figsize=(size + 1.0, size), layout="constrained")
    shown = axis.imshow(fraction.to_numpy(dtype=float), cmap="RdBu", vmin=0, vmax=1)
    for i, a in enumerate(probes):
        for j, b in enumerate(probes):
            if i != j and shared.loc[a, b]:
                value = fraction.loc[a, b]
                axis.text(j, i, f"{value:.2f}\n{wins.loc[a, b]}/{shared.loc[a, b]}", ha="center", va="center", fontsize=6.5,
                          color="white" if abs(value - 0.5) > 0.3 else "black")
    axis.set_xticks(range(len(probes)), probes, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(len(probes)), probes, fontsize=8)
    axis.set_xlabel("... beats this probe (column)")
    axis.set_ylabel("this probe (row) ...")
    figure.colorbar(shown, ax=axis, shrink=0.8).set_label("fraction of shared cells won")
    axis.set_title("Win matrix: row beats column by at least column's sd", fontsize=10)
    return figure


def slope_chart(result: dict, probe_a: str, probe_b: str) -> Figure:
    """Encoders' ranks under two probes, one line per encoder; Kendall's tau in the title."""
    encoders = result["encoders"]
    figure, axis = new_figure(figsize=(5.2, max(3.0, 0.45 * len(encoders) + 1.4)), layout="constrained")
    colors = matplotlib.colormaps["tab10"].colors
    for i, encoder in enumerate(encoders):
        left, right = result["ranks"][probe_a][encoder], result["ranks"][probe_b][encoder]
        color = colors[i % 10]
        axis.plot([0, 1], [left, right], "-o", color=color, linewidth=2)
        axis.text(-0.04, left, f"{encoder} {result['scores'][probe_a][encoder]:.3f}", ha="right", va="center", fontsize=8, color=color)
        axis.text(1.04, right, f"{result['scores'][probe_b][encoder]:.3f} {encoder}", ha="left", va="center", fontsize=8, color=color)
    axis.set_xlim(-0.9, 1.9)
    axis.set_ylim(len(encoders) + 0.5, 0.5)
    axis.set_xticks([0, 1], [f"rank under {probe_a}", f"rank under {probe_b}"])
    axis.set_yticks(range(1, len(encoders) + 1))
    axis.grid(axis="y", alpha=0.3)
    tau = "n/a" if result["tau"] is None else f"{result['tau']:+.2f} (p = {result['p_value']:.2g})"
    axis.set_title(f"Backbone ranking: Kendall's tau = {tau}\nmean over {len(result['datasets'])} dataset(s)", fontsize=10)
    return figure


def efficiency_plot(points: pd.DataFrame) -> Figure:
    """Score against trainable parameters (log x), one panel per encoder, one marker per probe family.

    Args:
        points: columns encoder, probe, family, parameters, score.
    """
    encoders = list(dict.fromkeys(points["encoder"]))
    families = list(dict.fromkeys(points["family"]))
    style = {f: (FAMILY_MARKERS[i % len(FAMILY_MARKERS)], matplotlib.colormaps["tab10"].colors[i % 10]) for i, f in enumerate(families)}
    columns = min(len(encoders), 3)
    rows = int(np.ceil(len(encoders) / columns))
    figure, axes = new_figure(rows, columns, figsize=(4.6 * columns, 3.6 * rows), layout="constrained", squeeze=False)
    for axis, encoder in zip(axes.flat, encoders):
        mine = points[points["encoder"] == encoder]
        for _, point in mine.iterrows():
            marker, color = style[point["family"]]
            axis.scatter(point["parameters"], point["score"], marker=marker, color=color, s=46, zorder=3)
            axis.annotate(point["probe"], (point["parameters"], point["score"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters (log)")
        axis.set_ylabel("mean test score over datasets")
        axis.set_title(encoder, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(encoders):]:
        axis.set_visible(False)
    handles = [Line2D([], [], linestyle="", marker=style[f][0], color=style[f][1], label=f) for f in families]
    figure.legend(handles=handles, fontsize=8, ncols=min(len(families), 6), loc="outside lower center", frameon=False)
    figure.suptitle("Parameter efficiency", fontsize=10)
    return figure


def cliques(mean_ranks: dict[str, float], critical_difference: float) -> list[list[str]]:
    """Maximal groups of probes whose mean ranks lie within the critical difference (not significantly apart)."""
    ordered = sorted(mean_ranks, key=mean_ranks.get)
    groups: list[list[str]] = []
    for i, probe in enumerate(ordered):
        group = [p for p in ordered[i:] if mean_ranks[p] - mean_ranks[probe] < critical_difference]
        if len(group) > 1 and not any(set(group) <= set(g) for g in groups):
            groups.append(group)
    return groups


def cd_diagram(mean_ranks: dict[str, float], critical_difference: float, cells: int, p_value: float) -> Figure:
    """Demšar's critical-difference diagram: mean ranks on an axis (best left), the CD as a bar, and
    thick lines joining probes that are not significantly different."""
    ordered = sorted(mean_ranks, key=mean_ranks.get)
    k = len(ordered)
    half = (k + 1) // 2
    figure, axis = new_figure(figsize=(7.0, 1.6 + 0.28 * half), layout="constrained")
    axis.set_xlim(-1.8, k + 2.8)  # room for the labels on both sides
    axis.set_ylim(-(half * 0.55 + 0.5), 1.6)
    axis.axis("off")
    axis.hlines(0, 1, k, color="black", linewidth=1)
    for tick in range(1, k + 1):
        axis.vlines(tick, 0, 0.15, color="black", linewidth=1)
        axis.text(tick, 0.3, str(tick), ha="center", fontsize=8)
    axis.hlines(1.1, 1, 1 + critical_difference, color="black", linewidth=2)
    axis.text(1 + critical_difference / 2, 1.25, f"CD = {critical_difference:.2f}", ha="center", fontsize=8)
    for i, probe in enumerate(ordered):
        rank = mean_ranks[probe]
        left = i < half
        level = -(i + 1) * 0.55 if left else -(k - i) * 0.55
        end = 0.6 if left else k + 0.4
        axis.plot([rank, rank, end], [0, level, level], color="0.3", linewidth=0.8)
        axis.text(end + (-0.05 if left else 0.05), level, f"{probe} ({rank:.2f})", ha="right" if left else "left", va="center", fontsize=8)
    for j, group in enumerate(cliques(mean_ranks, critical_difference)):
        low, high = mean_ranks[group[0]], mean_ranks[group[-1]]
        y = -0.2 - 0.12 * j
        axis.hlines(y, low - 0.03, high + 0.03, color="black", linewidth=3)
    axis.set_title(f"Mean rank over {cells} cells (1 = best); Friedman p = {p_value:.2g}; joined = not significantly different (Nemenyi)",
                   fontsize=9)
    return figure
