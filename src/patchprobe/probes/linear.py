"""`linear`: a linear classifier on the encoder's global vector (or the mean of valid tokens)."""

from __future__ import annotations

import torch
from torch import nn

from .base import PROBES, Probe, masked_mean


@PROBES.register("linear", "linear layer on the [cls]/global vector (mean of tokens if none)")
class LinearProbe(Probe):
    """y = W BN(h) + b, h = the encoder's global vector, or the mean of valid tokens when it has none.

    BN is BatchNorm1d without affine parameters (the MAE linear-probing protocol): it standardises
    the features with running training statistics, which lets a 30-epoch AdamW run converge.
    Parameters: (D_h + 1) C.
    """

    name = "linear"

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, use_global: bool = True) -> None:
        super().__init__(token_dim, num_classes, global_dim)
        self.use_global = bool(use_global and global_dim)
        self.uses_tokens = not self.use_global
        features = global_dim if self.use_global else token_dim
        self.norm = nn.BatchNorm1d(features, affine=False)
        self.head = nn.Linear(features, num_classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_global:
            if global_vector is None:
                raise ValueError("linear probe was built for a global vector but none was given")
            features = global_vector
        else:
            features = masked_mean(tokens, mask)
        return self.head(self.norm(features))
