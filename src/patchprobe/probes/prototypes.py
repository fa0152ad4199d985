"""Prototype heads: similarity of every token to learned prototypes, max over tokens, then a classifier.

`protobin` (the paper's probe: binarized, class-agnostic), `protofloat` (the same without
binarization, to isolate what binarization does) and `proto` (float, class-owned prototypes with an
orthogonality loss, as in AudioProtoPNet / Bird-MAE prototypical probing).

Each exposes `similarities(tokens, mask) -> (B, T, F, M)` (the full map, for analysis; training takes
the max over tokens in blocks and never holds it), `prototype_vectors() -> (M, D)` (what the
forward pass compares tokens with) and `class_contributions(descriptor, classes) -> (B, M)` (how much
each prototype adds to the logit of one class per clip), which `patchprobe analyze` uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from .base import PROBES, Probe


def _sign(weights: torch.Tensor) -> torch.Tensor:
    """Exact +-1 signs with sign(0) = +1, in the input's dtype."""
    return torch.where(weights >= 0, 1.0, -1.0).to(weights.dtype)


class _SignStraightThrough(torch.autograd.Function):
    """Exact signs forward (sign(0) = +1), identity gradient backward.

    `sign + w - w.detach()` would add float rounding to the signs; this keeps them exactly +-1.
    Element-wise, so vmap (stacked trials) batches it by its own rule.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(weights: torch.Tensor) -> torch.Tensor:
        return _sign(weights)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def binarize(weights: torch.Tensor) -> torch.Tensor:
    """sign(w) in {-1, +1} (sign(0) = +1) with a straight-through gradient to w."""
    if torch.jit.is_tracing() or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        # Export and inference paths: a plain graph op (exporters cannot trace autograd Functions). Not
        # `weights.requires_grad`: inside vmap (stacked trials) a trained weight reads as not requiring it.
        return _sign(weights)
    return _SignStraightThrough.apply(weights)


# Similarity values (clips x tokens x prototypes) held at once by the chunked max over tokens: 2^24
# float32 values = 64 MB, whatever the batch, clip length and prototype count.
SIMILARITY_BLOCK = 1 << 24


class _ChunkedMaxSimilarity(torch.autograd.Function):
    """max over valid tokens of <z_n, p_m>, computed a block of tokens at a time, and its gradient.

    Forward keeps only the running max and the token that holds it ((B, M) each), never the
    (B, N, M) similarities. Backward uses that the max's gradient flows through its winning token
    alone: dL/dp_m = sum_b g_bm z_{b, n*(b,m)}, dL/dz_{b,n} = sum_{m: n*(b,m) = n} g_bm p_m, a gather
    and a scatter of B M D values instead of two (B, N, M) x D matrix products. Where several
    tokens tie for the max, the first wins (amax would share the gradient among them; the prototype
    gradient is the same when the tied tokens are equal, the usual way ties arise).

    Under vmap over prototype sets (K stacked trials), the K sets are compared as one set of K M
    prototypes: one wider matrix product per block instead of K narrow ones (`vmap` below).
    """

    @staticmethod
    def forward(tokens, mask, prototypes, block):
        # Prototypes on the rows, the block's tokens (all clips) on the columns: one (M, D) x (D, B n)
        # product, then the max along each row's clips' contiguous runs. The other orientation, (B, n, M)
        # and a max over the middle axis, ran at 0.3 of the fp32 matmul peak on 2 CPU cores against 0.75-0.8
        # for this one (as20k-shaped batch: 128 clips x 512 tokens x 768, M = 5270).
        batch, count, dim = tokens.shape
        prototype_count = prototypes.shape[0]
        step = max(1, block // max(1, batch * prototype_count))
        best = tokens.new_full((prototype_count, batch), float("-inf"))
        where = torch.zeros(best.shape, dtype=torch.long, device=tokens.device)
        for start in range(0, count, step):
            chunk = tokens[:, start : start + step]
            width = chunk.shape[1]
            sims = (prototypes @ chunk.reshape(-1, dim).T).view(prototype_count, batch, width)  # (M, B, n)
            padding = ~mask[:, start : start + step]
            if padding.any():  # blocks of real tokens only (the usual case) skip a pass over the values
                sims.masked_fill_(padding, float("-inf"))
            values, index = sims.max(dim=2)
            better = values > best
            best = torch.where(better, values, best)
            where = torch.where(better, index + start, where)
        return best.T.contiguous(), where.T.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        tokens, _, prototypes, block = inputs
        best, where = output
        ctx.block = block
        ctx.mark_non_differentiable(where)
        ctx.save_for_backward(tokens, prototypes, where, best)

    @staticmethod
    def vmap(info, in_dims, tokens, mask, prototypes, block):
        token_dim, mask_dim, prototype_dim, _ = in_dims
        if token_dim is None and mask_dim is None and prototype_dim is not None:
            stacked = prototypes.movedim(prototype_dim, 0)  # (K, M, D)
            count, per_set = stacked.shape[0], stacked.shape[1]
            best, where = _ChunkedMaxSimilarity.apply(tokens, mask, stacked.reshape(count * per_set, -1), block)
            return (best.reshape(-1, count, per_set), where.reshape(-1, count, per_set)), (1, 1)
        # tokens differ per member (a head that transforms them with its own parameters): one call each
        outputs = [_ChunkedMaxSimilarity.apply(*(value if dim is None else value.select(dim, k)
                                                 for value, dim in zip((tokens, mask, prototypes), in_dims[:3])), block)
                   for k in range(info.batch_size)]
        return (torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])), (0, 0)

    @staticmethod
    def backward(ctx, grad, _grad_where):
        tokens, prototypes, where, best = ctx.saved_tensors
        grad = grad.masked_fill(torch.isinf(best), 0.0)  # a clip without a valid token sends no gradient
        batch, _, dim = tokens.shape
        step = max(1, ctx.block // max(1, prototypes.shape[0] * dim))
        grad_prototypes = None
        if ctx.needs_input_grad[2]:
            # one weighted bag per prototype over the B winning token rows: no (B, M, D) intermediate
            flat = tokens.reshape(-1, dim)
            rows = where + torch.arange(batch, device=where.device)[:, None] * tokens.shape[1]  # (B, M) into flat
            grad_prototypes = F.embedding_bag(rows.T.contiguous(), flat, per_sample_weights=grad.T.contiguous().to(flat.dtype),
                                              mode="sum").to(prototypes.dtype)
        grad_tokens = None
        if ctx.needs_input_grad[0]:
            grad_tokens = torch.zeros_like(tokens)
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                winners = where[rows, :, None].expand(-1, -1, dim)  # (b, M, D)
                grad_tokens[rows].scatter_add_(1, winners, grad[rows, :, None] * prototypes[None])
        return grad_tokens, None, grad_prototypes, None


def chunked_max_similarity(tokens: torch.Tensor, mask: torch.Tensor, prototypes: torch.Tensor,
                           block: int = SIMILARITY_BLOCK) -> torch.Tensor:
    """s_bm = max over valid n of <tokens_bn, prototypes_m>, at most `block` similarities in memory at once.

    tokens: (B, N, D); mask: (B, N) bool; prototypes: (M, D) -> (B, M) (-inf for a clip without a
    valid token). Equal to `(tokens @ prototypes.T).masked_fill(~mask, -inf).amax(1)`, gradients included.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # Export paths: plain graph ops (exporters cannot trace autograd Functions).
        return (tokens @ prototypes.T).masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    return _ChunkedMaxSimilarity.apply(tokens, mask, prototypes, block)[0]


