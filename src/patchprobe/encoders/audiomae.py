"""Audio-MAE (Huang et al., 2022; facebookresearch/AudioMAE): a pre-norm ViT-B over 1024 x 128 fbanks.

Recipe (dataset.py / models_vit.py): remove the waveform's mean, Kaldi fbank (hanning, htk_compat,
128 mel, 10 ms), zero-pad or cut to 1024 frames, then (x + 4.2677393) / (2 * 4.5689974); 16x16
patches (64 x 8, time-major: index = t * 8 + f); tokens + pos_embed[:, 1:], [cls] + pos_embed[:, :1];
pre-norm blocks without attention masking (padding is part of the trained input); final `norm` for
pretrained checkpoints, `fc_norm` over the mean of patch tokens for fine-tuned ones.

The stored pos_embed is always loaded, never regenerated: its sin-cos grid is transposed relative
to the token layout. Clips longer than 10.24 s are cut into 1024-frame chunks whose token maps are
concatenated along time; tokens past a clip's end are masked.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..audio import FbankConfig, kaldi_fbank
from .base import ENCODERS, Encoder, EncoderOutput
from .checkpoints import CheckpointError, load_strict, read_state_dict
from .vit import Block


class AudioMAEConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_mel_bins: int = 128
    patch_size: int = 16
    target_frames: int = 1024
    fbank_mean: float = -4.2677393
    fbank_std: float = 4.5689974
    # Fine-tuned checkpoints (global_pool=True) replace the final `norm` by `fc_norm` on mean-pooled tokens.
    global_pool: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        return self.target_frames // self.patch_size, self.num_mel_bins // self.patch_size


class _PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch, stride=patch)


class AudioMAE(nn.Module):
    """The Audio-MAE encoder with official key names (cls_token, pos_embed, patch_embed.proj, blocks, norm/fc_norm)."""

    def __init__(self, config: AudioMAEConfig) -> None:
        super().__init__()
        self.config = config
        self.fbank = FbankConfig(sample_rate=16000, num_mel_bins=config.num_mel_bins)
        time_patches, freq_patches = config.grid
        self.patch_embed = _PatchEmbed(config.width, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + time_patches * freq_patches, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        if config.global_pool:
            self.fc_norm = nn.LayerNorm(config.width, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(config.width, eps=1e-6)

    def spectrogram(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised fbank cut into model-length chunks.

        Args:
            waveforms: (B, N) at 16 kHz, zero-padded; lengths: (B,) true sample counts.
        Returns:
            (spec (B, K, 1024, 128), frames (B,)): K chunks per clip (the longest clip's count);
            frames past a clip's end hold the recipe's zero padding (before normalisation).
        """
        positions = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :]
        valid = positions < lengths[:, None]
        means = (waveforms * valid).sum(1, keepdim=True) / lengths[:, None].clamp(min=1)
        spec = kaldi_fbank((waveforms - means) * valid, self.fbank)
        frames = torch.tensor([self.fbank.num_frames(int(n)) for n in lengths], device=spec.device)
        spec = spec * (torch.arange(spec.shape[1], device=spec.device)[None, :] < frames[:, None])[..., None]
        target = self.config.target_frames
        chunks = max(1, math.ceil(int(frames.max()) / target))
        spec = F.pad(spec, (0, 0, 0, chunks * target - spec.shape[1]))[:, : chunks * target]
        spec = (spec - self.config.fbank_mean) / (2 * self.config.fbank_std)
        return spec.reshape(spec.shape[0], chunks, target, -1), frames

    def forward_chunks(self, spec: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """spec: (N, 1024, 128) normalised chunks -> sequence (N, 1 + 512, D) after block `layer`
        (None: the last block, then `norm` for pretrained checkpoints)."""
        x = self.patch_embed.proj(spec.unsqueeze(1)).flatten(2).transpose(1, 2)  # (N, 512, D), time-major
        x = x + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        last = len(self.blocks) - 1 if layer is None else layer
        if not 0 <= last < len(self.blocks):
            raise ValueError(f"layer {layer} out of range: Audio-MAE has {len(self.blocks)} blocks (0..{len(self.blocks) - 1})")
        for block in self.blocks[: last + 1]:
            x = block(x)
        if layer is None and not self.config.global_pool:
            x = self.norm(x)
        return x

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, layer: int | None = None):
        """Returns tokens (B, K*64, 8, D), mask (B, K*64, 8), global vector (B, D)."""
        spec, frames = self.spectrogram(waveforms, lengths)
        batch, chunks = spec.shape[:2]
        time_patches, freq_patches = self.config.grid
        x = self.forward_chunks(spec.flatten(0, 1), layer).reshape(batch, chunks, 1 + time_patches * freq_patches, -1)
        patches = x[:, :, 1:]
        if self.config.global_pool:
            per_chunk = self.fc_norm(patches.mean(dim=2))  # the fine-tuned model's pooled feature
        else:
            per_chunk = x[:, :, 0]
        tokens = patches.reshape(batch, chunks * time_patches, freq_patches, -1)
        patch = self.config.patch_size
        starts = torch.arange(chunks * time_patches, device=spec.device) * patch
        mask = (starts[None, :] < frames[:, None])[:, :, None].expand(-1, -1, freq_patches)
        chunk_used = (torch.arange(chunks, device=spec.device)[None, :] * self.config.target_frames < frames[:, None]).to(x.dtype)
        global_vector = (per_chunk * chunk_used[..., None]).sum(1) / chunk_used.sum(1, keepdim=True).clamp(min=1)
        return tokens, mask, global_vector


