"""What training, the L-BFGS solver, searches and run folders share: the config, the result, building a
probe for a bank, iterating a split, predicting and evaluating. Both `trainer` and `lbfgs` import it
(neither imports the other's internals), so the training package has no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..bank import LoadedSplit
from ..probes import Probe, create_probe
from .metrics import evaluate_scores


class TrainConfig(BaseModel):
    """One probe training run. Saved as `config.json` next to every result.

    loss "auto" = asymmetric loss for multi-label banks, cross-entropy for multi-class ones.
    """

    model_config = ConfigDict(extra="forbid")

    probe: str = "protobin"
    probe_args: dict = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    loss: Literal["auto", "asl", "bce", "ce"] = "auto"
    seed: int = 0
    data_seed: int = 0
    grad_clip: float | None = None
    # "adamw": the paper's protocol (epochs, lr, schedule). "lbfgs": full-batch L-BFGS to convergence on
    # the regularised convex loss (weight_decay = L2 strength); linear, linearc and freqpool only.
    solver: Literal["adamw", "lbfgs"] = "adamw"
    lbfgs_iterations: int = 500
    device: str = "cpu"


@dataclass
class TrainResult:
    config: TrainConfig
    probe: Probe
    metrics: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # Why training stopped early (non-finite loss), or None. A diverged run keeps its metrics empty
    # so a search can rank it last instead of losing the whole shared pass.
    diverged: str | None = None
    # True when `fit` found this exact run finished on disk and loaded it instead of training it again.
    reused: bool = False


def loss_name(config: TrainConfig, multilabel: bool) -> str:
    """The loss a config trains with on a multi-label (or multi-class) bank: "auto" resolves to asl (ce)."""
    if config.loss != "auto":
        if config.loss == "ce" and multilabel:
            raise ValueError("loss 'ce' needs a multi-class bank; this bank is multi-label (use asl or bce)")
        return config.loss
    return "asl" if multilabel else "ce"


@torch.no_grad()
def predict(probe: Probe, split: LoadedSplit, batch_size: int = 256) -> np.ndarray:
    """Logits of a probe on every clip of a loaded split: (N, C) float32."""
    probe.eval()
    device = next(probe.parameters()).device
    out = [probe(b["tokens"], b["mask"], b["global"]).float().cpu() for b in split_batches(split, device, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, probe.num_classes), np.float32)


def evaluate(probe: Probe, split: LoadedSplit) -> dict:
    """Metrics of a probe on a split (mAP/AUROC for multi-label, accuracy too for multi-class)."""
    return evaluate_scores(split.labels.cpu().numpy(), predict(probe, split), split.meta.multilabel, split.meta.metrics or None)


def optional_to(value: torch.Tensor | None, device) -> torch.Tensor | None:
    """`value.to(device)`, passing None through (the global vector is optional)."""
    return None if value is None else value.to(device)


def split_batches(split: LoadedSplit, device, batch_size: int = 256):
    """The whole split once, in order, as batches on `device` (for statistics and full-batch solvers)."""
    for start in range(0, len(split), batch_size):
        batch = split.batch(torch.arange(start, min(start + batch_size, len(split)), device=split.tokens.device))
        yield {"tokens": batch["tokens"].to(device), "mask": batch["mask"].to(device),
               "global": optional_to(batch["global"], device), "labels": batch["labels"].to(device)}


def build_probe(train: LoadedSplit, config: TrainConfig) -> Probe:
    """The config's probe for this bank, seeded, with its training statistics fitted (`Probe.prepare`)."""
    torch.manual_seed(config.seed)
    probe = create_probe(
        config.probe,
        token_dim=train.meta.token_dim,
        num_classes=train.labels.shape[1],
        global_dim=train.meta.global_dim,
        freq_tokens=train.meta.freq_dim or train.tokens.shape[2],
        **config.probe_args,
    ).to(config.device)
    if type(probe).prepare is not Probe.prepare:
        probe.prepare(split_batches(train, config.device))
    return probe
