"""`protobin`: binarized, class-agnostic prototypes with max-over-tokens cosine similarity (the paper's probe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import PROBES, Probe


class _SignStraightThrough(torch.autograd.Function):
    """Exact signs forward (sign(0) = +1), identity gradient backward.

    `sign + w - w.detach()` would add float rounding to the signs; this keeps them exactly +-1.
    """

    @staticmethod
    def forward(ctx, weights: torch.Tensor) -> torch.Tensor:
        return torch.where(weights >= 0, torch.ones_like(weights), -torch.ones_like(weights))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def binarize(weights: torch.Tensor) -> torch.Tensor:
    """sign(w) in {-1, +1} (sign(0) = +1) with a straight-through gradient to w."""
    return _SignStraightThrough.apply(weights)


@PROBES.register("protobin", "binarized class-agnostic prototypes, max cosine over tokens, linear head")
class ProtoBinProbe(Probe):
    """Binarized prototypical probe (Rauch et al., 2026).

    M = C J real-valued prototypes P (init N(0, 0.02^2)), not tied to classes. Forward:
        B = sign(P)                      (straight-through: dL/dP = dL/dB)
        s_m = max_{valid (t,f)} cos(z_{t,f}, B_m)
        logits = W dropout(s) + b        (W: C x M)
    No orthogonality loss. Parameters: M D (stored as 1 bit each at inference) + (M + 1) C.
    """

    name = "protobin"

    def __init__(
        self,
        token_dim: int,
        num_classes: int,
        global_dim: int = 0,
        prototypes_per_class: int = 20,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim)
        self.prototypes_per_class = prototypes_per_class
        self.num_prototypes = num_classes * prototypes_per_class
        self.prototypes = nn.Parameter(torch.randn(self.num_prototypes, token_dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_prototypes, num_classes)

    def similarities(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every token to every binarized prototype: (B, T, F, M); padding = -inf."""
        prototypes = F.normalize(binarize(self.prototypes), dim=-1)
        sims = F.normalize(tokens, dim=-1) @ prototypes.T
        return sims.masked_fill(~mask.unsqueeze(-1), float("-inf"))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.similarities(tokens, mask).amax(dim=(1, 2))))
