"""Frozen encoders: waveform batch -> token map (B, T, F, D), mask and global vector."""

from . import tiny_mae as _tiny_mae  # noqa: F401  (registers tiny-mae, toy-vit)
from .base import ENCODERS, Encoder, EncoderOutput, create_encoder
from .tiny_mae import ViTEncoder

try:  # BirdNET registers itself; its runtime is an optional extra imported lazily inside.
    from . import birdnet as _birdnet  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["ENCODERS", "Encoder", "EncoderOutput", "ViTEncoder", "create_encoder"]
