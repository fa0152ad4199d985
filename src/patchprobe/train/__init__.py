"""Training: losses, metrics, the shared-pass trainer (settings of one probe stacked into one model), the L-BFGS baseline, and typed run folders."""

from .core import TrainConfig, TrainResult, build_probe, evaluate, loss_name, predict, split_batches
from .lbfgs import L2_GRID, fit_lbfgs, search_l2
from .losses import LOSSES, asymmetric_loss
from .metrics import (METRICS, average_precision, compute_metrics, evaluate_scores, multiclass_metrics, multilabel_metrics,
                      primary_metric, roc_auc, top1_hit_rate)
from .run import fit, load_probe
from .stacked import StackedMembers
from .store import ProbeArchitecture, Run, RunMetrics, RunRecord
from .trainer import train_probes

__all__ = [
    "LOSSES",
    "L2_GRID",
    "METRICS",
    "ProbeArchitecture",
    "Run",
    "RunMetrics",
    "RunRecord",
    "StackedMembers",
    "TrainConfig",
    "TrainResult",
    "asymmetric_loss",
    "average_precision",
    "build_probe",
    "compute_metrics",
    "evaluate",
    "evaluate_scores",
    "fit",
    "fit_lbfgs",
    "load_probe",
    "loss_name",
    "multiclass_metrics",
    "multilabel_metrics",
    "predict",
    "primary_metric",
    "roc_auc",
    "search_l2",
    "split_batches",
    "top1_hit_rate",
    "train_probes",
]
