"""Frozen encoders: waveform batch -> token map (B, T, F, D), mask and global vector."""

from . import audiomae as _audiomae  # noqa: F401  (registers audiomae)
from . import tiny_mae as _tiny_mae  # noqa: F401  (registers tiny-mae, toy-vit)
from .base import ENCODERS, Encoder, EncoderOutput, create_encoder
from .audiomae import AudioMAE, AudioMAEConfig, AudioMAEEncoder, load_audiomae
from .checkpoints import CheckpointError, load_strict, read_state_dict
from .tiny_mae import ViTEncoder

try:  # BirdNET registers itself; its runtime is an optional extra imported lazily inside.
    from . import birdnet as _birdnet  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "AudioMAE", "AudioMAEConfig", "AudioMAEEncoder", "CheckpointError", "ENCODERS", "Encoder", "EncoderOutput",
    "ViTEncoder", "create_encoder", "load_audiomae", "load_strict", "read_state_dict",
]
