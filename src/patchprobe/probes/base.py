"""The probe interface (token map -> class logits) and the probe registry."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import RegistryError
from ..registry import Registry


class Probe(nn.Module):
    """A pooling head plus linear classifier trained on frozen token maps.

    Subclasses implement `forward(tokens, mask, global_vector) -> logits`:
        tokens: (B, T, F, D) float; mask: (B, T, F) bool, True = real token;
        global_vector: (B, G) or None; logits: (B, C).
    Padded tokens (mask False) must never change the output.
    """

    name: str = "probe"
    uses_tokens: bool = True  # False for heads that read only the global vector
    uses_global: bool = False  # True for heads that read the global vector
    supports_lbfgs: bool = False  # True for a fixed pooled vector + linear head (`features()`, `head`)
    # The `LoadedSplit.pooled` kinds ("global", "mean", "freqmean") a head reads when it reads nothing
    # else: training then feeds it vectors pooled once per split (`forward_pooled`) instead of token maps.
    pooled_inputs: tuple[str, ...] | None = None
    # Whether K trials of this head train as one stacked (vmapped) model by default. False where vmap's
    # batched kernels measured slower than K separate passes on CPU (benchmarks/train.py and a 1-thread
    # check at K = 8, 32 clips x 128 tokens x 64: conv 0.57x, linpre 0.69x; the pooled heads once fitted
    # from pooled vectors: linear 0.56x; simpool and abmilp); they still share the pass over the data.
    # The prototype heads, mhca and ep stack: K members become one wider product that reads the tokens once
    # (demo bank, registered lr grid: mhca 2.4x, protobin 1.35x faster stacked).
    stack_trials: bool = True

    def __init__(self, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0) -> None:
        super().__init__()
        if token_dim < 1 or num_classes < 1:
            raise ValueError(f"{self.name}: token_dim and num_classes must be positive (got {token_dim}, {num_classes})")
        self.token_dim, self.num_classes, self.global_dim = token_dim, num_classes, global_dim
        # F of the token grid; only heads whose size depends on it (freqpool) need it.
        self.freq_tokens = freq_tokens

    def architecture(self) -> dict:
        """What `create_probe` needs to rebuild this probe (the probe's own hyper-parameters excluded)."""
        return {"token_dim": self.token_dim, "num_classes": self.num_classes, "global_dim": self.global_dim, "freq_tokens": self.freq_tokens}

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups; biases and norm parameters get no weight decay. Override for per-group lrs."""
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        return [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]

    def forward_pooled(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits from pooled inputs {kind: (B, H)} (kinds: `pooled_inputs`), equal to `forward` on the token maps."""
        raise TypeError(f"{self.name} reads token maps, not pooled vectors (pooled_inputs is None)")

    def forward_batch(self, batch: dict, device: str | torch.device) -> torch.Tensor:
        """Logits (B, C) of a `LoadedSplit.batch` moved to `device`: its pooled inputs when it carries them, else its tokens."""
        if batch.get("pooled") is not None:
            return self.forward_pooled({kind: value.to(device) for kind, value in batch["pooled"].items()})
        global_vector = None if batch["global"] is None else batch["global"].to(device)
        return self(batch["tokens"].to(device), batch["mask"].to(device), global_vector)

    def auxiliary_loss(self) -> torch.Tensor | None:
        """Extra loss term added by the trainer (e.g. an orthogonality penalty); None when absent."""
        return None

    def prepare_pooled(self, pooled: dict[str, torch.Tensor]) -> None:
        """`prepare` for heads that read pooled inputs: the training split's vectors {kind: (N, H)} (kinds:
        `pooled_inputs`), pooled once per split, so K trials do not each read every token map again."""
        raise TypeError(f"{self.name} reads token maps, not pooled vectors (pooled_inputs is None)")

    def prepare(self, batches) -> None:
        """Fit what comes from the training data before training starts (default: nothing).

        batches: an iterable of dicts with "tokens" (B, T, F, D), "mask" (B, T, F), "global" (B, G) or
        None, covering the whole training split once.
        """


class Standardizer(nn.Module):
    """h -> (h - mean) / std with the training split's statistics, fitted once before training.

    The statistics are buffers, so they are saved with the probe, restored by `load_probe`, and part
    of every export. Unfitted, it is the identity.
    """

    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """features: (N, H) pooled training vectors."""
        features = features.double()
        self.mean.copy_(features.mean(dim=0).to(self.mean.dtype))
        self.std.copy_(torch.sqrt(features.var(dim=0, unbiased=False) + self.eps).to(self.std.dtype))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def shared_pooled_inputs(probes: list[Probe]) -> tuple[str, ...] | None:
    """The pooled kinds a batch must carry for `probes` to train on pooled vectors alone, or None when
    one of them reads token maps (then every probe gets the tokens)."""
    if not probes or any(probe.pooled_inputs is None for probe in probes):
        return None
    return tuple(dict.fromkeys(kind for probe in probes for kind in probe.pooled_inputs))


def require_global(probe: Probe, global_vector: torch.Tensor | None) -> torch.Tensor:
    if global_vector is None:
        raise ValueError(f"{probe.name} probe was built for a global vector of size {probe.global_dim} but none was given")
    return global_vector


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of valid tokens. tokens: (B, T, F, D); mask: (B, T, F) -> (B, D)."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1.0)


def flatten_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, F, D), (B, T, F) -> (B, T*F, D), (B, T*F)."""
    batch, time, freq, dim = tokens.shape
    return tokens.reshape(batch, time * freq, dim), mask.reshape(batch, time * freq)


FAMILY_ORDER = ("fixed", "attentive", "prototype")
# arguments every probe takes from the bank, not from the user
_BANK_ARGUMENTS = ("self", "token_dim", "num_classes", "global_dim", "freq_tokens")


@dataclass(frozen=True)
class ProbeSpec:
    """Everything known about a registered probe besides its code.

    family: "fixed" (a fixed pooling rule), "attentive" (learned attention pooling) or "prototype".
    lr_range: (low, high) of the log-uniform learning-rate search (`patchprobe sweep`): a decade or more
        around the best rates measured on the demo data, wide enough that the optimum is inside.
    lr_grid: the learning rates the demo tries (the best on validation is reported).
    The probe's own arguments and their defaults are read from its constructor (`arguments()`), so they
    are written once.
    """

    name: str
    family: str
    description: str
    lr_range: tuple[float, float]
    lr_grid: tuple[float, ...]
    factory: Callable[..., Probe] | None = None

    def arguments(self) -> dict[str, object]:
        """The probe's own keyword arguments and their defaults, read from its constructor."""
        if self.factory is None:
            return {}
        parameters = inspect.signature(self.factory).parameters
        return {name: (p.default if p.default is not inspect.Parameter.empty else None)
                for name, p in parameters.items() if name not in _BANK_ARGUMENTS}


