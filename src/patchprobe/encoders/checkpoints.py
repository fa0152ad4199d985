"""Read official encoder checkpoints: unwrap their containers, strip prefixes, check keys strictly."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .._io import file_hash
from ..errors import CheckpointError


class Checkpoint(NamedTuple):
    state: dict[str, torch.Tensor]  # the model's tensors, prefixes stripped
    sha256: str  # content hash, recorded in bank metadata
    extras: dict  # other top-level entries of the file, e.g. BEATs' "cfg" or Dasheng's "config"


def read_checkpoint(path: str | Path, drop_prefixes: tuple[str, ...] = (),
                    containers: tuple[str, ...] = ("model", "state_dict", "module")) -> Checkpoint:
    """Read a checkpoint file once: its tensors, its content hash and its other top-level entries.

    Handles `{"model": ...}` (Audio-MAE, Dasheng), fairseq `{"cfg", "model"}`, Lightning
    `{"state_dict": ...}`, a bare state dict, DDP `module.` prefixes, and `.safetensors`. The first of
    `containers` present at the top level holds the tensors (ASiT passes `("teacher", ...)`). Keys
    starting with any of `drop_prefixes` (decoders, EMA copies, mask tokens) are removed.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # training files (ASiT, Audio-MAE fine-tuning) pickle their argparse options beside the tensors
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or non-checkpoint files
        raise CheckpointError(f"{path}: cannot read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    extras: dict = {}
    for container in containers:
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            extras = {key: value for key, value in state.items() if key != container}
            state = state[container]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (top-level keys: {list(state)[:8]})")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    state = {key: value for key, value in state.items() if not key.startswith(drop_prefixes)}
    return Checkpoint(state, file_hash(path), extras)


# Heads cannot be read off the weights; these are the published ViT sizes by width.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16, 1536: 24}


def block_count(state: dict[str, torch.Tensor], prefix: str = "blocks.") -> int:
    """Transformer depth of a state dict: the number of distinct `<prefix><i>.` indices."""
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def head_count(width: int, heads: int | None, source: str | Path) -> int:
    """`heads` if given, else the published head count for `width`."""
    heads = heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise CheckpointError(f"{source}: width {width} has no known head count; pass heads=N")
    return heads


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load `state` into `model`, failing with the missing and unexpected keys named."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if wrong_shape:
            details.append("wrong shape " + ", ".join(f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})" for k in wrong_shape[:5]))
        raise CheckpointError(f"{source}: checkpoint does not fit the model: {'; '.join(details)}")
    model.load_state_dict(state)
