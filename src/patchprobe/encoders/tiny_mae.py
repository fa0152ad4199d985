"""`tiny-mae` (our MAE-pretrained spectrogram ViT, shipped as package data) and `toy-vit` (same
architecture, seeded random weights, for fast tests and as the random-init control)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .._io import file_hash
from ..errors import PatchprobeError
from .base import ENCODERS, Encoder, EncoderOutput
from .vit import SpectrogramViT, ViTConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"


class ViTEncoder(Encoder):
    """A frozen `SpectrogramViT`: tokens (B, T', 8, D) from 16x16 patches, global vector = [cls].

    Args:
        model: the network (put in eval mode, gradients off).
        name: registry name recorded in banks.
        identity: what distinguishes these weights (recipe hash, or seed for random init).
        layer: block whose output is returned (None = last block + final norm).
        device: "cpu", "cuda", ...
        clip_seconds: the input length the model was trained on.
    """

    global_source = "cls"

    def __init__(
        self,
        model: SpectrogramViT,
        name: str,
        identity: dict,
        layer: int | None = None,
        device: str = "cpu",
        clip_seconds: float | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.name = name
        self.identity = identity
        self.layer = layer
        self.device = torch.device(device)
        self.sample_rate = model.config.sample_rate
        self.clip_seconds = clip_seconds
        self.token_dim = self.global_dim = model.config.width

    def config(self) -> dict:
        return {"vit": self.model.config.model_dump(), "layer": self.layer, **self.identity}

    def min_samples(self) -> int:
        return self.model.fbank.window_size

    @torch.inference_mode()
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        tokens, mask, cls = self.model(waveforms.to(self.device), lengths.to(self.device), layer=self.layer)
        return EncoderOutput(tokens=tokens, mask=mask, global_vector=cls)


RECORD_FILE = WEIGHTS_DIR / "tiny_mae.json"


def _recipe_record() -> dict | None:
    """The packaged tiny-mae recipe record (recipe, hash, ViT config), or None when absent."""
    return json.loads(RECORD_FILE.read_text()) if RECORD_FILE.exists() else None


def shipped_weights() -> tuple[Path, dict]:
    """The packaged tiny-mae weights and their recipe record; a clear error if they are missing."""
    weights, record = WEIGHTS_DIR / "tiny_mae.safetensors", _recipe_record()
    if not weights.exists() or record is None:
        raise PatchprobeError(
            f"tiny-mae weights not found at {weights}; they ship with the package. "
            "Reinstall patchprobe, or recreate them with `python scripts/pretrain_tiny_mae.py`."
        )
    return weights, record


@ENCODERS.register(
    "tiny-mae", "spectrogram ViT (192-d, 6 blocks) MAE-pretrained by us on synthetic audio",
    sample_rate="16 kHz", front_end="Kaldi fbank 128 mel, hanning/htk", tokens_10s="63 x 8 + cls", cls="yes",
    weights="ships with the package",
)
def tiny_mae(layer: int | None = None, device: str = "cpu", weights: str | Path | None = None) -> ViTEncoder:
    """Our MAE-pretrained ViT. `weights` may point at another safetensors file of the same recipe."""
    default_weights, record = shipped_weights()
    path = Path(weights) if weights else default_weights
    model = SpectrogramViT(ViTConfig(**record["vit_config"]))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PatchprobeError(f"{path}: not tiny-mae weights (missing keys {missing[:5]}, unexpected {unexpected[:5]})")
    identity = {"recipe_hash": record["recipe_hash"], "weights_hash": file_hash(path)}
    return ViTEncoder(model, "tiny-mae", identity, layer=layer, device=device, clip_seconds=record["recipe"]["clip_seconds"])


@ENCODERS.register(
    "toy-vit", "spectrogram ViT with seeded random weights (tests, random-init control)",
    sample_rate="16 kHz", front_end="Kaldi fbank 128 mel, hanning/htk", tokens_10s="63 x 8 + cls", cls="yes", weights="random (seeded)",
)
def toy_vit(
    seed: int = 0,
    width: int = 64,
    depth: int = 2,
    heads: int = 4,
    layer: int | None = None,
    device: str = "cpu",
) -> ViTEncoder:
    """Random-init ViT of the tiny-mae architecture. Pass width=192, depth=6, heads=3 for tiny-mae's size."""
    config = ViTConfig(width=width, depth=depth, heads=heads)
    record = _recipe_record()
    if record is not None:
        # Same input normalisation as tiny-mae, so the random-init control differs only in its weights.
        vit = record["vit_config"]
        config = config.model_copy(update={"fbank_mean": vit["fbank_mean"], "fbank_std": vit["fbank_std"]})
    torch.manual_seed(seed)
    model = SpectrogramViT(config)
    return ViTEncoder(model, "toy-vit", {"seed": seed}, layer=layer, device=device)
