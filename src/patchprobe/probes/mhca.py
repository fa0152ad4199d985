"""`mhca`: multi-head cross-attention pooling with one learned query (V-JEPA's attentive probe)."""

from __future__ import annotations

import torch
from torch import nn

from .base import PROBES, Probe, flatten_tokens


@PROBES.register("mhca", "multi-head cross-attention with a learned query (attentive probe)")
class MHCAProbe(Probe):
    """Attentive pooling, depth 1:

        k, v = W_k LN1(z), W_v LN1(z);  q1 = q0 + W_o MHA(W_q q0, k, v);  q2 = q1 + MLP(LN2(q1));
        logits = W q2 + b

    q0 is one learned query (trunc-normal, std 0.02); MLP has hidden width 4D. About 12 D^2 + D C
    parameters. `heads` defaults to D // 64 (at least 1).
    """

    name = "mhca"

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, heads: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__(token_dim, num_classes, global_dim)
        dim = token_dim
        self.heads = heads or max(1, dim // 64)
        if dim % self.heads:
            raise ValueError(f"mhca: token dim {dim} is not divisible by heads={self.heads}")
        self.query = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.head = nn.Linear(dim, num_classes)

    def attention(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vector (B, D) and attention weights (B, heads, T*F) of the learned query."""
        z, valid = flatten_tokens(tokens, mask)
        batch, length, dim = z.shape
        head_dim = dim // self.heads
        k, v = self.kv(self.norm1(z)).reshape(batch, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q = self.q(self.query).reshape(1, 1, self.heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        scores = (q @ k.transpose(-2, -1)) / head_dim**0.5  # (B, H, 1, N)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)
        pooled = (weights @ v).transpose(1, 2).reshape(batch, dim)
        q1 = self.query[:, 0] + self.proj(pooled)
        return q1 + self.mlp(self.norm2(q1)), weights[:, :, 0]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        pooled, _ = self.attention(tokens, mask)
        return self.head(pooled)


