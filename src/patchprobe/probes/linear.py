"""Fixed-pooling heads: one vector per clip from a fixed rule, then a linear layer (or a small MLP).

`linear`, `mlp`, `linearc`, `linpre` and `freqpool`. Every head but `linpre` (see its docstring)
standardises its pooled vector with the mean and standard deviation of the training split (fitted once before training, stored with the
probe, applied at inference and in exports): with raw encoder features a 30-epoch AdamW run does not
converge (see docs/probes.md). `linear`, `linearc` and `freqpool` can also be solved to convergence
with full-batch L-BFGS (`TrainConfig(solver="lbfgs")`), since their pooled vectors are fixed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .base import PROBES, Probe, Standardizer, masked_mean, require_global


def _global_or_mean(probe: Probe, tokens, mask, global_vector) -> torch.Tensor:
    """The encoder's global vector when the head reads it, else the mean of valid tokens: (B, G or D)."""
    return require_global(probe, global_vector) if probe.uses_global else masked_mean(tokens, mask)


def _fit_standardizer(standardizer: Standardizer, pool, batches) -> None:
    with torch.no_grad():
        standardizer.fit(torch.cat([pool(b["tokens"], b["mask"], b["global"]).float() for b in batches]))


class _PooledHead(Probe, ABC):
    """Shared machinery: `pool(tokens, mask, global_vector) -> (B, H)`, then y = W S(h) + b, S the
    training-split standardisation. The pooled vector is fixed, so the head can be solved with L-BFGS."""

    supports_lbfgs = True
    # once the standardiser is fitted from pooled vectors, a trial is a few small products per step and
    # the stacked model's per-step overhead dominates: 8 linear trials took 2.9 s stacked, 1.4 s side by side
    # in one pass, 1.6 s one at a time (benchmarks/results/train-cpu-trials.md)
    stack_trials = False

    def __init__(self, token_dim: int, num_classes: int, global_dim: int, freq_tokens: int, features: int) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        self.norm = Standardizer(features)
        self.head = nn.Linear(features, num_classes)

    @abstractmethod
    def pool(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None) -> torch.Tensor:
        """The clip vector h: (B, H)."""

    def prepare(self, batches) -> None:
        _fit_standardizer(self.norm, self.pool, batches)

    def prepare_pooled(self, pooled: dict[str, torch.Tensor]) -> None:
        self.norm.fit(self.pooled_vector(pooled).float())

    def features(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        """The standardised clip vector S(h): (B, H), the input of the linear head."""
        return self.norm(self.pool(tokens, mask, global_vector))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(tokens, mask, global_vector))

    def pooled_vector(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """h from the split's pooled inputs (`pooled_inputs`); the same as `pool` on the token maps: (B, H)."""
        return torch.cat([pooled[kind] for kind in self.pooled_inputs], dim=-1)

    def forward_pooled(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.norm(self.pooled_vector(pooled)))


@PROBES.register("linear", "linear layer on the [cls]/global vector (mean of tokens if none)",
                 family="fixed", lr_range=(1e-3, 1.0), lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
class LinearProbe(_PooledHead):
    """y = W S(h) + b, h = the encoder's global vector, or the mean of valid tokens when it has none.

    S standardises h with the training split's mean and standard deviation. `use_global=False` forces
    the mean of tokens. Parameters: (H + 1) C, H = G or D (the 2 H statistics are buffers).
    """

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0, use_global: bool = True) -> None:
        on_global = bool(use_global and global_dim)
        super().__init__(token_dim, num_classes, global_dim, freq_tokens, global_dim if on_global else token_dim)
        self.uses_global, self.uses_tokens = on_global, not on_global
        self.pooled_inputs = ("global",) if on_global else ("mean",)

    def pool(self, tokens, mask, global_vector):
        return _global_or_mean(self, tokens, mask, global_vector)


@PROBES.register("mlp", "two-layer MLP on the [cls]/global vector (mean of tokens if none)",
                 family="fixed", lr_range=(1e-3, 1.0), lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
class MLPProbe(Probe):
    """y = W2 GELU(W1 S(h) + b1) + b2, h as in `linear` (global vector, else mean of valid tokens).

    No canonical hidden size exists; we use `hidden = H` (the input width) by default, with dropout
    `dropout` (default 0) after the activation. Parameters: (H + 1) hidden + (hidden + 1) C.
    """

    stack_trials = False  # as the pooled heads: cheaper side by side in the shared pass (`_PooledHead`)

    def __init__(
        self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0,
        hidden: int | None = None, dropout: float = 0.0, use_global: bool = True,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        self.uses_global = bool(use_global and global_dim)
        self.uses_tokens = not self.uses_global
        self.pooled_inputs = ("global",) if self.uses_global else ("mean",)
        features = global_dim if self.uses_global else token_dim
        self.hidden = hidden or features
        self.norm = Standardizer(features)
        self.mlp = nn.Sequential(nn.Linear(features, self.hidden), nn.GELU(), nn.Dropout(dropout))
        self.head = nn.Linear(self.hidden, num_classes)

    def _pool(self, tokens, mask, global_vector):
        return _global_or_mean(self, tokens, mask, global_vector)

    def prepare(self, batches) -> None:
        _fit_standardizer(self.norm, self._pool, batches)

    def prepare_pooled(self, pooled: dict[str, torch.Tensor]) -> None:
        self.norm.fit(pooled[self.pooled_inputs[0]].float())

    def forward(self, tokens, mask, global_vector=None):
        return self.head(self.mlp(self.norm(self._pool(tokens, mask, global_vector))))

    def forward_pooled(self, pooled):
        return self.head(self.mlp(self.norm(pooled[self.pooled_inputs[0]])))


@PROBES.register("linearc", "linear layer on [global vector ‖ mean of tokens]",
                 family="fixed", lr_range=(1e-3, 1.0), lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
class LinearConcatProbe(_PooledHead):
    """y = W S([g ‖ mean_n z_n]) + b (our reading of the paper's undefined `linearc`).

    g is the encoder's global vector ([cls] for ViTs); without one the input is the mean of tokens
    alone and the head equals `linear` on the mean. Parameters: (G + D + 1) C.
    """

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens, global_dim + token_dim)
        self.uses_global = global_dim > 0
        self.pooled_inputs = ("global", "mean") if self.uses_global else ("mean",)

    def pool(self, tokens, mask, global_vector):
        mean = masked_mean(tokens, mask)
        return torch.cat([require_global(self, global_vector), mean], dim=-1) if self.uses_global else mean


@PROBES.register("linpre", "LayerNorm on each token, mean over valid tokens, linear",
                 family="fixed", lr_range=(3e-3, 3.0), lr_grid=[1e-2, 3e-2, 1e-1, 3e-1, 1.0])
class LinearPreNormProbe(Probe):
    """y = W mean_n LN(z_n) + b (our reading of the paper's undefined `linpre`).

    LN is a LayerNorm with affine parameters applied to every token before pooling, so tokens with
    large norms (a common direction shared by all tokens) no longer dominate the mean. Unlike the other
    heads it gets no training-split standardisation: its pooled vector moves as LN learns, and fixed
    statistics (the pooled LN'd tokens vary little across clips) amplified that drift until training
    diverged (tests/test_train.py). Parameters: 2 D + (D + 1) C. Its LayerNorm acts on every token
    before pooling, so it cannot train on vectors pooled once (`pooled_inputs` stays None).
    """

    stack_trials = False  # a per-token LayerNorm with K affine sets runs slower vmapped than K passes (`Probe.stack_trials`)

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        self.token_norm = nn.LayerNorm(token_dim)
        self.head = nn.Linear(token_dim, num_classes)

    def forward(self, tokens, mask, global_vector=None):
        return self.head(masked_mean(self.token_norm(tokens), mask))


@PROBES.register("freqpool", "frequency-preserving pooling: mean over time per frequency band, concatenated, linear",
                 family="fixed", lr_range=(1e-3, 1.0), lr_grid=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
class FrequencyPoolProbe(_PooledHead):
    """h = [mean_t z_{t,1} ‖ ... ‖ mean_t z_{t,F}] (F D values), y = W S(h) + b.

    The M2D / MSM-MAE evaluation pooling: averaging only over time keeps where in frequency a
    sound lies, which a plain mean or [cls] discards. Needs F of the token grid (`freq_tokens`,
    taken from the bank). Parameters: (F D + 1) C.
    """

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0) -> None:
        if freq_tokens < 1:
            raise ValueError("freqpool needs freq_tokens (F of the bank's token grid); create it through `fit`/`train_probes`, or pass freq_tokens=F")
        super().__init__(token_dim, num_classes, global_dim, freq_tokens, freq_tokens * token_dim)
        self.pooled_inputs = ("freqmean",)

    def pool(self, tokens, mask, global_vector):
        batch, _, freq, dim = tokens.shape
        if freq != self.freq_tokens:
            raise ValueError(f"freqpool was built for {self.freq_tokens} frequency tokens but got a grid with {freq}")
        weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, F, 1)
        per_band = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, F, D)
        return per_band.reshape(batch, freq * dim)
