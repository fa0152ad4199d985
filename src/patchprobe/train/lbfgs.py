"""A converged baseline: the linear head of `linear`, `linearc` or `freqpool` solved with full-batch L-BFGS.

Their pooled, standardised vectors are fixed, so the head is a regularised generalised linear model:
binary logistic regression per class for multi-label data, multinomial logistic regression for
multi-class data, plus (weight_decay / 2) ||W||^2. L-BFGS with a strong-Wolfe line search runs until the
gradient or the change in loss falls below tolerance (or `lbfgs_iterations`), i.e. to the optimum, not
to an epoch budget. The L2 strength is searched on validation by `search_l2`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..bank import LoadedSplit
from .core import TrainConfig, TrainResult, build_probe, predict, split_batches
from .metrics import evaluate_scores, primary_metric

L2_GRID = tuple(float(v) for v in np.logspace(-6, 0, 13))  # half-decades, 1e-6 .. 1


def _features(probe, split: LoadedSplit, device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([probe.features(b["tokens"], b["mask"], b["global"]) for b in split_batches(split, device)])


def fit_lbfgs(train: LoadedSplit, config: TrainConfig) -> TrainResult:
    """Solve the config's probe head on the whole training split; returns a TrainResult."""
    tick = time.perf_counter()
    probe = build_probe(train, config)
    if not getattr(probe, "supports_lbfgs", False):
        raise ValueError(f"solver 'lbfgs' needs a fixed pooled vector and a linear head (linear, linearc, freqpool); "
                         f"{config.probe} learns its pooling: use solver 'adamw'")
    features = _features(probe, train, config.device)
    labels = train.labels.to(config.device).float()
    multilabel = train.meta.multilabel
    head = probe.head
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=config.lbfgs_iterations, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        logits = head(features)
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels.argmax(dim=1))
        return loss + 0.5 * config.weight_decay * head.weight.pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    probe.train()
    optimizer.step(closure)
    probe.eval()
    with torch.no_grad():
        final = float(objective())
    state = optimizer.state[optimizer._params[0]]
    history = [{"epoch": 1, "loss": final, "lbfgs_iterations": int(state.get("n_iter", 0))}]
    diverged = None if math.isfinite(final) else f"{config.probe}: L-BFGS loss became {final}"
    return TrainResult(config=config, probe=probe, history=history, seconds=round(time.perf_counter() - tick, 2), diverged=diverged)


def search_l2(train: LoadedSplit, valid: LoadedSplit, config: TrainConfig,
              grid: tuple[float, ...] = L2_GRID) -> tuple[TrainConfig, dict[float, float], str | None]:
    """Fit one L-BFGS head per L2 strength in `grid`; return (best config, scores by strength, edge flag).

    The best strength has the highest validation score (ties: the stronger regularisation). The edge flag
    is "low"/"high" when it is the grid's first/last value: widen the grid then.
    """
    metric = primary_metric(train.meta.multilabel)
    scores = {}
    for strength in grid:
        candidate = config.model_copy(update={"solver": "lbfgs", "weight_decay": strength})
        result = fit_lbfgs(train, candidate)
        metrics = evaluate_scores(valid.labels.cpu().numpy(), predict(result.probe, valid), valid.meta.multilabel)
        scores[strength] = metrics[metric] if not result.diverged else float("-inf")
    best = max(grid, key=lambda s: (scores[s], s))
    edge = "low" if best == grid[0] else "high" if best == grid[-1] else None
    return config.model_copy(update={"solver": "lbfgs", "weight_decay": best}), scores, edge
