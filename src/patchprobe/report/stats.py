"""The statistics behind a report: cell means, wins, ranks, Friedman/Nemenyi, Kendall's tau, bootstrap.

Every function takes plain tables or arrays and returns plain values, so each can be checked by hand.
Distributions come from scipy (studentized range, chi-square via `friedmanchisquare`, Wilcoxon,
Kendall's tau); nothing here hand-rolls a p-value.

Words used throughout:
- a *cell* is one (encoder, dataset) pair: one bank, several probes trained on it;
- a cell's score for a probe is the mean over seeds, or, for k-shot datasets with several draws,
  the mean over draws of each draw's mean over seeds (the paper's aggregate for BirdSet); its sd is
  over the same units (seeds, or draws).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

CELL = ["encoder", "dataset"]


def cell_summary(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Mean and sd per (encoder, dataset, probe, metric) on one split.

    Args:
        table: tidy results, one row per (encoder, dataset, [draw], probe, seed, split, metric) with `value`.
    Returns:
        columns encoder, dataset, probe, metric, mean, sd, n (draws, or seeds without draws), seeds
        (fewest seeds of any draw), over ("seeds" or "draws"). sd is 0 for a single unit.
    """
    columns = ["encoder", "dataset", "probe", "metric", "mean", "sd", "n", "seeds", "over"]
    chosen = table[table["split"] == split]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    draw = chosen["draw"] if "draw" in chosen else pd.Series(np.nan, index=chosen.index)
    chosen = chosen.assign(draw=pd.to_numeric(draw, errors="coerce").fillna(-1))
    keys = ["encoder", "dataset", "probe", "metric"]
    rows = []
    for key, group in chosen.groupby(keys, sort=False):
        per_draw = group.groupby("draw")["value"].agg(["mean", "count"])
        drawn = (per_draw.index >= 0).any()
        values = (per_draw["mean"] if drawn else group["value"]).astype(float).to_numpy()
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        rows.append({**dict(zip(keys, key)), "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0, "n": int(values.size),
                     "seeds": int(per_draw["count"].min()), "over": "draws" if drawn else "seeds"})
    return pd.DataFrame(rows, columns=columns)


def primary_metrics(table: pd.DataFrame, preferred: tuple[str, ...] = ("accuracy", "map")) -> dict[str, str]:
    """dataset -> the metric it is judged by: the first of `preferred` the dataset reports (else its first metric).

    Only single-label datasets report accuracy (multi-label ones report map, auroc, ...), so the default
    order gives each dataset the primary metric its runs were judged by (`train.primary_metric`).
    """
    chosen = {}
    for dataset, group in table.groupby("dataset", sort=False):
        reported = list(dict.fromkeys(group["metric"]))
        chosen[dataset] = next((m for m in preferred if m in reported), reported[0])
    return chosen


