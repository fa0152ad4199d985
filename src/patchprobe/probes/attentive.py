"""Attentive heads: learned weights over tokens decide what is pooled (`mhca`, `ep`, `simpool`, `abmilp`).

Each exposes `attention_map(tokens, mask) -> (B, T, F)`, the weight of every token in the pooled
vector (averaged over heads / queries), which `patchprobe analyze` draws over the spectrogram.
"""

from __future__ import annotations

import math

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from .base import PROBES, Probe, flatten_tokens, masked_mean


def _masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with invalid positions at exactly zero weight. valid broadcasts to scores."""
    return scores.masked_fill(~valid, float("-inf")).softmax(dim=-1)


class _TokenProduct(torch.autograd.Function):
    """A product of two operands whose vmap rule folds the K members of stacked trials into one product
    when only the second operand (the per-member one) is batched; the subclasses define the product."""

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @classmethod
    def _one_call_per_member(cls, info, in_dims, *operands):
        """vmap's fallback where the tokens differ per member too: one product each, stacked on dim 0."""
        moved = [x.movedim(dim, 0) if dim is not None else x.expand(info.batch_size, *x.shape) for x, dim in zip(operands, in_dims)]
        return torch.stack([cls.apply(*parts) for parts in zip(*moved)]), 0


class _TokenScores(_TokenProduct):
    """tokens (B, N, D) @ vectors (H, D)^T -> (B, N, H), with a vmap rule for stacked trials: K sets of
    vectors against the same tokens become one product with K H vectors, which reads the tokens once
    (vmap's own rule expands the tokens K times; measured 3x slower at K = 8)."""

    @staticmethod
    def forward(tokens, vectors):
        return tokens @ vectors.T

    @staticmethod
    def backward(ctx, grad):
        tokens, vectors = ctx.saved_tensors
        grad = grad.to(tokens.dtype)  # under autocast the gradient may come back wider than the product ran
        grad_tokens = grad @ vectors if ctx.needs_input_grad[0] else None
        grad_vectors = grad.reshape(-1, grad.shape[-1]).T @ tokens.reshape(-1, tokens.shape[-1]) if ctx.needs_input_grad[1] else None
        return grad_tokens, grad_vectors

    @staticmethod
    def vmap(info, in_dims, tokens, vectors):
        token_dim, vector_dim = in_dims
        if token_dim is None and vector_dim is not None:
            stacked = vectors.movedim(vector_dim, 0)  # (K, H, D)
            count, per_set = stacked.shape[:2]
            scores = _TokenScores.apply(tokens, stacked.reshape(count * per_set, -1))  # (B, N, K H)
            return scores.unflatten(-1, (count, per_set)), scores.ndim - 1
        return _TokenScores._one_call_per_member(info, in_dims, tokens, vectors)


