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


def multilabel_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Macro mAP over classes with a positive, macro AUROC over classes with a positive and a negative.

    Args:
        labels: (N, C) multi-hot; scores: (N, C) any monotone score (logits or probabilities).

    Returns:
        {"map", "auroc", "map_classes", "auroc_classes", "classes_dropped"}: the number of classes
        scored by each metric, and how many classes had no positive (left out of mAP).
    """
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    positives = labels.sum(axis=0)
    with_pos = np.flatnonzero(positives > 0)
    with_both = np.flatnonzero((positives > 0) & (positives < labels.shape[0]))
    aps = [average_precision(labels[:, c], scores[:, c]) for c in with_pos]
    aucs = [roc_auc(labels[:, c], scores[:, c]) for c in with_both]
    return {
        "map": float(np.mean(aps)) if aps else float("nan"),
        "auroc": float(np.mean(aucs)) if aucs else float("nan"),
        "map_classes": int(len(with_pos)),
        "auroc_classes": int(len(with_both)),
        "classes_dropped": int(labels.shape[1] - len(with_pos)),
    }


def multiclass_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Accuracy (top-1) plus the multi-label metrics on the one-hot targets."""
    labels = np.asarray(labels)
    accuracy = float((np.asarray(scores).argmax(axis=1) == labels.argmax(axis=1)).mean())
    return {"accuracy": accuracy, **multilabel_metrics(labels, scores)}


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, multilabel: bool) -> dict:
    return multilabel_metrics(labels, scores) if multilabel else multiclass_metrics(labels, scores)


def primary_metric(multilabel: bool) -> str:
    """The number a run is judged by: macro mAP for multi-label, accuracy for multi-class."""
    return "map" if multilabel else "accuracy"