class ProbeRegistry(Registry[Probe]):
    """The probe registry: each entry carries its `ProbeSpec` (family, learning-rate range and grid)."""

    def __init__(self) -> None:
        super().__init__("probe")
        self._specs: dict[str, ProbeSpec] = {}

    def register(self, name: str, description: str = "", *, family: str, lr_range: tuple[float, float],  # type: ignore[override]
                 lr_grid: list[float]) -> Callable[[type[Probe]], type[Probe]]:
        """Class decorator adding a probe under `name` with its description (see `ProbeSpec` for the rest).

        The class's `name` attribute is set to `name`: the registered name is the only spelling.
        """
        if family not in FAMILY_ORDER:
            raise RegistryError(f"probe {name!r}: family {family!r} is not one of {', '.join(FAMILY_ORDER)}")
        low, high = lr_range
        if not 0 < low < high or not lr_grid or any(lr <= 0 for lr in lr_grid):
            raise RegistryError(f"probe {name!r}: lr_range must be 0 < low < high and lr_grid non-empty and positive "
                                f"(got {lr_range}, {lr_grid})")
        add = super().register(name, description)

        def decorator(cls: type[Probe]) -> type[Probe]:
            cls.name = name
            add(cls)
            self._specs[name] = ProbeSpec(name=name, family=family, description=self.description(name),
                                          lr_range=(float(low), float(high)), lr_grid=tuple(float(lr) for lr in lr_grid),
                                          factory=cls)
            return cls

        return decorator

    def spec(self, name: str) -> ProbeSpec:
        """The registered description of probe `name` (RegistryError listing the probes when unknown)."""
        self.get(name)
        return self._specs[self.canonical(name)]

    def families(self) -> dict[str, list[str]]:
        """family -> probe names, families in `FAMILY_ORDER`, probes in registration order."""
        out: dict[str, list[str]] = {family: [] for family in FAMILY_ORDER}
        for spec in self._specs.values():
            out[spec.family].append(spec.name)
        return {family: names for family, names in out.items() if names}


PROBES = ProbeRegistry()


def create_probe(name: str, token_dim: int, num_classes: int, global_dim: int = 0, freq_tokens: int = 0, **hparams) -> Probe:
    """Build a registered probe, e.g. `create_probe("protobin", token_dim=768, num_classes=10, prototypes_per_class=20)`.

    token_dim: D of the tokens; global_dim: G of the global vector (0 = none); freq_tokens: F of the
    (T, F) token grid (only `freqpool` needs it); hparams: the probe's own arguments.
    """
    try:
        return PROBES.create(name, token_dim=token_dim, num_classes=num_classes, global_dim=global_dim, freq_tokens=freq_tokens, **hparams)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise ValueError(f"probe {name!r}: {exc}; see the probe's docstring (`patchprobe probes`) for its arguments") from None
        raise
