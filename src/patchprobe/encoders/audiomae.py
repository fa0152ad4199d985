"""Audio-MAE (Huang et al., 2022; facebookresearch/AudioMAE): a pre-norm ViT-B over 1024 x 128 fbanks.

Recipe (dataset.py / models_vit.py; front-end and chunking in `fbank_vit`): (x + 4.2677393) /
(2 * 4.5689974) on the zero-padded fbank; 16x16 patches (64 x 8, time-major: index = t * 8 + f);
tokens + pos_embed[:, 1:], [cls] + pos_embed[:, :1]; pre-norm blocks without attention masking (padding is part of the trained input); final `norm` for
pretrained checkpoints, `fc_norm` over the mean of patch tokens for fine-tuned ones.

The stored pos_embed is always loaded, never regenerated: its sin-cos grid is transposed relative
to the token layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .base import ENCODERS, CheckpointEncoder
from .checkpoints import CheckpointError, load_strict, read_checkpoint, require_checkpoint
from .fbank_vit import ChunkedFbankViT, FbankViTConfig, fbank_vit_encoder
from .vit import Block


class AudioMAEConfig(FbankViTConfig):
    # Fine-tuned checkpoints (global_pool=True) replace the final `norm` by `fc_norm` on mean-pooled tokens.
    global_pool: bool = False


class _PatchEmbed(nn.Module):
    def __init__(self, width: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, width, kernel_size=patch, stride=patch)


class AudioMAE(ChunkedFbankViT):
    """The Audio-MAE encoder with official key names (cls_token, pos_embed, patch_embed.proj, blocks, norm/fc_norm)."""

    def __init__(self, config: AudioMAEConfig) -> None:
        super().__init__(config)
        time_patches, freq_patches = config.grid
        self.patch_embed = _PatchEmbed(config.width, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + time_patches * freq_patches, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        if config.global_pool:
            self.fc_norm = nn.LayerNorm(config.width, eps=1e-6)
        else:
            self.norm = nn.LayerNorm(config.width, eps=1e-6)

    def forward_chunks(self, spec: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """spec: (N, 1024, 128) normalised chunks -> sequence (N, 1 + 512, D) after block `layer`
        (None: the last block, then `norm` for pretrained checkpoints)."""
        last = self._check_layer(layer)
        x = self.patch_embed.proj(spec.unsqueeze(1)).flatten(2).transpose(1, 2)  # (N, 512, D), time-major
        x = x + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks[: last + 1]:
            x = block(x)
        if layer is None and not self.config.global_pool:
            x = self.norm(x)
        return x

    def pool(self, sequence: torch.Tensor) -> torch.Tensor:
        if self.config.global_pool:  # the fine-tuned model's pooled feature
            return self.fc_norm(sequence[:, 1:].mean(dim=1))
        return sequence[:, 0]


def load_audiomae(checkpoint: str | Path, width: int = 768, depth: int = 12, heads: int = 12) -> tuple[AudioMAE, str]:
    """Build Audio-MAE from an official checkpoint (`{"model": state_dict}`; decoder and mask token dropped).

    Pretrained checkpoints end in `norm`; fine-tuned ones in `fc_norm` + `head` (the class head is dropped).
    """
    state, digest, _ = read_checkpoint(checkpoint, drop_prefixes=("decoder", "mask_token", "head."))
    if "pos_embed" not in state:
        raise CheckpointError(f"{checkpoint}: no pos_embed; is this an Audio-MAE checkpoint?")
    model = AudioMAE(AudioMAEConfig(width=width, depth=depth, heads=heads, global_pool="fc_norm.weight" in state))
    load_strict(model, state, checkpoint)
    return model, digest


@ENCODERS.register(
    "audiomae", "Audio-MAE ViT-B/16 (1024 x 128 fbank, 64 x 8 tokens + cls); needs checkpoint=PATH",
    sample_rate="16 kHz", front_end="Kaldi fbank 128 mel, hanning/htk, padded to 1024 frames", tokens_10s="64 x 8 (63 valid) + cls",
    cls="yes", weights="github.com/facebookresearch/AudioMAE (checkpoint=PATH)",
)
def _audiomae(
    checkpoint: str | None = None, layer: int | None = None, device: str = "cpu", width: int = 768, depth: int = 12, heads: int = 12,
    half: bool = False,
) -> CheckpointEncoder:
    checkpoint = require_checkpoint("audiomae", checkpoint, "the links in github.com/facebookresearch/AudioMAE")
    model, digest = load_audiomae(checkpoint, width=width, depth=depth, heads=heads)
    return fbank_vit_encoder(model, "audiomae", digest, "pooled" if model.config.global_pool else "cls", layer=layer, device=device, half=half)