class PrototypeProbe(Probe, ABC):
    """Base of heads that compare every token with M prototypes and keep the best match per prototype.

    A subclass defines `similarity_operands` and `similarity_transform` (the comparison: a transform,
    non-decreasing, of a dot product), `classify` (descriptor -> logits) and `class_contributions`;
    masking, the max over tokens (chunked: memory bounded by `SIMILARITY_BLOCK`, not B x T F x M) and
    `forward` are shared.
    """

    def __init__(self, token_dim: int, num_classes: int, global_dim: int, freq_tokens: int, prototypes_per_class: int) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens)
        if prototypes_per_class < 1:
            raise ValueError(f"{self.name}: prototypes_per_class must be at least 1 (got {prototypes_per_class})")
        self.prototypes_per_class = prototypes_per_class
        self.num_prototypes = num_classes * prototypes_per_class

    @abstractmethod
    def prototype_vectors(self) -> torch.Tensor:
        """The vectors tokens are compared with in the forward pass: (M, D)."""

    @abstractmethod
    def similarity_operands(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, T, F, D'), prototypes (M, D')) whose dot products the similarity transforms."""

    def similarity_transform(self, products: torch.Tensor) -> torch.Tensor:
        """Similarity from dot products, element-wise and non-decreasing (so it commutes with the max). Default: identity."""
        return products

    def token_similarities(self, tokens: torch.Tensor) -> torch.Tensor:
        """Similarity of every token to every prototype, padding included: (B, T, F, D) -> (B, T, F, M)."""
        operands, prototypes = self.similarity_operands(tokens)
        return self.similarity_transform(operands @ prototypes.T)

    @abstractmethod
    def classify(self, descriptor: torch.Tensor) -> torch.Tensor:
        """Logits from the per-prototype maxima: (B, M) -> (B, C)."""

    @abstractmethod
    def class_contributions(self, descriptor: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Additive share of every prototype in the logit of class classes[b] of clip b.

        descriptor: (B, M) from `descriptor`; classes: (B,) long -> (B, M). The logit is the sum of
        the shares plus the class bias. One class per row keeps memory at B x M even for 527 classes.
        """

    def similarities(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Similarity of every token to every prototype: (B, T, F, M); padding = -inf."""
        return self.token_similarities(tokens).masked_fill(~mask.unsqueeze(-1), float("-inf"))

    def descriptor(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """s_m = max over valid tokens of the similarity to prototype m: (B, M) (-inf for a clip without valid tokens).

        The max over dot products is taken in blocks of tokens (`chunked_max_similarity`), then
        transformed: equal to `similarities(tokens, mask).amax(dim=(1, 2))`, never holding (B, T F, M).
        """
        operands, prototypes = self.similarity_operands(tokens)
        batch = operands.shape[0]
        products = chunked_max_similarity(operands.reshape(batch, -1, operands.shape[-1]), mask.reshape(batch, -1), prototypes)
        return torch.where(torch.isinf(products), products, self.similarity_transform(products))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, global_vector: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.descriptor(tokens, mask))


@PROBES.register("proto", "class-owned float prototypes, ReLU cosine, non-negative own-class head, orthogonality loss",
                 family="prototype", lr_range=(1e-2, 10.0), lr_grid=[3e-2, 1e-1, 3e-1, 1.0, 3.0])
class ProtoProbe(PrototypeProbe):
    """Prototypical probing as in AudioProtoPNet / Bird-MAE: J float prototypes owned by each class.

        z~ = [z, eps, eps] / ||[z, eps, eps]||,  p~ likewise       (eps = 1e-4 keeps norms non-zero)
        s_{c,j} = max_{valid (t,f)} ReLU(cos(z~_{t,f}, p~_{c,j}) / 1.01)
        logit_c = b_c + sum_j ReLU(w_{c,j}) s_{c,j}               (init w = 1, b = -2)
        aux loss = `orthogonality_weight` sum_c ||P~_c P~_c^T - I_J||_F / (C J^2)

    Prototypes start uniform in [0, 1). They train with `prototype_lr` (default: the run's lr, the
    paper's benchmark protocol; AudioProtoPNet used 0.04 with 3e-4 for the rest).
    Parameters: C J D + C J + C.
    """

    eps = 1e-4

    def __init__(
        self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0,
        prototypes_per_class: int = 20, prototype_lr: float | None = None, orthogonality_weight: float = 1.0,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens, prototypes_per_class)
        self.prototype_lr = prototype_lr
        self.orthogonality_weight = orthogonality_weight
        self.prototypes = nn.Parameter(torch.rand(self.num_prototypes, token_dim))  # row c J + j belongs to class c
        self.class_weights = nn.Parameter(torch.ones(num_classes, prototypes_per_class))
        self.bias = nn.Parameter(torch.full((num_classes,), -2.0))

    def _with_eps(self, vectors: torch.Tensor) -> torch.Tensor:
        padded = F.pad(vectors, (0, 2), value=self.eps)
        return F.normalize(padded, dim=-1)

    def prototype_vectors(self) -> torch.Tensor:
        return self.prototypes

    def similarity_operands(self, tokens):
        return self._with_eps(tokens), self._with_eps(self.prototypes)

    def similarity_transform(self, products):
        return torch.relu(products / 1.01)

    def classify(self, descriptor):
        per_class = descriptor.reshape(-1, self.num_classes, self.prototypes_per_class)
        return self.bias + (torch.relu(self.class_weights) * per_class).sum(dim=-1)

    def class_contributions(self, descriptor, classes):
        owner = torch.arange(self.num_prototypes, device=descriptor.device) // self.prototypes_per_class
        weights = torch.relu(self.class_weights).reshape(-1)  # (M,): prototype m's weight on its own class
        return torch.where(owner[None, :] == classes[:, None], weights * descriptor, torch.zeros_like(descriptor))

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return [
            {"params": [self.prototypes], "lr": self.prototype_lr or lr, "weight_decay": weight_decay},
            {"params": [self.class_weights], "lr": lr, "weight_decay": weight_decay},
            {"params": [self.bias], "lr": lr, "weight_decay": 0.0},
        ]

    def auxiliary_loss(self) -> torch.Tensor | None:
        if not self.orthogonality_weight:
            return None
        per_class = self._with_eps(self.prototypes).reshape(self.num_classes, self.prototypes_per_class, -1)
        gram = per_class @ per_class.transpose(1, 2)
        identity = torch.eye(self.prototypes_per_class, device=gram.device, dtype=gram.dtype)
        distance = torch.linalg.matrix_norm(gram - identity).sum()
        return self.orthogonality_weight * distance / (self.num_classes * self.prototypes_per_class**2)


@PROBES.register("protobin", "binarized class-agnostic prototypes, max cosine over tokens, linear head",
                 family="prototype", lr_range=(1e-2, 3.0), lr_grid=[1e-2, 3e-2, 1e-1, 3e-1])
class ProtoBinProbe(PrototypeProbe):
    """Binarized prototypical probe (Rauch et al., 2026).

    M = C J real-valued prototypes P (init N(0, 0.02^2)), not tied to classes. Forward:
        B = sign(P)                      (straight-through: dL/dP = dL/dB)
        s_m = max_{valid (t,f)} cos(z_{t,f}, B_m)
        logits = W dropout(s) + b        (W: C x M)
    No orthogonality loss. Parameters: M D (stored as 1 bit each at inference) + (M + 1) C.
    """

    binary = True

    def __init__(
        self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0,
        prototypes_per_class: int = 20, dropout: float = 0.0,
    ) -> None:
        super().__init__(token_dim, num_classes, global_dim, freq_tokens, prototypes_per_class)
        self.prototypes = nn.Parameter(torch.randn(self.num_prototypes, token_dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_prototypes, num_classes)

    def prototype_vectors(self) -> torch.Tensor:
        return binarize(self.prototypes) if self.binary else self.prototypes

    def similarity_operands(self, tokens):
        return F.normalize(tokens, dim=-1), F.normalize(self.prototype_vectors(), dim=-1)

    def classify(self, descriptor):
        return self.head(self.dropout(descriptor))

    def class_contributions(self, descriptor, classes):
        return self.head.weight[classes] * descriptor


@PROBES.register("protofloat", "protobin without binarization: float class-agnostic prototypes",
                 family="prototype", lr_range=(1e-2, 3.0), lr_grid=[1e-2, 3e-2, 1e-1, 3e-1])
class ProtoFloatProbe(ProtoBinProbe):
    """`protobin` with real-valued prototypes (B = P): isolates what binarization does.

        s_m = max_{valid (t,f)} cos(z_{t,f}, P_m);  logits = W dropout(s) + b
    Parameters: M D + (M + 1) C (32 bits per prototype entry).
    """

    binary = False
