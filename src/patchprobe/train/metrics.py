"""Evaluation metrics: macro mAP and macro AUROC over classes that can be scored, and accuracy."""

from __future__ import annotations

import numpy as np


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision of one class (scikit-learn's definition: step-wise, ties grouped).

    Args:
        labels: (N,) in {0, 1}, at least one positive; scores: (N,).
    """
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Last index of each run of equal scores: a threshold includes the whole tie group.
    ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_pos = np.cumsum(labels)[ends]
    predicted = ends + 1
    precision = true_pos / predicted
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = Mann-Whitney U / (P N), ties counted one half."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positives = labels.astype(bool)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _macro_ap(labels: np.ndarray, scores: np.ndarray, min_positives: int) -> tuple[float, int]:
    classes = np.flatnonzero(labels.sum(axis=0) >= min_positives)
    aps = [average_precision(labels[:, c], scores[:, c]) for c in classes]
    return (float(np.mean(aps)) if aps else float("nan")), int(len(classes))


def top1_hit_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """BirdSet's T1-Acc: the top-scored class is one of the true labels, over clips with any label."""
    rows = np.flatnonzero(labels.any(axis=1))
    if rows.size == 0:
        return float("nan"), 0
    hits = labels[rows, scores[rows].argmax(axis=1)]
    return float(hits.mean()), int(rows.size)


def _metric_map(labels, scores):
    value, classes = _macro_ap(labels, scores, 1)
    return {"map": value, "map_classes": classes, "classes_dropped": int(labels.shape[1] - classes)}


def _metric_cmap5(labels, scores):
    value, classes = _macro_ap(labels, scores, 5)
    return {"cmap5": value, "cmap5_classes": classes}


def _metric_auroc(labels, scores):
    positives = labels.sum(axis=0)
    both = np.flatnonzero((positives > 0) & (positives < labels.shape[0]))
    aucs = [roc_auc(labels[:, c], scores[:, c]) for c in both]
    return {"auroc": float(np.mean(aucs)) if aucs else float("nan"), "auroc_classes": int(len(both))}


def _metric_t1acc(labels, scores):
    value, rows = top1_hit_rate(labels, scores)
    return {"t1acc": value, "t1acc_clips": rows}


def _metric_accuracy(labels, scores):
    return {"accuracy": float((scores.argmax(axis=1) == labels.argmax(axis=1)).mean())}


# name -> function(labels (N, C) bool, scores (N, C) float64) -> {name: value, extra counts...}.
# Add a metric by adding an entry; a dataset names the ones it reports (`AudioDataset.metrics`).
METRICS = {
    "map": _metric_map,  # macro AP over classes with a positive (= BirdSet's cmAP)
    "cmap5": _metric_cmap5,  # macro AP over classes with at least 5 positives
    "auroc": _metric_auroc,  # macro ROC AUC over classes with a positive and a negative
    "t1acc": _metric_t1acc,  # top-1 prediction is a true label, clips without labels dropped
    "accuracy": _metric_accuracy,  # top-1 accuracy against one-hot targets
}


def default_metrics(multilabel: bool) -> list[str]:
    return ["map", "auroc"] if multilabel else ["accuracy", "map", "auroc"]


def compute_metrics(labels: np.ndarray, scores: np.ndarray, names: list[str]) -> dict:
    """Every metric in `names` (keys of METRICS) with its class/clip counts.

    Args:
        labels: (N, C) multi-hot or one-hot; scores: (N, C) any monotone score.
    """
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    out: dict = {}
    for name in names:
        out.update(METRICS[name](labels, scores))
    return out


def multilabel_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Macro mAP over classes with a positive, macro AUROC over classes with a positive and a negative.

    Returns:
        {"map", "auroc", "map_classes", "auroc_classes", "classes_dropped"}: the number of classes
        scored by each metric, and how many classes had no positive (left out of mAP).
    """
    return compute_metrics(labels, scores, ["map", "auroc"])


def multiclass_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Accuracy (top-1) plus the multi-label metrics on the one-hot targets."""
    return compute_metrics(labels, scores, ["accuracy", "map", "auroc"])


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, multilabel: bool, metrics: list[str] | None = None) -> dict:
    """The dataset's metrics (default: the task's), always including the primary one."""
    names = list(metrics or default_metrics(multilabel))
    if primary_metric(multilabel) not in names:
        names.insert(0, primary_metric(multilabel))
    return compute_metrics(labels, scores, names)


def primary_metric(multilabel: bool) -> str:
    """The number a run is judged by: macro mAP for multi-label, accuracy for multi-class."""
    return "map" if multilabel else "accuracy"


def per_class_metrics(labels: np.ndarray, scores: np.ndarray, multilabel: bool) -> dict:
    """AP, AUROC and support (positives) per class, plus the confusion matrix for multi-class data.

    Args:
        labels: (N, C) multi-hot or one-hot; scores: (N, C) any monotone score.

    Returns:
        {"support": [C ints], "ap": [C floats or None], "auroc": [C floats or None], "confusion": C x C
        counts [true][predicted] (multi-class) or None}; AP is None for a class without a positive,
        AUROC for one without a positive or a negative.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    count, classes = labels.shape
    support = labels.sum(axis=0)
    ap = [average_precision(labels[:, c], scores[:, c]) if support[c] > 0 else None for c in range(classes)]
    auroc = [roc_auc(labels[:, c], scores[:, c]) if 0 < support[c] < count else None for c in range(classes)]
    confusion = None
    if not multilabel:
        confusion = np.zeros((classes, classes), dtype=np.int64)
        np.add.at(confusion, (labels.argmax(axis=1), scores.argmax(axis=1)), 1)
        confusion = confusion.tolist()
    return {"support": [int(s) for s in support], "ap": ap, "auroc": auroc, "confusion": confusion}


def f1_optimal_thresholds(labels: np.ndarray, scores: np.ndarray, fallback: float = 0.5) -> tuple[list[float], list[float | None]]:
    """Per class, the score threshold (predict positive when score >= threshold) with the best F1 on these clips.

    Every distinct score is a candidate cut; ties in F1 go to the higher threshold (fewer positives).
    A class without a positive gets `fallback` and F1 None.

    Args:
        labels: (N, C) multi-hot; scores: (N, C) probabilities.

    Returns:
        (thresholds, f1): two lists of C values.
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    thresholds: list[float] = []
    best_f1: list[float | None] = []
    for c in range(labels.shape[1]):
        positives = int(labels[:, c].sum())
        if positives == 0:
            thresholds.append(float(fallback))
            best_f1.append(None)
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        ranked, hits = scores[order, c], labels[order, c]
        ends = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # a cut keeps whole tie groups
        true_pos = np.cumsum(hits)[ends]
        f1 = 2 * true_pos / (ends + 1 + positives)
        best = int(np.argmax(f1))  # first maximum = the highest threshold among equals
        thresholds.append(float(ranked[ends[best]]))
        best_f1.append(float(f1[best]))
    return thresholds, best_f1