def score_matrix(cells: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """(encoder, dataset) x probe matrix of `value` from `cell_summary` rows of each dataset's metric; NaN = missing."""
    return cells.pivot_table(index=CELL, columns="probe", values=value, aggfunc="first", sort=False)


def beats(mean_a: float, mean_b: float, sd_b: float) -> bool:
    """The paper's win rule: A beats B when A's mean is at least B's mean plus B's sd (and strictly above B's mean)."""
    return bool(mean_a >= mean_b + sd_b and mean_a > mean_b)


def win_matrix(cells: pd.DataFrame, probes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pairwise wins over cells where both probes have a score.

    Args:
        cells: `cell_summary` rows (one metric per dataset).
    Returns:
        (wins, shared, fraction): probe x probe frames; wins[a][b] = cells where row a beats column b,
        shared = cells both have, fraction = wins / shared (NaN where nothing is shared; the diagonal NaN).
    """
    means, sds = score_matrix(cells, "mean"), score_matrix(cells, "sd")
    probes = probes or list(means.columns)
    wins = pd.DataFrame(0, index=probes, columns=probes, dtype=int)
    shared = pd.DataFrame(0, index=probes, columns=probes, dtype=int)
    for a in probes:
        for b in probes:
            if a == b:
                continue
            both = means[a].notna() & means[b].notna()
            shared.loc[a, b] = int(both.sum())
            wins.loc[a, b] = int(sum(beats(ma, mb, sb) for ma, mb, sb in zip(means[a][both], means[b][both], sds[b][both])))
    fraction = (wins / shared.where(shared > 0)).astype(float)
    for probe in probes:
        fraction.loc[probe, probe] = np.nan
    return wins, shared, fraction


def ranks(matrix: pd.DataFrame) -> pd.DataFrame:
    """Rank of each probe within each row (1 = best, ties share their mean rank, missing stays NaN)."""
    return matrix.rank(axis=1, ascending=False, method="average")


def complete_rows(matrix: pd.DataFrame) -> pd.DataFrame:
    """The rows (cells) where every probe has a score: the blocks a Friedman test may use."""
    return matrix.dropna(axis=0, how="any")


def friedman_nemenyi(matrix: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Friedman test over complete cells and the Nemenyi critical difference of mean ranks (Demšar 2006).

    Args:
        matrix: cells x probes scores (higher is better); rows with a missing probe are dropped.
    Returns:
        {"mean_ranks": {probe: rank}, "cells": N used, "cells_dropped", "probes": k, "statistic", "p_value",
        "critical_difference", "alpha"}; statistic/p_value/critical_difference are None when k < 3 or N < 2.
    """
    complete = complete_rows(matrix)
    k, n = complete.shape[1], complete.shape[0]
    result = {"mean_ranks": ranks(complete).mean().sort_values().to_dict() if n else {}, "cells": int(n),
              "cells_dropped": int(len(matrix) - n), "probes": int(k), "statistic": None, "p_value": None,
              "critical_difference": None, "alpha": alpha}
    if k < 3 or n < 2:
        return result
    statistic, p_value = stats.friedmanchisquare(*[complete[c].to_numpy() for c in complete.columns])
    # Nemenyi: q_alpha is the studentized range quantile (k groups, infinite df) divided by sqrt(2)
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    result.update(statistic=float(statistic), p_value=float(p_value),
                  critical_difference=float(q_alpha * np.sqrt(k * (k + 1) / (6.0 * n))))
    return result


def wilcoxon_holm(matrix: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Pairwise Wilcoxon signed-rank tests over complete cells, Holm-corrected.

    Returns:
        one row per probe pair: a, b, cells, p_value, p_holm, significant (p_holm < alpha).
    """
    complete = complete_rows(matrix)
    probes = list(complete.columns)
    rows = []
    for i, a in enumerate(probes):
        for b in probes[i + 1:]:
            differences = complete[a] - complete[b]
            if len(complete) < 2 or np.allclose(differences, 0):
                p_value = 1.0
            else:
                p_value = float(stats.wilcoxon(complete[a], complete[b], zero_method="zsplit").pvalue)
            rows.append({"a": a, "b": b, "cells": len(complete), "p_value": p_value})
    frame = pd.DataFrame(rows, columns=["a", "b", "cells", "p_value"])
    frame["p_holm"] = holm(frame["p_value"].to_numpy()) if len(frame) else []
    frame["significant"] = frame["p_holm"] < alpha
    return frame


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (monotone, capped at 1), in the input order."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    m = len(p_values)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p_values[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def rerank(matrix: pd.DataFrame, probe_a: str, probe_b: str) -> dict:
    """Encoders ranked under two probes, and Kendall's tau between the rankings.

    Args:
        matrix: (encoder, dataset) x probe scores. An encoder's score under a probe is its mean over the
            datasets where both probes have a score for every encoder compared (so both rankings rest on
            the same data).
    Returns:
        {"scores": {probe: {encoder: score}}, "ranks": {probe: {encoder: rank}}, "datasets": [...],
        "encoders": [...], "tau", "p_value"} (tau None with fewer than 2 encoders).
    """
    pair = matrix[[probe_a, probe_b]].dropna()
    table = pair.reset_index()
    encoders = list(dict.fromkeys(table["encoder"]))
    per_dataset = table.groupby("dataset")["encoder"].nunique()
    datasets = [d for d in dict.fromkeys(table["dataset"]) if per_dataset[d] == len(encoders)]
    table = table[table["dataset"].isin(datasets)]
    scores = {p: table.groupby("encoder", sort=False)[p].mean().reindex(encoders) for p in (probe_a, probe_b)}
    result = {"scores": {p: s.to_dict() for p, s in scores.items()},
              "ranks": {p: s.rank(ascending=False, method="average").to_dict() for p, s in scores.items()},
              "datasets": datasets, "encoders": encoders, "tau": None, "p_value": None}
    if len(encoders) >= 2 and datasets:
        tau, p_value = stats.kendalltau(scores[probe_a].to_numpy(), scores[probe_b].to_numpy())
        result.update(tau=float(tau), p_value=float(p_value))
    return result


# --- bootstrap over test clips ------------------------------------------------------------------

Metric = Callable[[np.ndarray, np.ndarray], float]


def bootstrap_indices(clips: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, clips) indices drawn with replacement from a fixed-seed generator (numpy PCG64)."""
    return np.random.default_rng(seed).integers(0, clips, size=(resamples, clips))


def _seed_mean(metric: Metric, labels: np.ndarray, runs: list[np.ndarray], index: np.ndarray) -> float:
    return float(np.mean([metric(labels[index], scores[index]) for scores in runs]))


def bootstrap_ci(labels: np.ndarray, runs: list[np.ndarray], metric: Metric, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Percentile bootstrap CI over test clips of the seed-mean metric.

    Args:
        labels: (N, C) targets of the N test clips; runs: one (N, C) score array per seed, rows aligned with labels.
        metric: f(labels (n, C), scores (n, C)) -> float.
    Returns:
        {"estimate" (on all clips), "low", "high", "resamples", "clips", "seeds", "level"}.
    """
    index = bootstrap_indices(len(labels), resamples, seed)
    values = np.array([_seed_mean(metric, labels, runs, row) for row in index])
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return {"estimate": _seed_mean(metric, labels, runs, np.arange(len(labels))), "low": float(low), "high": float(high),
            "resamples": int(values.size), "clips": int(len(labels)), "seeds": len(runs), "level": level}


def paired_bootstrap(labels: np.ndarray, runs_a: list[np.ndarray], runs_b: list[np.ndarray], metric: Metric,
                     resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of the difference A - B on the same test clips (both resampled with one index).

    Returns:
        {"difference" (on all clips), "low", "high", "p_value" (two-sided: twice the smaller share of resampled
        differences on either side of 0, capped at 1), "resamples", "clips"}.
    """
    index = bootstrap_indices(len(labels), resamples, seed)
    differences = np.array([_seed_mean(metric, labels, runs_a, row) - _seed_mean(metric, labels, runs_b, row) for row in index])
    differences = differences[np.isfinite(differences)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    share_below, share_above = float(np.mean(differences <= 0)), float(np.mean(differences >= 0))
    whole = np.arange(len(labels))
    return {"difference": _seed_mean(metric, labels, runs_a, whole) - _seed_mean(metric, labels, runs_b, whole),
            "low": float(low), "high": float(high), "p_value": min(1.0, 2 * min(share_below, share_above)),
            "resamples": int(differences.size), "clips": int(len(labels)), "level": level}