class _PoolTokens(_TokenProduct):
    """weights (B, H, N) @ tokens (B, N, D) -> (B, H, D), with a vmap rule for stacked trials: K members'
    weights over the same tokens become one product with K H rows per clip, reading the tokens once."""

    @staticmethod
    def forward(weights, tokens):
        return weights @ tokens

    @staticmethod
    def backward(ctx, grad):
        weights, tokens = ctx.saved_tensors
        grad = grad.to(tokens.dtype)
        grad_weights = grad @ tokens.transpose(-2, -1) if ctx.needs_input_grad[0] else None
        grad_tokens = weights.transpose(-2, -1) @ grad if ctx.needs_input_grad[1] else None
        return grad_weights, grad_tokens

    @staticmethod
    def vmap(info, in_dims, weights, tokens):
        weight_dim, token_dim = in_dims
        if token_dim is None and weight_dim is not None:
            stacked = weights.movedim(weight_dim, 1)  # (B, K, H, N)
            batch, count, per_set = stacked.shape[:3]
            pooled = _PoolTokens.apply(stacked.reshape(batch, count * per_set, -1), tokens)  # (B, K H, D)
            return pooled.unflatten(1, (count, per_set)), 1
        return _PoolTokens._one_call_per_member(info, in_dims, weights, tokens)


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _same_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Operands of one product in one dtype: autocast's where it is on (an autograd Function's forward does
    not see autocast's casts), else the wider of the two."""
    if a.dtype == b.dtype:
        return a, b
    device = a.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def token_scores(tokens: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D), vectors (H, D) -> (B, N, H) = tokens @ vectors.T (stacked trials: see `_TokenScores`)."""
    tokens, vectors = _same_dtype(tokens, vectors)
    return tokens @ vectors.T if _exporting() else _TokenScores.apply(tokens, vectors)


def pool_tokens(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """weights (B, H, N), tokens (B, N, D) -> (B, H, D) = weights @ tokens (stacked trials: see `_PoolTokens`)."""
    weights, tokens = _same_dtype(weights, tokens)
    return weights @ tokens if _exporting() else _PoolTokens.apply(weights, tokens)


def default_heads(dim: int) -> int:
    """mhca's head count when none is given: D // 64 (V-JEPA's head width), at least 1."""
    return max(1, dim // 64)


class AttentiveProbe(Probe, ABC):
    """Base of heads that pool tokens with attention weights."""

    # simpool's and abmilp's trials each transform every token with their own weights (a per-clip query,
    # a tanh layer), which vmap batches slower than K separate passes: they share the data pass only.
    # mhca and ep score and pool the tokens against a few vectors per trial (`token_scores`,
    # `pool_tokens`), so K stacked trials read the tokens once: they stack (benchmarks/train.py).
    stack_trials = False

    @abstractmethod
    def attention(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vector (B, H) and attention weights (B, Q, T*F) over flattened tokens (Q heads or queries)."""

    def attention_map(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean attention weight per token over heads / queries: (B, T, F); zero at padding."""
        _, weights = self.attention(tokens, mask)
        return weights.mean(dim=1).reshape(mask.shape)


@PROBES.register("mhca", "multi-head cross-attention with a learned query (attentive probe)",
                 family="attentive", lr_range=(3e-4, 0.1), lr_grid=[3e-3, 1e-2, 3e-2])
class MHCAProbe(AttentiveProbe):
    """Attentive pooling, depth 1 (V-JEPA's attentive probe):

        k, v = W_k LN1(z), W_v LN1(z);  q1 = q0 + W_o MHA(W_q q0, k, v);  q2 = q1 + MLP(LN2(q1));
        logits = W q2 + b

    q0 is one learned query (trunc-normal, std 0.02); MLP has hidden width 4D. Initialised as V-JEPA's
    pooler: Linear weights trunc-normal(0.02), zero biases, W_o and the MLP's output layer / sqrt(2). `heads` defaults to
    D // 64 (at least 1). Parameters: D + 4 D (LN) + 4 (D^2 + D) (q, k, v, o) + 8 D^2 + 5 D (MLP) + (D + 1) C.
    """

    stack_trials = True

    def __init__(
        self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0,
        heads: int | None = None, mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        dim = token_dim
        self.heads = heads or default_heads(dim)
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
        # V-JEPA's AttentivePooler: every Linear trunc-normal(0.02) with zero bias, LayerNorms (1, 0), and the
        # block's output projections (attention proj, MLP fc2) scaled by 1 / sqrt(2 x layer) with layer = 1.
        # The classifier is created after that pass there, so it keeps PyTorch's default init.
        for module in (self.q, self.kv, self.proj, self.mlp[0], self.mlp[2]):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        with torch.no_grad():
            for module in (self.proj, self.mlp[2]):
                module.weight.div_(math.sqrt(2.0))
        self.head = nn.Linear(dim, num_classes)

    def attention(self, tokens, mask):
        # With one query, no token needs its own key or value. Per head h, with n = LN1's normalisation
        # of a token (before its scale g and shift b) and W_k,h / W_v,h that head's rows of W_k / W_v:
        #   score_h(z) = q_h . W_k,h (g n + b) + q_h . b_k,h = n . (g * W_k,h^T q_h) + (a constant per head),
        # and a constant drops out of the softmax; the pooled value is W_v,h (g (sum_t w_t n_t) + b) + b_v,h
        # because the weights sum to one. So each token costs two products with H vectors instead of a
        # (D x 2D) projection: D / H x fewer FLOPs per token (64x at D = 768), the same function (tested
        # against the textbook order, `attention_reference`).
        z, valid = flatten_tokens(tokens, mask)
        batch, _, dim = z.shape
        head_dim = dim // self.heads
        normalised = F.layer_norm(z, (dim,), eps=self.norm1.eps)  # (B, N, D), shared by every head
        query = self.q(self.query).reshape(self.heads, head_dim)
        key_weight, value_weight = self.kv.weight.reshape(2, self.heads, head_dim, dim).unbind(0)  # (H, d, D) each
        scoring = torch.einsum("hd,hdD->hD", query, key_weight) * self.norm1.weight / head_dim**0.5  # (H, D)
        scores = token_scores(normalised, scoring)  # (B, N, H)
        weights = _masked_softmax(scores.transpose(1, 2), valid[:, None, :])  # (B, H, N)
        mixed = pool_tokens(weights, normalised) * self.norm1.weight + self.norm1.bias  # (B, H, D): LN1 of the weighted mean
        values = torch.einsum("bhD,hdD->bhd", mixed, value_weight) + self.kv.bias[dim:].reshape(self.heads, head_dim)
        pooled = values.reshape(batch, dim)
        q1 = self.query[:, 0] + self.proj(pooled)
        return q1 + self.mlp(self.norm2(q1)), weights

    def attention_reference(self, tokens, mask):
        """`attention` computed in the textbook order (keys and values for every token): the definition the
        fast path is tested against; pooled (B, D), weights (B, H, T*F)."""
        z, valid = flatten_tokens(tokens, mask)
        batch, length, dim = z.shape
        head_dim = dim // self.heads
        k, v = self.kv(self.norm1(z)).reshape(batch, length, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q = self.q(self.query).reshape(1, 1, self.heads, head_dim).transpose(1, 2).expand(batch, -1, -1, -1)
        weights = _masked_softmax((q @ k.transpose(-2, -1)) / head_dim**0.5, valid[:, None, None, :])  # (B, H, 1, N)
        pooled = (weights @ v).transpose(1, 2).reshape(batch, dim)
        q1 = self.query[:, 0] + self.proj(pooled)
        return q1 + self.mlp(self.norm2(q1)), weights[:, :, 0]

    def forward(self, tokens, mask, global_vector=None):
        return self.head(self.attention(tokens, mask)[0])


@PROBES.register("ep", "efficient probing: M learned queries, one head, no Q/K projections, grouped values",
                 family="attentive", lr_range=(3e-3, 1.0), lr_grid=[1e-2, 3e-2, 1e-1, 3e-1])
class EfficientProbe(AttentiveProbe):
    """Efficient probing (Psomas et al.):

        A = softmax_n(Q z^T / sqrt(D))          Q: M x D learned queries (init N(0, 0.02^2))
        V = z W_v                               (no bias); channels split into M groups of D / M
        h = [A_1 V^(1) ‖ ... ‖ A_M V^(M)]       query m pools channel group m -> D values
        y = W BN(h) + b                         BN without affine

    `queries` (M, default 32) must divide D. Parameters: M D + D^2 + (D + 1) C.
    """

    stack_trials = True

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0, queries: int = 32) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        if token_dim % queries:
            divisors = [m for m in (1, 2, 4, 8, 16, 32, 64) if token_dim % m == 0]
            raise ValueError(f"ep: queries={queries} must divide the token dim {token_dim}; try one of {divisors}")
        self.num_queries = queries
        self.queries = nn.Parameter(torch.randn(queries, token_dim) * 0.02)
        self.value = nn.Linear(token_dim, token_dim, bias=False)
        self.norm = nn.BatchNorm1d(token_dim, affine=False)
        self.head = nn.Linear(token_dim, num_classes)

    def attention(self, tokens, mask):
        # A_m (z W_v)^(m) = (A_m z) W_v^(m): pool the tokens per query first, then project each pooled
        # vector onto its own channel group; per token 2 M D instead of D^2 + M D products (12x fewer at D = 768,
        # M = 32), the same function (tested against `attention_reference`).
        z, valid = flatten_tokens(tokens, mask)
        batch, _, dim = z.shape
        weights = _masked_softmax(token_scores(z, self.queries / dim**0.5).transpose(1, 2), valid[:, None, :])  # (B, M, N)
        per_query = pool_tokens(weights, z)  # (B, M, D)
        groups = self.value.weight.reshape(self.num_queries, dim // self.num_queries, dim)  # (M, D/M, D)
        pooled = torch.einsum("bmD,mgD->bmg", per_query, groups).reshape(batch, dim)
        return pooled, weights

    def attention_reference(self, tokens, mask):
        """`attention` in the paper's order (a value for every token): what the fast path is tested against."""
        z, valid = flatten_tokens(tokens, mask)
        batch, length, dim = z.shape
        weights = _masked_softmax((self.queries @ z.transpose(1, 2)) / dim**0.5, valid[:, None, :])  # (B, M, N)
        values = self.value(z).reshape(batch, length, self.num_queries, dim // self.num_queries).transpose(1, 2)  # (B, M, N, D/M)
        pooled = (weights.unsqueeze(-2) @ values).reshape(batch, dim)
        return pooled, weights

    def forward(self, tokens, mask, global_vector=None):
        # float32 into the BatchNorm: under bf16 autocast the pooled vector is bf16 while the running statistics
        # stay float32, which vmap's batch_norm rule (stacked trials) rejects
        return self.head(self.norm(self.attention(tokens, mask)[0].float()))


@PROBES.register("simpool", "SimPool: the mean token queries LayerNormed tokens, one attention map",
                 family="attentive", lr_range=(3e-4, 0.1), lr_grid=[3e-3, 1e-2, 3e-2])
class SimPoolProbe(AttentiveProbe):
    """SimPool (Psomas et al., 2023) without the optional power (gamma = None):

        q = W_q mean_n z_n;  k_n = W_k LN(z_n);  a = softmax_n(q . k_n / sqrt(D));  h = sum_n a_n LN(z_n)
        y = W h + b

    W_q and W_k have no bias. Parameters: 2 D^2 + 2 D + (D + 1) C.
    """

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        self.token_norm = nn.LayerNorm(token_dim)
        self.q = nn.Linear(token_dim, token_dim, bias=False)
        self.k = nn.Linear(token_dim, token_dim, bias=False)
        self.head = nn.Linear(token_dim, num_classes)

    def attention(self, tokens, mask):
        # (W_k z_n) . q = z_n . (W_k^T q): fold the key map into the clip's query once instead of
        # projecting every token (per token D instead of D^2 products; tested against `attention_reference`)
        query = self.q(masked_mean(tokens, mask))  # (B, D)
        z, valid = flatten_tokens(self.token_norm(tokens), mask)
        scores = (z @ (query @ self.k.weight).unsqueeze(-1)).squeeze(-1) / self.token_dim**0.5  # (B, N)
        weights = _masked_softmax(scores, valid)
        return (weights.unsqueeze(1) @ z).squeeze(1), weights.unsqueeze(1)

    def attention_reference(self, tokens, mask):
        """`attention` in SimPool's order (a key for every token): what the fast path is tested against."""
        query = self.q(masked_mean(tokens, mask))  # (B, D)
        z, valid = flatten_tokens(self.token_norm(tokens), mask)
        scores = (self.k(z) @ query.unsqueeze(-1)).squeeze(-1) / self.token_dim**0.5  # (B, N)
        weights = _masked_softmax(scores, valid)
        return (weights.unsqueeze(1) @ z).squeeze(1), weights.unsqueeze(1)

    def forward(self, tokens, mask, global_vector=None):
        return self.head(self.attention(tokens, mask)[0])


@PROBES.register("abmilp", "attention-based MIL pooling (efficient probing's scorer: Linear-tanh-Linear; gated=true: Ilse et al.)",
                 family="attentive", lr_range=(3e-3, 1.0), lr_grid=[1e-2, 3e-2, 1e-1, 3e-1])
class ABMILProbe(AttentiveProbe):
    """Attention-based MIL pooling, as the efficient-probing code (`abmilp.py`, depth 2) defines it:

        e_n = w^T tanh(V z_n + c) + d                 V: D x D (L = D hidden units), w: D
        a = softmax_n(e);  h = sum_n a_n z_n;  y = W BN(h) + b      BN without affine (the probe head)

    `gated=True` is Ilse et al.'s gated variant instead: e_n = w^T [tanh(V z_n) * sigmoid(U z_n)] with
    V, U: L x D (L = `hidden`, default 128) and w without bias.
    Parameters: L D + L + L + 1 (reference; L = D) or 2 (L D + L) + L (gated), plus (D + 1) C.
    """

    def __init__(
        self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0,
        hidden: int | None = None, gated: bool = False,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        hidden = hidden or (128 if gated else token_dim)
        self.attention_v = nn.Linear(token_dim, hidden)
        self.attention_u = nn.Linear(token_dim, hidden) if gated else None
        self.attention_w = nn.Linear(hidden, 1, bias=not gated)
        self.norm = nn.BatchNorm1d(token_dim, affine=False, eps=1e-6)
        self.head = nn.Linear(token_dim, num_classes)

    def attention(self, tokens, mask):
        z, valid = flatten_tokens(tokens, mask)
        hidden = torch.tanh(self.attention_v(z))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(z))
        weights = _masked_softmax(self.attention_w(hidden).squeeze(-1), valid)  # (B, N)
        return (weights.unsqueeze(1) @ z).squeeze(1), weights.unsqueeze(1)

    def forward(self, tokens, mask, global_vector=None):
        # float32 into the BatchNorm: under bf16 autocast the pooled vector is bf16 while the running statistics
        # stay float32, which vmap's batch_norm rule (stacked trials) rejects
        return self.head(self.norm(self.attention(tokens, mask)[0].float()))