class AudioMAEEncoder(Encoder):
    """Frozen Audio-MAE: tokens (B, 64 per 10.24 s, 8, D); global vector = [cls] (pretrained) or fc_norm(mean) (fine-tuned)."""

    name = "audiomae"
    sample_rate = 16000
    clip_seconds = 10.24

    def __init__(self, model: AudioMAE, weights_hash: str, layer: int | None = None, device: str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.weights_hash, self.layer, self.device = weights_hash, layer, torch.device(device)
        self.token_dim = self.global_dim = model.config.width
        self.global_source = "pooled" if model.config.global_pool else "cls"

    def config(self) -> dict:
        return {"audiomae": self.model.config.model_dump(), "layer": self.layer, "weights_sha256": self.weights_hash}

    def min_samples(self) -> int:
        return self.model.fbank.window_size

    @torch.inference_mode()
    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        tokens, mask, global_vector = self.model(waveforms.to(self.device), lengths.to(self.device), layer=self.layer)
        return EncoderOutput(tokens=tokens, mask=mask, global_vector=global_vector)


def load_audiomae(checkpoint: str | Path, width: int = 768, depth: int = 12, heads: int = 12) -> tuple[AudioMAE, str]:
    """Build Audio-MAE from an official checkpoint (`{"model": state_dict}`; decoder and mask token dropped).

    Pretrained checkpoints end in `norm`; fine-tuned ones in `fc_norm` + `head` (the class head is dropped).
    """
    state, digest = read_state_dict(checkpoint, drop_prefixes=("decoder", "mask_token", "head."))
    if "pos_embed" not in state:
        raise CheckpointError(f"{checkpoint}: no pos_embed; is this an Audio-MAE checkpoint?")
    model = AudioMAE(AudioMAEConfig(width=width, depth=depth, heads=heads, global_pool="fc_norm.weight" in state))
    load_strict(model, state, checkpoint)
    return model, digest


@ENCODERS.register("audiomae", "Audio-MAE ViT-B/16 (1024 x 128 fbank, 64 x 8 tokens + cls); needs checkpoint=PATH")
def _audiomae(
    checkpoint: str | None = None, layer: int | None = None, device: str = "cpu", width: int = 768, depth: int = 12, heads: int = 12
) -> AudioMAEEncoder:
    if not checkpoint:
        raise CheckpointError(
            "audiomae needs the official weights: download the pretrained or fine-tuned checkpoint linked from "
            "github.com/facebookresearch/AudioMAE and pass --encoder-arg checkpoint=PATH"
        )
    model, digest = load_audiomae(checkpoint, width=width, depth=depth, heads=heads)
    return AudioMAEEncoder(model, digest, layer=layer, device=device)
