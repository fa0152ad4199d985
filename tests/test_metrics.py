import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from patchprobe.train.losses import asymmetric_loss
from patchprobe.train.metrics import average_precision, multiclass_metrics, multilabel_metrics, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_ap_and_auroc_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(200) < 0.2).astype(int)
    labels[0] = 1
    scores = np.round(rng.random(200), 1)  # many ties
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_macro_metrics_drop_classes_without_positives():
    rng = np.random.default_rng(0)
    labels = (rng.random((300, 6)) < 0.3).astype(int)
    labels[:, 4] = 0  # no positive: out of mAP and AUROC
    labels[:, 5] = 1  # no negative: in mAP, out of AUROC
    scores = rng.standard_normal((300, 6))
    out = multilabel_metrics(labels, scores)
    assert out["classes_dropped"] == 1 and out["map_classes"] == 5 and out["auroc_classes"] == 4
    keep = [0, 1, 2, 3, 5]
    assert out["map"] == pytest.approx(average_precision_score(labels[:, keep], scores[:, keep], average="macro"))
    assert out["auroc"] == pytest.approx(roc_auc_score(labels[:, :4], scores[:, :4], average="macro"))


def test_multiclass_accuracy():
    labels = np.eye(3)[[0, 1, 2, 2]]
    scores = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 0], [0, 0, 5]], dtype=float)
    assert multiclass_metrics(labels, scores)["accuracy"] == 0.75


def test_asymmetric_loss_formula():
    logits = torch.tensor([[2.0, -1.0, 0.3]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.sigmoid(logits)[0]
    pm = (p - 0.05).clamp(min=0)
    negatives = sum(pm[i] ** 4 * torch.log(1 - pm[i]) for i in (1, 2))
    # the default is Bird-MAE's gamma_pos = 1: the positive term is weighted by (1 - p)
    expected = -((1 - p[0]) * torch.log(p[0]) + negatives)
    assert asymmetric_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    expected_unfocused = -(torch.log(p[0]) + negatives)  # Ridnik et al.'s training scripts: gamma_pos = 0
    assert asymmetric_loss(logits, targets, gamma_pos=0.0).item() == pytest.approx(expected_unfocused.item(), rel=1e-6)
