"""Probes: pooling heads + linear classifiers over token maps (B, T, F, D) -> logits (B, C)."""

from . import linear as _linear  # noqa: F401  (each module registers its probe)
from . import mhca as _mhca  # noqa: F401
from . import protobin as _protobin  # noqa: F401
from .base import PROBES, Probe, create_probe, masked_mean
from .linear import LinearProbe
from .mhca import MHCAProbe
from .protobin import ProtoBinProbe, binarize

__all__ = ["PROBES", "LinearProbe", "MHCAProbe", "Probe", "ProtoBinProbe", "binarize", "create_probe", "masked_mean"]
