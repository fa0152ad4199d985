"""What training, the L-BFGS solver, searches and run folders share: the config, the result, building a
probe for a bank, iterating a split, predicting and evaluating. Both `trainer` and `lbfgs` import it
(neither imports the other's internals), so the training package has no import cycle.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..bank import LoadedSplit
from ..probes import PROBES, Probe, create_probe
from .losses import LOSSES
from .metrics import evaluate_scores


class TrainConfig(BaseModel):
    """One probe training run. Saved as `config.json` next to every result.

    lr "auto" (the default) trains every rate of `lr_grid` (default: the probe's registered grid,
    `PROBES.spec(probe).lr_grid`) in one shared pass and keeps the best on the valid split (on a
    seeded carve of train when the bank has none); the saved config holds the chosen rate, and the
    run's `lr_selection` the grid, the scores and whether the pick sits at an edge of the grid.
    A number trains that rate only. The L-BFGS solver has no learning rate ("auto" is kept as is).
    loss "auto" = asymmetric loss for multi-label banks, cross-entropy for multi-class ones.
    asl_*: the asymmetric loss's settings. The defaults are those of the Bird-MAE code (its
    AsymmetricLoss defaults, which no experiment config overrides): gamma_neg 4, gamma_pos 1, clip 0.05.
    precision "bf16" runs the probe's forward pass under bfloat16 autocast (weights, optimiser state,
    loss and evaluation stay float32): for GPUs with bf16 matrix units (NVIDIA Ampere or newer), where
    it roughly halves the time of the token-map heads; accepted on CPU, where it is rarely faster.
    """

    model_config = ConfigDict(extra="forbid")

    probe: str = "protobin"
    probe_args: dict = Field(default_factory=dict)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float | Literal["auto"] = "auto"
    lr_grid: tuple[float, ...] | None = None
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
    asl_gamma_neg: float = Field(4.0, ge=0)
    asl_gamma_pos: float = Field(1.0, ge=0)
    asl_clip: float = Field(0.05, ge=0, lt=1)
    device: str = "cpu"
    precision: Literal["fp32", "bf16"] = "fp32"

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_is_auto_or_a_positive_rate(cls, value):
        if value == "auto":
            return value
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"lr must be 'auto' or a finite number greater than 0; got {value!r}") from None
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"lr must be 'auto' or a finite number greater than 0; got {value!r}")
        return rate

    @field_validator("lr_grid")
    @classmethod
    def _grid_is_positive(cls, value):
        if value is not None and (not value or any(not (math.isfinite(v) and v > 0) for v in value)):
            raise ValueError(f"lr_grid must hold finite learning rates greater than 0; got {value!r}")
        return None if value is None else tuple(sorted(float(v) for v in value))

    @property
    def lr_text(self) -> str:
        """The learning rate as people read it: "0.003", "auto", or "-" for L-BFGS (which has none)."""
        return "-" if self.solver == "lbfgs" else self.lr if isinstance(self.lr, str) else f"{self.lr:g}"


class LrSelection(BaseModel):
    """How `lr="auto"` chose the learning rate (`config.json` -> "lr_selection").

    grid: the rates trained (ascending); scores: the selection score of each (`metric` on `chosen_on`;
    None for a rate whose loss became non-finite); unstable: the rates whose loss rose (ranked below
    every stable one); edge: "low"/"high" when the chosen rate is the grid's first/last (the optimum may
    lie outside: widen the grid with `lr_grid` or search with `patchprobe sweep`).
    """

    grid: tuple[float, ...]
    scores: list[float | None]
    unstable: list[float] = []
    chosen: float
    edge: Literal["low", "high"] | None = None
    metric: str
    chosen_on: str  # "valid", or a description of the carve of train

    def describe(self) -> str:
        cells = ", ".join(f"{lr:g}: {'diverged' if s is None else f'{s:.4f}'}{' (loss rose)' if lr in self.unstable else ''}"
                          for lr, s in zip(self.grid, self.scores))
        edge = f"; at the {self.edge} end of the grid: the best rate may lie outside it" if self.edge else ""
        return f"lr auto: {self.metric} on {self.chosen_on} for {cells} -> {self.chosen:g}{edge}"


class ClassMetrics(BaseModel):
    """Per-class results on one split (`class_metrics.json` -> split). Lists follow `classes`.

    ap / auroc are None for a class they cannot score (no positive; no positive or no negative);
    support counts the positives; confusion (multi-class only) is [true class][predicted class] counts.
    """

    classes: list[str]
    support: list[int]
    ap: list[float | None]
    auroc: list[float | None]
    confusion: list[list[int]] | None = None


class DecisionThresholds(BaseModel):
    """Per-class decision thresholds on the probabilities `Run.scores` holds (`thresholds.json`).

    rule "f1": multi-label; class c is predicted when its sigmoid probability >= values[c], each value
    the F1-optimal cut on the valid split (`f1` its valid F1); classes without a valid positive get
    0.5 and are listed in `fallback`; without a valid split `values` is empty (chosen_on None). rule "argmax": multi-class; the top softmax class is the
    decision and `values` is empty. chosen_on names the split the values were fitted on.
    """

    rule: Literal["f1", "argmax"]
    classes: list[str]
    values: list[float] = []
    f1: list[float | None] = []
    fallback: list[str] = []
    chosen_on: str | None = None


@dataclass
class SplitScores:
    """One split's per-clip outputs: clip ids (N), labels (N, C) 0/1, scores (N, C) probabilities
    (sigmoid for multi-label banks, softmax for multi-class ones)."""

    clip_ids: list[str]
    labels: np.ndarray
    scores: np.ndarray


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
    # Why the loss is not trusted though it stayed finite (it ended far above its start, or rose over the
    # last third of training), or None. The metrics are kept: the run is reported, with this warning.
    unstable: str | None = None
    # Other things a user should know about the run (e.g. very few optimiser steps).
    warnings: list[str] = field(default_factory=list)
    # The epoch (from 1) where the valid metric peaked (history's "valid_<metric>"), or None without a valid split.
    peak_epoch: int | None = None
    optimizer_steps: int | None = None
    # The epoch after which `on_epoch` stopped this run (a pruned trial of a batch), or None.
    stopped_epoch: int | None = None
    # lr "auto": how the rate was chosen (the config holds the chosen rate).
    lr_selection: LrSelection | None = None
    # split -> per-class metrics / per-clip scores, and the decision thresholds fitted on valid.
    class_metrics: dict[str, ClassMetrics] = field(default_factory=dict)
    scores: dict[str, SplitScores] = field(default_factory=dict)
    thresholds: DecisionThresholds | None = None


def loss_name(config: TrainConfig, multilabel: bool) -> str:
    """The loss a config trains with on a multi-label (or multi-class) bank: "auto" resolves to asl (ce)."""
    if config.loss != "auto":
        if config.loss == "ce" and multilabel:
            raise ValueError("loss 'ce' needs a multi-class bank; this bank is multi-label (use asl or bce)")
        return config.loss
    return "asl" if multilabel else "ce"


def lr_grid(config: TrainConfig) -> tuple[float, ...]:
    """The rates lr "auto" tries for `config`: its own `lr_grid`, else the probe's registered grid (ascending)."""
    return config.lr_grid or tuple(sorted(PROBES.spec(config.probe).lr_grid))


def autocast(config: TrainConfig):
    """The context a training forward pass runs in: bfloat16 autocast on the config's device for precision "bf16"."""
    return torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def make_loss(config: TrainConfig, multilabel: bool):
    """The loss function a config trains with: (logits (B, C), targets (B, C)) -> scalar; ASL with the config's settings."""
    name = loss_name(config, multilabel)
    if name == "asl":
        return functools.partial(LOSSES["asl"], gamma_neg=config.asl_gamma_neg, gamma_pos=config.asl_gamma_pos, clip=config.asl_clip)
    return LOSSES[name]


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


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Logits (N, C) -> probabilities (N, C): sigmoid per class (multi-label) or softmax over classes (multi-class)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return 0.5 * (1.0 + np.tanh(0.5 * logits))  # = sigmoid, without overflow for large |logits|
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


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
        if probe.pooled_inputs is not None:  # the split's vectors, pooled once for every trial
            probe.prepare_pooled({kind: train.pooled(kind).to(config.device) for kind in probe.pooled_inputs})
        else:
            probe.prepare(split_batches(train, config.device))
    return probe
