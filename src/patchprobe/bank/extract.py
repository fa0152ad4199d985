"""Build a bank: run a frozen encoder over a dataset, split by split, resumably."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from .._version import __version__
from .._progress import ProgressBar
from ..datasets import AudioDataset
from ..encoders import Encoder
from ..errors import AudioError, BankError
from .store import UNSHARDED, Bank, ExtractLock, Shard, SplitMeta, SplitWriter


def _batches(ids: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def shard_for_process(shard: str | Shard | None, device: str, environ: Mapping[str, str] | None = None
                      ) -> tuple[Shard, str, str | None]:
    """This process's shard and device: `extract --shard`, else torchrun's RANK/WORLD_SIZE, else the whole bank.

    Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK set) a bare "cuda" device becomes cuda:LOCAL_RANK,
    so the processes of one machine use one GPU each, and without `shard` the process extracts shard
    RANK/WORLD_SIZE. No process group is needed: the shards coordinate through the bank folder.

    Args:
        shard: "i/n" (0-based i), a Shard, or None.
        device: the requested torch device.
        environ: the environment to read (default: os.environ).

    Returns:
        (shard, device, note): note says what was taken from torchrun's environment (None otherwise).
    """
    environ = os.environ if environ is None else environ
    chosen = shard if isinstance(shard, Shard) else Shard.parse(shard) if shard is not None else None
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(environ.get(name) for name in names):
        return chosen or UNSHARDED, device, None
    try:
        rank, world, local = (int(environ[name]) for name in names)
        from_torchrun = Shard(rank, world)
    except ValueError:
        raise ValueError("torchrun environment: RANK={RANK!r}, WORLD_SIZE={WORLD_SIZE!r}, LOCAL_RANK={LOCAL_RANK!r} do not "
                         "describe one process of a run (need 0 <= RANK < WORLD_SIZE); pass --shard i/n instead"
                         .format(**{name: environ[name] for name in names})) from None
    notes = []
    if chosen is None:
        chosen = from_torchrun
        notes.append(f"shard {chosen} from torchrun's RANK/WORLD_SIZE")
    if device == "cuda":
        device = f"cuda:{local}"
        notes.append(f"device {device} from LOCAL_RANK")
    return chosen, device, ("torchrun: " + ", ".join(notes)) if notes else None


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
    refresh_changed: bool = False,
    log: Callable[[str], None] | None = None,
    shard: Shard | str | None = None,
) -> Path:
    """Encode every clip of `dataset` into the bank folder `bank`; resume or repair it if it already holds some.

    Rerunning the same call after an interruption continues where it stopped and recomputes no
    finished chunk. It also repairs: chunks whose files are missing, truncated, corrupt (checksum)
    or non-finite are dropped and their clips extracted again, so a split always ends holding every
    clip it lists. A bank built with another encoder config, other clips or labels, or another
    dtype is refused; so are clips whose audio changed since extraction (see `refresh_changed`).
    One extraction at a time may write a bank (a lock; a second one is refused with the holder named),
    or one process per shard: with `shard` i/n this call extracts only shard i's clips of every split
    (see `Shard`), and n such calls, on one machine or on several sharing the folder, fill one bank
    together; each split becomes complete (readable) when every shard has committed its clips.

    Args:
        dataset: the labelled clips.
        encoder: a frozen encoder (see `patchprobe.encoders.create_encoder`).
        bank: the bank root folder (one per encoder config and dataset).
        splits: splits to extract (default: every non-empty split).
        batch_size: clips per encoder call (default: the encoder's).
        chunk_clips: clips per committed chunk; smaller = finer resume granularity.
        dtype: storage dtype of token maps ("float16" or "float32").
        skip_bad: record undecodable clips (and clips the encoder gives no usable tokens for) in the
            metadata and go on, instead of stopping.
        refresh_changed: re-extract clips whose audio changed (their whole chunks are dropped and
            rebuilt) instead of refusing.
        log: receives one line per repair or refresh (default: printed on stderr).
        shard: this process's shard, Shard(i, n) or "i/n" (0-based i); None: every clip.

    Returns:
        the bank root.
    """
    if dtype not in ("float16", "float32"):
        raise BankError(f"dtype {dtype!r} not supported; use float16 or float32")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be a positive number of clips; got {batch_size}")
    if chunk_clips < 1:
        raise ValueError(f"chunk size must be a positive number of clips; got {chunk_clips}")
    shard = shard if isinstance(shard, Shard) else Shard.parse(shard) if shard is not None else UNSHARDED
    splits = list(splits or dataset.splits)
    for split in splits:
        if not dataset.clip_ids(split):
            raise BankError(f"dataset {dataset.name!r} has no clips in split {split!r}")
    encoder.check_runs()  # a bad --layer or device fails here, before the bank folder exists
    root = Path(bank)
    header = {
        "encoder": encoder.name,
        "encoder_config_hash": encoder.config_hash(),
        "dataset": dataset.name,
        "classes": dataset.classes,
        "multilabel": dataset.multilabel,
        "dtype": dtype,
        "library_version": __version__,
        "source": dataset.source(),
    }
    log = log or _say_on_stderr
    batch_size = batch_size or encoder.default_batch_size
    try:
        root.mkdir(parents=True, exist_ok=True)
        with ExtractLock(root, shard):
            Bank.create_or_check(root, header, splits)
            for split in splits:
                _extract_split(dataset, encoder, root / split, split, batch_size, chunk_clips, dtype, skip_bad, progress,
                               refresh_changed, log, shard)
        if shard.sharded:
            log(f"shard {shard}: all its clips are committed; " + (
                f"every shard has finished: {root} is complete" if Bank(root).is_complete() else
                f"{root} is complete once the other shards have committed theirs (`patchprobe info {root}` names those missing)"))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            where = exc.filename or root
            raise BankError(
                f"disk full while writing {where}: free some space (or pass a --bank folder on another disk) and rerun the "
                "same command; it resumes from the last committed chunk (nothing half-written was kept)"
            ) from None
        raise
    return root


def _extract_split(dataset, encoder, split_dir, split, batch_size, chunk_clips, dtype, skip_bad, progress, refresh_changed, log,
                   shard: Shard = UNSHARDED) -> None:
    ids = dataset.clip_ids(split)
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
    writer = SplitWriter(split_dir, meta, shard)
    for problem in writer.repaired:
        log(f"repairing {split_dir}: {problem}; its clips are extracted again")
    changed = writer.stale_clips(dataset.audio_stamp)
    if changed:
        described = f"the audio of {len(changed)} clip(s) changed since they were extracted (first: {changed[:5]})"
        if not refresh_changed:
            raise BankError(
                f"{split_dir}: {described}, so their tokens are stale. Rerun with --refresh-changed to re-extract them in "
                "place, or extract into a new --bank folder."
            )
        dropped = writer.drop_clips(changed)
        log(f"{split_dir}: {described}; re-extracting them ({len(dropped)} chunk(s) dropped)")
    writer.write_labels(dataset.label_matrix(split))
    if writer.meta.complete:
        return
    skipped = dict(writer.meta.skipped)
    share = writer.share
    todo = [clip_id for clip_id in share if clip_id not in writer.done and clip_id not in skipped]
    buffer: dict[str, list] = {"ids": [], "tokens": [], "masks": [], "globals": [], "stamps": []}

    def flush() -> None:
        if buffer["ids"]:
            globals_ = np.stack(buffer["globals"]) if buffer["globals"] and buffer["globals"][0] is not None else None
            writer.append(buffer["ids"], buffer["tokens"], buffer["masks"], globals_, buffer["stamps"])
            for value in buffer.values():
                value.clear()

    def bad(clip_id: str, problem: AudioError) -> None:
        if not skip_bad:
            raise problem
        skipped[clip_id] = problem.problem

    label = f"{encoder.name} {split}" + (f" shard {shard}" if shard.sharded else "")
    bar = ProgressBar(progress, label, total=len(share), completed=len(share) - len(todo))
    try:
        for batch_ids in _batches(todo, batch_size):
            waves, kept, stamps = [], [], []
            for clip_id in batch_ids:
                try:
                    stamp = dataset.audio_stamp(clip_id)  # before decoding: a change during the run shows next time
                    clip = dataset.load(clip_id, encoder.sample_rate)
                    if clip.waveform.shape[0] < encoder.min_samples():
                        raise AudioError(clip_id, f"{clip.waveform.shape[0]} samples is shorter than the encoder's minimum {encoder.min_samples()}")
                except AudioError as exc:
                    bad(clip_id, exc)
                    continue
                waves.append(clip.waveform)
                kept.append(clip_id)
                stamps.append(stamp)
            if waves:
                for clip_id, problem in _encode_into(encoder, kept, waves, stamps, buffer).items():
                    bad(clip_id, problem)
            if len(buffer["ids"]) >= chunk_clips:
                flush()
            bar.advance(len(batch_ids))
        flush()
    finally:
        bar.close()
    writer.finish(skipped)


def _encode_into(encoder: Encoder, ids: list[str], waves: list[np.ndarray], stamps: list, buffer: dict) -> dict[str, AudioError]:
    """Encode one batch into `buffer`; returns the clips that gave no usable tokens, with the reason."""
    lengths = torch.tensor([len(w) for w in waves])
    padded = torch.zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        padded[row, : len(wave)] = torch.from_numpy(wave)
    out = encoder.encode(padded, lengths)
    tokens = out.tokens.float().cpu().numpy()
    mask = out.mask.cpu().numpy()
    globals_ = None if out.global_vector is None else out.global_vector.float().cpu().numpy()
    problems = {}
    for row, clip_id in enumerate(ids):
        valid_time = np.flatnonzero(mask[row].any(axis=-1))
        steps = int(valid_time[-1]) + 1 if valid_time.size else 0
        if steps == 0:
            problems[clip_id] = AudioError(clip_id, "the encoder produced no valid token (clip too short?)")
            continue
        if not np.isfinite(tokens[row, :steps]).all() or (globals_ is not None and not np.isfinite(globals_[row]).all()):
            problems[clip_id] = AudioError(clip_id, "the encoder produced NaN or infinite tokens for this clip")
            continue
        buffer["ids"].append(clip_id)
        buffer["tokens"].append(tokens[row, :steps])
        buffer["masks"].append(mask[row, :steps])
        buffer["globals"].append(None if globals_ is None else globals_[row])
        buffer["stamps"].append(stamps[row])
    return problems
