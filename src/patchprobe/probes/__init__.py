"""Probes: pooling heads + linear classifiers over token maps (B, T, F, D) -> logits (B, C).

Families: fixed pooling (`linear`, `mlp`, `linearc`, `linpre`, `freqpool`, `conv`), attentive
(`mhca`, `ep`, `simpool`, `abmilp`) and prototype (`proto`, `protobin`, `protofloat`) heads.
Add a probe by subclassing `Probe` in one module and decorating it with
`@PROBES.register(name, description, family=..., lr_range=(low, high), lr_grid=[...])`: that one
registration is all the demo, the search and `patchprobe probes` know about it.
"""

# Each module registers its probes; the import order is the listing order within a family.
from . import linear as _linear  # noqa: F401
from . import conv as _conv  # noqa: F401
from . import attentive as _attentive  # noqa: F401
from . import prototypes as _prototypes  # noqa: F401
from .attentive import ABMILProbe, AttentiveProbe, EfficientProbe, MHCAProbe, SimPoolProbe
from .base import FAMILY_ORDER, PROBES, Probe, ProbeRegistry, ProbeSpec, Standardizer, create_probe, masked_mean, shared_pooled_inputs
from .conv import ConvProbe
from .linear import FrequencyPoolProbe, LinearConcatProbe, LinearPreNormProbe, LinearProbe, MLPProbe
from .prototypes import PrototypeProbe, ProtoBinProbe, ProtoFloatProbe, ProtoProbe, binarize

FAMILIES: dict[str, list[str]] = PROBES.families()  # family -> probe names, from the registrations

__all__ = [
    "ABMILProbe", "AttentiveProbe", "ConvProbe", "EfficientProbe", "FAMILIES", "FAMILY_ORDER", "FrequencyPoolProbe",
    "LinearConcatProbe", "LinearPreNormProbe", "LinearProbe", "MHCAProbe", "MLPProbe", "PROBES", "Probe",
    "ProbeRegistry", "ProbeSpec", "ProtoBinProbe", "ProtoFloatProbe", "ProtoProbe", "PrototypeProbe", "SimPoolProbe", "binarize",
    "Standardizer", "create_probe", "masked_mean", "shared_pooled_inputs",
]
