"""Training losses: asymmetric loss (multi-label default), BCE, cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al., 2021) for multi-label logits.

    p = sigmoid(x); p_m = max(p - clip, 0);
    L = -[ y (1 - p)^g+ log p + (1 - y) p_m^g- log(1 - p_m) ], logs clamped at eps.
    Defaults follow the Bird-MAE code's AsymmetricLoss (g- = 4, g+ = 1, clip 0.05, eps 1e-8), which its
    experiment configs do not override, so the paper's protocol trained with them (Ridnik et al.'s own
    scripts use g+ = 0). `TrainConfig.asl_gamma_neg/asl_gamma_pos/asl_clip` set them per run. Summed
    over classes, averaged over the batch.

    Args:
        logits, targets: (B, C).
    """
    probs = torch.sigmoid(logits)
    probs_neg = (probs - clip).clamp(min=0) if clip > 0 else probs
    loss_pos = targets * torch.log(probs.clamp(min=eps))
    loss_neg = (1 - targets) * torch.log((1 - probs_neg).clamp(min=eps))
    if gamma_pos or gamma_neg:
        # The focusing weights are constants (as in the official implementation's default).
        with torch.no_grad():
            weight = torch.pow(1 - probs, gamma_pos) * targets + torch.pow(probs_neg, gamma_neg) * (1 - targets)
        loss_pos, loss_neg = loss_pos * weight, loss_neg * weight
    return -(loss_pos + loss_neg).sum(dim=1).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, summed over classes and averaged over the batch (same scale as ASL)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1).mean()


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Multi-class cross-entropy; targets are one-hot (B, C)."""
    return F.cross_entropy(logits, targets.argmax(dim=1))


LOSSES = {"asl": asymmetric_loss, "bce": bce_loss, "ce": cross_entropy_loss}
