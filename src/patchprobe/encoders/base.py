"""The frozen-encoder interface (waveform -> token map) and the encoder registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .._io import stable_hash
from ..registry import Registry


@dataclass
class EncoderOutput:
    """What every encoder returns for a batch.

    Attributes:
        tokens: (B, T, F, D) token map in true time/frequency order (F = 1 for encoders without a
            frequency axis).
        mask: (B, T, F) bool, True where a token covers real audio (False = padding).
        global_vector: (B, G) the model's own global embedding ([cls] token or pooled output), or None.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    global_vector: torch.Tensor | None


class Encoder(ABC):
    """A frozen audio backbone.

    Class attributes describe the model; `config()` returns everything that changes its output
    (its hash keys the bank, so changed weights or settings never reuse an old bank).
    """

    name: str = "encoder"
    sample_rate: int = 16000
    clip_seconds: float | None = None  # the input length the model was trained on (None: any)
    token_dim: int = 0
    global_dim: int = 0  # 0 when the model offers no global vector
    global_source: str = "none"  # "cls", "pooled" or "none"
    default_batch_size: int = 16

    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable description of everything that determines the output."""

    @abstractmethod
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Encode a batch.

        Args:
            waveforms: (B, N) float32 mono at `sample_rate`, zero-padded to the longest clip.
            lengths: (B,) int64 true sample counts.
        """

    def config_hash(self) -> str:
        return stable_hash({"name": self.name, **self.config()})

    def min_samples(self) -> int:
        """Shortest clip the encoder accepts, in samples."""
        return 1

    def check_runs(self) -> None:
        """Encode one short silent clip, so settings the model rejects (a `layer` beyond its depth, an
        unusable device) fail in a second, before any output exists, instead of after the first batch.

        Raises:
            ValueError naming the encoder and the model's own reason (e.g. the allowed layer range).
        """
        samples = max(self.min_samples(), self.sample_rate)
        try:
            self.encode(torch.zeros(1, samples), torch.tensor([samples]))
        except (ValueError, IndexError, RuntimeError, AssertionError) as exc:
            raise ValueError(f"encoder {self.name!r} cannot run with these settings: {exc}") from None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "token_dim": self.token_dim,
            "global_dim": self.global_dim,
            "global_source": self.global_source,
            "config_hash": self.config_hash(),
        }


ENCODERS: Registry[Encoder] = Registry("encoder")


def check_device(device: str | torch.device) -> None:
    """Refuse a torch device this machine does not have, before any model is built.

    Raises:
        ValueError naming the device and what to use instead.
    """
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {str(device)!r} is not a torch device; use cpu, cuda or cuda:N") from None
    kind = parsed.type
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu")
    if kind == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use --device cpu")


class CheckpointEncoder(Encoder):
    """A frozen network loaded from an official checkpoint, as a registry encoder.

    The network's `forward(waveforms, lengths, layer)` returns (tokens (B, T, F, D), mask (B, T, F),
    clip vector (B, D)); its `config` (a pydantic model) and the checkpoint's hash identify it in banks.
    """

    def __init__(
        self, model: torch.nn.Module, name: str, weights_hash: str, global_source: str, token_dim: int,
        min_samples: int, clip_seconds: float | None = None, sample_rate: int = 16000, layer: int | None = None, device: str = "cpu",
        half: bool = False,
    ) -> None:
        check_device(device)
        if half and not str(device).startswith("cuda"):
            raise ValueError(f"half precision runs on a CUDA device; got device={device!r} (drop half=true on CPU)")
        self.model = model.eval().requires_grad_(False).to(device)
        self.half = half
        self.name, self.weights_hash, self.global_source = name, weights_hash, global_source
        self.token_dim = self.global_dim = token_dim
        self.sample_rate, self.clip_seconds, self._min_samples = sample_rate, clip_seconds, min_samples
        self.layer, self.device = layer, torch.device(device)

    def config(self) -> dict:
        return {"model": type(self.model).__name__, "architecture": self.model.config.model_dump(), "layer": self.layer,
                "weights_sha256": self.weights_hash, "half": self.half}

    def min_samples(self) -> int:
        return self._min_samples

    @torch.inference_mode()
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        # half: matrix products in float16 under autocast; the fbank and norms stay in float32
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.half):
            tokens, mask, global_vector = self.model(waveforms.to(self.device), lengths.to(self.device), layer=self.layer)
        return EncoderOutput(tokens=tokens.float(), mask=mask, global_vector=global_vector.float())


def create_encoder(name: str, **kwargs) -> Encoder:
    """Build a registered encoder by name, e.g. `create_encoder("tiny-mae", device="cpu")`."""
    return ENCODERS.create(name, **kwargs)
