"""`conv`: a depthwise-separable convolution over the (T, F) token grid, then max and mean pooling."""

from __future__ import annotations

import torch
from torch import nn

from .base import PROBES, Probe, masked_mean


@PROBES.register("conv", "depthwise-separable 3x3 conv over the (T, F) token grid, [max ‖ mean] pooling, linear",
                 family="fixed", lr_range=(1e-3, 1.0), lr_grid=[3e-3, 1e-2, 3e-2, 1e-1])
class ConvProbe(Probe):
    """Our reading of the paper's undefined `conv` probe:

        u = GELU(PW(DW3x3(z)))                 z laid out as a D-channel image over (T, F)
        h = [max_{valid (t,f)} u ‖ mean_{valid (t,f)} u]
        y = W BN(h) + b

    DW3x3 is a per-channel 3x3 convolution (D (9 + 1) parameters), PW a 1x1 convolution mixing
    channels (D^2 + D). Padded tokens are zeroed before the convolution, so they look exactly like
    the convolution's own zero border, and they are left out of both poolings: a padded clip gives
    the same output as the clip alone. Parameters: 10 D + D^2 + D + (2 D + 1) C.
    """

    stack_trials = False  # vmapped depthwise convolutions run slower than K separate ones (`Probe.stack_trials`)

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0, kernel_size: int = 3) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        if kernel_size % 2 != 1:
            raise ValueError(f"conv: kernel_size must be odd so the grid keeps its shape (got {kernel_size})")
        self.depthwise = nn.Conv2d(token_dim, token_dim, kernel_size, padding=kernel_size // 2, groups=token_dim)
        self.pointwise = nn.Conv2d(token_dim, token_dim, 1)
        self.activation = nn.GELU()
        self.norm = nn.BatchNorm1d(2 * token_dim, affine=False)
        self.head = nn.Linear(2 * token_dim, num_classes)

    def feature_map(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Convolved tokens u: (B, T, F, D); values at padded positions are meaningless."""
        grid = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).permute(0, 3, 1, 2)  # (B, D, T, F)
        return self.activation(self.pointwise(self.depthwise(grid))).permute(0, 2, 3, 1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        features = self.feature_map(tokens, mask)
        largest = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=(1, 2))
        return self.head(self.norm(torch.cat([largest, masked_mean(features, mask)], dim=-1)))
