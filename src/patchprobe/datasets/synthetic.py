"""A seeded generator of short, sparse, localized sound events over background noise.

Multi-label clips hold 1-4 event classes, each occurring once or twice for 0.1-1 s, at random
times, pitches and levels, over noise with a random spectral slope: the setting where one pooled
vector is a bottleneck. The single-label control fills most of the clip with one class.

The generator writes audio files and a CSV manifest, so synthetic data goes through the same
loader (`ManifestDataset`) as users' own data.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field

from .._io import atomic_write_with, read_json, stable_hash, write_json
from ..errors import DatasetError
from .base import DATASETS
from .manifest import ManifestDataset

EventSynth = Callable[[np.random.Generator, int, int], np.ndarray]
_SPLIT_CODES = {"train": 1, "valid": 2, "test": 3, "unlabeled": 4}


def _times(n: int, sr: int) -> np.ndarray:
    return np.arange(n) / sr


def _tone(freq: np.ndarray | float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Sine with a (possibly time-varying) frequency track in Hz."""
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)
    return np.sin(phase)


def _band_noise(low: float, high: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spectrum[(freqs < low) | (freqs > high)] = 0
    return np.fft.irfft(spectrum, n)


def _harmonic(rng, n, sr):
    f0 = rng.uniform(180, 500)
    return sum(_tone(f0 * k, n, sr, rng) / k for k in range(1, rng.integers(4, 8)))


def _chirp_up(rng, n, sr):
    start = rng.uniform(400, 1500)
    return _tone(np.geomspace(start, start * rng.uniform(2.5, 4.0), n), n, sr, rng)


def _chirp_down(rng, n, sr):
    start = rng.uniform(3500, 6500)
    return _tone(np.geomspace(start, start / rng.uniform(2.5, 4.0), n), n, sr, rng)


def _trill(rng, n, sr):
    rate, freq = rng.uniform(10, 18), rng.uniform(2000, 4000)
    gate = (np.sin(2 * np.pi * rate * _times(n, sr)) > 0.2).astype(np.float64)
    return gate * _tone(freq, n, sr, rng)


def _noise_low(rng, n, sr):
    low = rng.uniform(80, 250)
    return _band_noise(low, low * rng.uniform(2.5, 4.0), n, sr, rng)


def _noise_high(rng, n, sr):
    low = rng.uniform(3000, 4500)
    return _band_noise(low, low + rng.uniform(1500, 3000), n, sr, rng)


def _clicks(rng, n, sr):
    period = int(sr / rng.uniform(25, 60))
    out = np.zeros(n)
    out[:: max(period, 1)] = 1.0
    # short decaying impulse response makes each click audible across the spectrum
    kernel = np.exp(-np.arange(64) / 8.0) * rng.standard_normal(64)
    return np.convolve(out, kernel)[:n]


def _am_tone(rng, n, sr):
    carrier, rate = rng.uniform(700, 1600), rng.uniform(4, 12)
    return (1 + 0.9 * np.sin(2 * np.pi * rate * _times(n, sr))) * _tone(carrier, n, sr, rng)


def _vibrato(rng, n, sr):
    centre, rate, depth = rng.uniform(1000, 2600), rng.uniform(5, 9), rng.uniform(60, 200)
    return _tone(centre + depth * np.sin(2 * np.pi * rate * _times(n, sr)), n, sr, rng)


def _two_tone(rng, n, sr):
    low = rng.uniform(500, 1000)
    high = low * rng.uniform(1.8, 2.6)
    step = int(sr / rng.uniform(4, 8))
    track = np.where((np.arange(n) // max(step, 1)) % 2 == 0, low, high)
    return _tone(track, n, sr, rng)


EVENT_CLASSES: dict[str, EventSynth] = {
    "harmonic": _harmonic,
    "chirp_up": _chirp_up,
    "chirp_down": _chirp_down,
    "trill": _trill,
    "noise_low": _noise_low,
    "noise_high": _noise_high,
    "clicks": _clicks,
    "am_tone": _am_tone,
    "vibrato": _vibrato,
    "two_tone": _two_tone,
}


class SyntheticConfig(BaseModel):
    """Everything that determines a synthetic dataset; its hash names the generated data.

    kind: "multilabel" (1..max_classes sparse events per clip) or "singlelabel" (one class
    repeated over `fill_fraction` of the clip).
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["multilabel", "singlelabel"] = "multilabel"
    seed: int = 0
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 1000, "valid": 200, "test": 400})
    clip_seconds: float = 6.0
    sample_rate: int = 16000
    classes: tuple[str, ...] = tuple(EVENT_CLASSES)
    min_classes: int = 1
    max_classes: int = 4
    max_occurrences: int = 2
    event_seconds: tuple[float, float] = (0.1, 1.0)
    snr_db: tuple[float, float] = (-3.0, 12.0)
    fill_fraction: tuple[float, float] = (0.6, 0.9)
    noise_slope: tuple[float, float] = (0.0, 2.0)

    def fingerprint(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def _envelope(n: int, sr: int) -> np.ndarray:
    ramp = min(int(0.01 * sr), n // 2)
    env = np.ones(n)
    if ramp > 0:
        fade = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        env[:ramp], env[-ramp:] = fade, fade[::-1]
    return env


def _background(rng: np.random.Generator, n: int, config: SyntheticConfig) -> np.ndarray:
    slope = rng.uniform(*config.noise_slope)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / config.sample_rate), 20.0)
    noise = np.fft.irfft(spectrum * freqs ** (-slope / 2), n)
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _place(clip: np.ndarray, event: np.ndarray, onset: int, snr_db: float) -> None:
    event = event / (np.sqrt(np.mean(event**2)) + 1e-12) * 10 ** (snr_db / 20)
    end = min(onset + len(event), len(clip))
    clip[onset:end] += event[: end - onset]


def synthesize_clip(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """One clip and the names of the classes it contains.

    Returns:
        (waveform (clip_seconds * sample_rate,) float32 peak-normalised to 0.9, labels)
    """
    waveform, labels, _ = synthesize_clip_events(config, rng)
    return waveform, labels


def synthesize_clip_events(config: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[str], list[tuple[str, float, float]]]:
    """`synthesize_clip` plus where the generator placed each event (the same draws, so the same clip).

    Returns:
        (waveform, labels, events): events are (class name, onset s, offset s), offsets cut at the clip's end.
    """
    sr = config.sample_rate
    events: list[tuple[str, float, float]] = []
    n = int(round(config.clip_seconds * sr))
    clip = _background(rng, n, config) * 0.1
    names = list(config.classes)
    if config.kind == "multilabel":
        count = int(rng.integers(config.min_classes, config.max_classes + 1))
        chosen = sorted(rng.choice(len(names), size=count, replace=False).tolist())
        for index in chosen:
            for _ in range(int(rng.integers(1, config.max_occurrences + 1))):
                length = int(rng.uniform(*config.event_seconds) * sr)
                onset = int(rng.integers(0, max(n - length, 1)))
                event = EVENT_CLASSES[names[index]](rng, length, sr) * _envelope(length, sr)
                _place(clip, event * 0.1, onset, rng.uniform(*config.snr_db))
                events.append((names[index], onset / sr, min(onset + length, n) / sr))
    else:
        chosen = [int(rng.integers(len(names)))]
        span = int(rng.uniform(*config.fill_fraction) * n)
        cursor = int(rng.integers(0, n - span + 1))
        stop = cursor + span
        while cursor < stop:
            length = min(int(rng.uniform(*config.event_seconds) * sr), stop - cursor)
            if length < int(0.05 * sr):
                break
            event = EVENT_CLASSES[names[chosen[0]]](rng, length, sr) * _envelope(length, sr)
            _place(clip, event * 0.1, cursor, rng.uniform(*config.snr_db))
            events.append((names[chosen[0]], cursor / sr, (cursor + length) / sr))
            cursor += length + int(rng.uniform(0.0, 0.15) * sr)
    clip = clip / (np.abs(clip).max() + 1e-12) * 0.9
    return clip.astype(np.float32), [names[i] for i in chosen], events


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one clip: independent of how many clips or splits are generated."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def write_synthetic_dataset(root: str | Path, config: SyntheticConfig, progress: bool = False) -> Path:
    """Generate audio files and `manifest.csv` under `root`; reuse them when already complete.

    Returns:
        the manifest path (load it with `ManifestDataset`, or `load_synthetic_dataset`).
    """
    root = Path(root)
    manifest = root / "manifest.csv"
    stamp = root / "synthetic.json"
    if manifest.exists() and stamp.exists() and read_json(stamp).get("fingerprint") == config.fingerprint():
        return manifest
    rows = []
    jobs = [(split, i) for split, count in config.sizes.items() for i in range(count)]
    iterator = jobs
    if progress:
        from rich.progress import track

        iterator = track(jobs, description=f"synthesizing {config.kind} clips")
    for split, index in iterator:
        clip_id = f"{split}_{index:05d}"
        relative = Path("audio") / split / f"{clip_id}.wav"
        waveform, labels = synthesize_clip(config, clip_rng(config.seed, split, index))
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(target, lambda tmp, w=waveform: sf.write(str(tmp), w, config.sample_rate, subtype="PCM_16", format="WAV"))
        rows.append({"id": clip_id, "path": relative.as_posix(), "labels": ";".join(labels), "split": split})

    def _write_manifest(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "path", "labels", "split"])
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_with(manifest, _write_manifest)
    write_json(stamp, {"fingerprint": config.fingerprint(), "config": config.model_dump(mode="json")})
    return manifest


def load_synthetic_dataset(root: str | Path, config: SyntheticConfig, progress: bool = False) -> ManifestDataset:
    """Generate (or reuse) a synthetic dataset and open it through the manifest loader."""
    manifest = write_synthetic_dataset(root, config, progress=progress)
    return ManifestDataset(
        manifest,
        classes=list(config.classes),
        multilabel=config.kind == "multilabel",
        name=f"synthetic-{config.kind}",
    )


@DATASETS.register("synthetic", "seeded synthetic sound events (multilabel or singlelabel control)")
def _synthetic_dataset(root: str | Path | None = None, data_dir: str | Path | None = None, **config) -> ManifestDataset:
    """The synthetic dataset in `root` (or `data_dir`, the CLI's --data-dir), generated there once."""
    folder = root or data_dir
    if folder is None:
        raise DatasetError("synthetic: say where the clips go: --data-dir DIR (Python: root=DIR); they are written once "
                           "and reused")
    unknown = sorted(set(config) - set(SyntheticConfig.model_fields))
    if unknown:
        raise DatasetError(f"synthetic: unknown option(s) {unknown}; options are {sorted(SyntheticConfig.model_fields)}")
    return load_synthetic_dataset(folder, SyntheticConfig(**config))
