"""A spectrogram Vision Transformer in plain PyTorch: patch embedding, 2-D sin-cos positions,
pre-norm blocks with key-padding masks. (The MAE decoder and loss that pretrained `tiny-mae` live in
scripts/pretrain_tiny_mae.py, the only code that trains an encoder.)
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..audio import FbankConfig, clip_fbank


class ViTConfig(BaseModel):
    """Architecture and front-end of a spectrogram ViT (fbank -> 16x16 patches -> blocks)."""

    model_config = ConfigDict(frozen=True)

    sample_rate: int = 16000
    num_mel_bins: int = 128
    patch_size: int = 16
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    # Normalisation of the log-mel input: (x - mean) / (2 * std), as Audio-MAE/EAT do.
    fbank_mean: float = -6.0
    fbank_std: float = 4.0

    @property
    def freq_patches(self) -> int:
        return self.num_mel_bins // self.patch_size


def sincos_2d(time_patches: int, freq_patches: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions, time-major: (time_patches * freq_patches, dim).

    Half the channels encode the time index, half the frequency index (MAE's construction), so any
    clip length gets positions without interpolation.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    t = torch.arange(time_patches, dtype=torch.float64)[:, None] * omega
    f = torch.arange(freq_patches, dtype=torch.float64)[:, None] * omega
    t_emb = torch.cat([t.sin(), t.cos()], dim=1)[:, None, :].expand(-1, freq_patches, -1)
    f_emb = torch.cat([f.sin(), f.cos()], dim=1)[None, :, :].expand(time_patches, -1, -1)
    return torch.cat([t_emb, f_emb], dim=-1).reshape(time_patches * freq_patches, dim).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, D); key_mask: (B, N) bool, True = may be attended to."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """Transformer block (timm ViT layout: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2).

    Pre-norm (ViT, Audio-MAE): x + attn(norm1(x)), then x + mlp(norm2(x)).
    Post-norm (`post_norm=True`, data2vec-2 / EAT): norm1(x + attn(x)), then norm2(x + mlp(x)).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6, post_norm: bool = False) -> None:
        super().__init__()
        self.post_norm = post_norm
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x, key_mask))
            return self.norm2(x + self.mlp(x))
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: Xavier-uniform linear weights, zero biases, unit LayerNorms (`module.apply(init_weights)`)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SpectrogramViT(nn.Module):
    """Log-mel fbank -> 16x16 patches -> [cls] + tokens -> pre-norm blocks -> final norm."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.fbank = FbankConfig(sample_rate=config.sample_rate, num_mel_bins=config.num_mel_bins)
        p = config.patch_size
        self.patch_embed = nn.Conv2d(1, config.width, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=1e-6)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(config.width, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def spectrogram(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised log-mel input, padded to whole patches.

        Args:
            waveforms: (B, N) float; lengths: (B,) true sample counts.

        Returns:
            (spec (B, T_pad, num_mel_bins), frames (B,) true frame counts); frames past a clip's
            end are zero (the normalised mean), so they never depend on what else is in the batch.
        """
        spec, frames = clip_fbank(waveforms, lengths, self.fbank)
        spec = (spec - self.config.fbank_mean) / (2 * self.config.fbank_std)
        spec = spec * (torch.arange(spec.shape[1], device=spec.device)[None, :] < frames[:, None])[..., None]
        p = self.config.patch_size
        pad = (-spec.shape[1]) % p
        return F.pad(spec, (0, 0, 0, pad)), frames

    def embed_patches(self, spec: torch.Tensor) -> torch.Tensor:
        """spec: (B, T, M) -> patch tokens with positions: (B, T' * F', D), time-major."""
        x = self.patch_embed(spec.unsqueeze(1))  # (B, D, T', F')
        batch, dim, time_patches, freq_patches = x.shape
        x = x.flatten(2).transpose(1, 2)
        return x + sincos_2d(time_patches, freq_patches, dim).to(x)

    def forward_tokens(
        self, spec: torch.Tensor, frames: torch.Tensor, layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the encoder on a normalised spectrogram.

        Args:
            spec: (B, T, M) with T a multiple of the patch size; frames: (B,) true frame counts.
            layer: block index whose output to return (None = last block, followed by the final norm).

        Returns:
            (tokens (B, T', F', D), mask (B, T', F') bool, cls (B, D))
        """
        p, freq_patches = self.config.patch_size, self.config.freq_patches
        x = self.embed_patches(spec)
        time_patches = spec.shape[1] // p
        valid_time = torch.arange(time_patches, device=spec.device)[None, :] * p < frames[:, None]
        mask = valid_time[:, :, None].expand(-1, -1, freq_patches)
        key_mask = torch.cat([torch.ones_like(valid_time[:, :1]), mask.reshape(mask.shape[0], -1)], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        last = len(self.blocks) - 1 if layer is None else layer
        if not 0 <= last < len(self.blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(self.blocks)} blocks (0..{len(self.blocks) - 1})")
        for block in self.blocks[: last + 1]:
            x = block(x, key_mask)
        if layer is None:
            x = self.norm(x)
        tokens = x[:, 1:].reshape(x.shape[0], time_patches, freq_patches, -1)
        return tokens, mask, x[:, 0]

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, layer: int | None = None):
        spec, frames = self.spectrogram(waveforms, lengths)
        return self.forward_tokens(spec, frames, layer)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["Block", "SpectrogramViT", "ViTConfig", "count_parameters", "init_weights", "sincos_2d"]
