"""Kaldi-compatible log-mel filter banks in plain PyTorch (batched; CPU or GPU).

Matches `torchaudio.compliance.kaldi.fbank` with `snip_edges=True` for the options exposed in
`FbankConfig` (checked against the golden fixtures in `shared/golden/kaldi_fbank`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from pydantic import BaseModel, ConfigDict

# Kaldi floors the mel energies at machine epsilon of float32, so empty filters read log(eps).
_EPS = torch.finfo(torch.float32).eps


class FbankConfig(BaseModel):
    """Options of the Kaldi fbank recipe. Defaults are the Audio-MAE/EAT recipe (hanning, htk_compat)."""

    model_config = ConfigDict(frozen=True)

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hanning"  # hanning | povey | hamming | rectangular
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0 means offset from Nyquist
    round_to_power_of_two: bool = True
    # htk_compat only changes output when energy is appended, which these recipes never do.

    @property
    def window_size(self) -> int:
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def window_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def n_fft(self) -> int:
        size = self.window_size
        return 1 << (size - 1).bit_length() if self.round_to_power_of_two else size

    def num_frames(self, num_samples: int) -> int:
        """Frames Kaldi produces for `num_samples` (snip_edges=True): 1 + (N - window) // shift, or 0."""
        if num_samples < self.window_size:
            return 0
        return 1 + (num_samples - self.window_size) // self.window_shift


def _mel_scalar(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=16)
def _mel_filters(config: FbankConfig) -> torch.Tensor:
    """Triangular filters on the mel scale, Kaldi's construction: (num_mel_bins, n_fft // 2 + 1) float32.

    Arithmetic is float32 with float64 scalars, as in Kaldi/torchaudio, so the filters match bit for bit
    (float64 filters differ by up to 1e-2 in log energy on near-silent bins).
    """
    n_fft = config.n_fft
    num_fft_bins = n_fft // 2
    nyquist = 0.5 * config.sample_rate
    high = config.high_freq if config.high_freq > 0 else nyquist + config.high_freq
    if not (0.0 <= config.low_freq < high <= nyquist):
        raise ValueError(f"fbank: need 0 <= low_freq < high_freq <= Nyquist, got {config.low_freq}, {high}, {nyquist}")
    mel_low, mel_high = _mel_scalar(config.low_freq), _mel_scalar(high)
    delta = (mel_high - mel_low) / (config.num_mel_bins + 1)
    bins = torch.arange(config.num_mel_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + bins * delta
    center = mel_low + (bins + 1.0) * delta
    right = mel_low + (bins + 2.0) * delta
    fft_freqs = (config.sample_rate / n_fft) * torch.arange(num_fft_bins, dtype=torch.float32)
    fft_mel = (1127.0 * (1.0 + fft_freqs / 700.0).log()).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    filters = torch.clamp(torch.minimum(up, down), min=0.0)
    # Kaldi leaves the Nyquist bin out of every filter.
    return torch.nn.functional.pad(filters, (0, 1))


def _window(config: FbankConfig) -> torch.Tensor:
    size = config.window_size
    if config.window_type == "hanning":
        return torch.hann_window(size, periodic=False)
    if config.window_type == "povey":
        return torch.hann_window(size, periodic=False).pow(0.85)
    if config.window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46)
    if config.window_type == "rectangular":
        return torch.ones(size)
    raise ValueError(f"fbank: unknown window_type {config.window_type!r}; use hanning, povey, hamming or rectangular")


def kaldi_fbank(waveforms: torch.Tensor, config: FbankConfig | None = None) -> torch.Tensor:
    """Log-mel filter bank energies, Kaldi style.

    Args:
        waveforms: (B, N) or (N,) float samples (scale as the recipe expects; no dither is applied).
        config: recipe options; defaults to the Audio-MAE/EAT recipe at 16 kHz.

    Returns:
        (B, frames, num_mel_bins) float32 (or (frames, num_mel_bins) for 1-D input), with
        frames = config.num_frames(N). Clips of different true lengths in one batch: compute
        frames per clip with `config.num_frames(length)`; rows past it are garbage to be masked.
    """
    config = config or FbankConfig()
    squeeze = waveforms.dim() == 1
    x = waveforms.unsqueeze(0) if squeeze else waveforms
    x = x.to(torch.float32)
    frames_count = config.num_frames(x.shape[-1])
    if frames_count == 0:
        raise ValueError(f"fbank: {x.shape[-1]} samples is shorter than one {config.window_size}-sample window")
    frames = x.unfold(-1, config.window_size, config.window_shift)  # (B, frames, window)
    if config.remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    if config.preemphasis != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - config.preemphasis * previous
    frames = frames * _window(config).to(frames.device)
    spectrum = torch.fft.rfft(frames, n=config.n_fft, dim=-1).abs().pow(2.0)
    energies = spectrum @ _mel_filters(config).to(spectrum.device).T
    out = torch.log(torch.clamp(energies, min=_EPS))
    return out[0] if squeeze else out


def clip_fbank(
    waveforms: torch.Tensor, lengths: torch.Tensor, config: FbankConfig, remove_mean: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fbank of a zero-padded batch, each clip treated as if alone.

    Args:
        waveforms: (B, N) zero-padded; lengths: (B,) true sample counts.
        remove_mean: subtract each clip's mean over its own samples first (the Audio-MAE/EAT recipe).
    Returns:
        (fbank (B, frames_max, mel), frames (B,) true frame counts); rows past a clip's own frames
        are computed from padding and are for the caller to mask or zero.
    """
    if remove_mean:
        valid = torch.arange(waveforms.shape[1], device=waveforms.device)[None, :] < lengths[:, None]
        means = (waveforms * valid).sum(1, keepdim=True) / lengths[:, None].clamp(min=1)
        waveforms = (waveforms - means) * valid
    frames = torch.tensor([config.num_frames(int(n)) for n in lengths], device=waveforms.device)
    return kaldi_fbank(waveforms, config), frames
