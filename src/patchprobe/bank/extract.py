"""Build a bank: run a frozen encoder over a dataset, split by split, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .. import __version__
from .._progress import ProgressBar
from ..datasets import AudioDataset
from ..encoders import Encoder
from ..errors import AudioError, BankError
from .store import Bank, SplitMeta, SplitWriter


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def extract_bank(
    dataset: AudioDataset,
    encoder: Encoder,
    bank: str | Path,
    splits: list[str] | None = None,
    batch_size: int | None = None,
    chunk_clips: int = 256,
    dtype: str = "float16",
    skip_bad: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every clip of `dataset` into the bank folder `bank`; resume if it already holds some.

    Rerunning the same call after an interruption continues where it stopped and recomputes no
    finished chunk. A bank built with another encoder config or other data is refused.

    Args:
        dataset: the labelled clips.
        encoder: a frozen encoder (see `patchprobe.encoders.create_encoder`).
        bank: the bank root folder (one per encoder config and dataset).
        splits: splits to extract (default: every non-empty split).
        batch_size: clips per encoder call (default: the encoder's).
        chunk_clips: clips per committed chunk; smaller = finer resume granularity.
        dtype: storage dtype of token maps ("float16" or "float32").
        skip_bad: record undecodable clips in the metadata and go on, instead of stopping.

    Returns:
        the bank root.
    """
    if dtype not in ("float16", "float32"):
        raise BankError(f"dtype {dtype!r} not supported; use float16 or float32")
    root = Path(bank)
    header = {
        "encoder": encoder.name,
        "encoder_config_hash": encoder.config_hash(),
        "dataset": dataset.name,
        "classes": dataset.classes,
        "multilabel": dataset.multilabel,
        "library_version": __version__,
        "source": dataset.source(),
    }
    splits = splits or dataset.splits
    Bank.create_or_check(root, header, splits)
    batch_size = batch_size or encoder.default_batch_size
    for split in splits:
        _extract_split(dataset, encoder, root / split, split, batch_size, chunk_clips, dtype, skip_bad, progress)
    return root


def _extract_split(dataset, encoder, split_dir, split, batch_size, chunk_clips, dtype, skip_bad, progress) -> None:
    ids = dataset.clip_ids(split)
    if not ids:
        raise BankError(f"dataset {dataset.name!r} has no clips in split {split!r}")
    meta = SplitMeta(
        split=split,
        clip_ids=ids,
        classes=dataset.classes,
        multilabel=dataset.multilabel,
        encoder=encoder.name,
        encoder_config=encoder.config(),
        encoder_config_hash=encoder.config_hash(),
        layer=getattr(encoder, "layer", None),
        sample_rate=encoder.sample_rate,
        token_dim=encoder.token_dim,
        global_dim=encoder.global_dim,
        global_source=encoder.global_source,
        dtype=dtype,
        dataset=dataset.name,
        dataset_fingerprint=dataset.fingerprint(split),
        metrics=dataset.metrics,
    )
    writer = SplitWriter(split_dir, meta)
    if writer.meta.complete:
        return
    writer.write_labels(dataset.label_matrix(split))
    skipped = dict(writer.meta.skipped)
    todo = [clip_id for clip_id in ids if clip_id not in writer.done and clip_id not in skipped]
    buffer: dict[str, list] = {"ids": [], "tokens": [], "masks": [], "globals": []}

    def flush() -> None:
        if buffer["ids"]:
            globals_ = np.stack(buffer["globals"]) if buffer["globals"] and buffer["globals"][0] is not None else None
            writer.append(buffer["ids"], buffer["tokens"], buffer["masks"], globals_)
            for value in buffer.values():
                value.clear()

    bar = ProgressBar(progress, f"{encoder.name} {split}", total=len(ids), completed=len(ids) - len(todo))
    try:
        for batch_ids in _batches(todo, batch_size):
            waves, kept = [], []
            for clip_id in batch_ids:
                try:
                    clip = dataset.load(clip_id, encoder.sample_rate)
                    if clip.waveform.shape[0] < encoder.min_samples():
                        raise AudioError(clip_id, f"{clip.waveform.shape[0]} samples is shorter than the encoder's minimum {encoder.min_samples()}")
                except AudioError as exc:
                    if not skip_bad:
                        raise
                    skipped[clip_id] = exc.problem
                    continue
                waves.append(clip.waveform)
                kept.append(clip_id)
            if waves:
                _encode_into(encoder, kept, waves, buffer)
            if len(buffer["ids"]) >= chunk_clips:
                flush()
            bar.advance(len(batch_ids))
        flush()
    finally:
        bar.close()
    writer.finish(skipped)


def _encode_into(encoder: Encoder, ids: list[str], waves: list[np.ndarray], buffer: dict) -> None:
    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        padded[row, : len(wave)] = torch.from_numpy(wave)
    out = encoder.encode(padded, lengths)
    tokens = out.tokens.float().cpu().numpy()
    mask = out.mask.cpu().numpy()
    globals_ = None if out.global_vector is None else out.global_vector.float().cpu().numpy()
    for row, clip_id in enumerate(ids):
        valid_time = np.flatnonzero(mask[row].any(axis=-1))
        steps = int(valid_time[-1]) + 1 if valid_time.size else 0
        if steps == 0:
            raise AudioError(clip_id, "the encoder produced no valid token (clip too short?)")
        buffer["ids"].append(clip_id)
        buffer["tokens"].append(tokens[row, :steps])
        buffer["masks"].append(mask[row, :steps])
        buffer["globals"].append(None if globals_ is None else globals_[row])
