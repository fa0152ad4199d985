"""The on-disk token-map store.

Layout of a bank (one encoder + config, one dataset), one self-describing folder per split:

    BANK/bank.json                 encoder, dataset and class list shared by the splits
    BANK/<split>/meta.json         everything needed to read the split alone (see `SplitMeta`)
    BANK/<split>/labels.npy        (N, C) float32, rows in `clip_ids` order
    BANK/<split>/chunks/K.json     commit record of chunk K: clip ids and token lengths
    BANK/<split>/chunks/K.tokens.npy   (sum T_i, F, D) token rows of those clips (float16 default)
    BANK/<split>/chunks/K.mask.npy     (sum T_i, F) bool validity
    BANK/<split>/chunks/K.global.npy   (n, G) float32 global vectors (absent when G = 0)

Clips are ragged along time (T_i differs); padding and masks are applied at batch time. A chunk
exists only once its `.json` is written (last, atomically), so a killed extraction never leaves a
half-written or duplicated clip: array files without a commit record are ignored and overwritten.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from .. import __version__
from .._io import read_json, write_json, write_npy
from ..errors import BankError


class SplitMeta(BaseModel):
    """Metadata of one split folder of a bank."""

    split: str
    clip_ids: list[str]
    classes: list[str]
    multilabel: bool
    encoder: str
    encoder_config: dict
    encoder_config_hash: str
    layer: int | str | None = None  # block index, or a named tensor (birdnet)
    sample_rate: int
    token_dim: int
    freq_dim: int | None = None  # known after the first chunk
    global_dim: int
    global_source: str
    dtype: str = "float16"
    dataset: str
    dataset_fingerprint: str
    library_version: str = __version__
    created: str = ""
    complete: bool = False
    skipped: dict[str, str] = {}
    metrics: list[str] = []  # the dataset's declared metrics; empty: the task's defaults


@dataclass
class ChunkRecord:
    index: int
    clip_ids: list[str]
    lengths: list[int]


def _chunk_dir(split_dir: Path) -> Path:
    return split_dir / "chunks"


def committed_chunks(split_dir: Path) -> list[ChunkRecord]:
    """Chunks whose commit record exists, in index order."""
    records = []
    for path in sorted(_chunk_dir(split_dir).glob("*.json")):
        blob = read_json(path)
        records.append(ChunkRecord(int(path.stem), blob["clip_ids"], blob["lengths"]))
    return records


class SplitWriter:
    """Appends chunks of token maps to one split folder (used by `extract_bank`).

    Opening an existing folder checks that it was built with the same encoder config and the same
    dataset; otherwise it refuses, so a bank never mixes token maps from two models.
    """

    def __init__(self, split_dir: Path, meta: SplitMeta) -> None:
        self.dir = Path(split_dir)
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            existing = SplitMeta(**read_json(meta_path))
            if existing.encoder_config_hash != meta.encoder_config_hash:
                raise BankError(
                    f"{self.dir}: this bank was built with encoder {existing.encoder!r} config {existing.encoder_config_hash} "
                    f"(layer {existing.layer}); you asked for {meta.encoder!r} config {meta.encoder_config_hash} "
                    f"(layer {meta.layer}). Use a new --bank folder, or delete this one to rebuild it."
                )
            if existing.dataset_fingerprint != meta.dataset_fingerprint:
                raise BankError(
                    f"{self.dir}: this bank holds dataset {existing.dataset!r} fingerprint {existing.dataset_fingerprint}, "
                    f"but the data you passed has fingerprint {meta.dataset_fingerprint} (clips or labels changed). "
                    "Use a new --bank folder."
                )
            meta = existing.model_copy(update={"skipped": {**existing.skipped, **meta.skipped}})
        else:
            meta = meta.model_copy(update={"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.meta = meta
        _chunk_dir(self.dir).mkdir(parents=True, exist_ok=True)
        for stale in _chunk_dir(self.dir).glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.chunks = committed_chunks(self.dir)
        self.done = {clip_id for chunk in self.chunks for clip_id in chunk.clip_ids}
        self.next_index = (self.chunks[-1].index + 1) if self.chunks else 0
        write_json(meta_path, self.meta.model_dump())

    def write_labels(self, labels: np.ndarray) -> None:
        write_npy(self.dir / "labels.npy", labels.astype(np.float32))

    def append(self, clip_ids: list[str], tokens: list[np.ndarray], masks: list[np.ndarray], globals_: np.ndarray | None) -> None:
        """Commit one chunk.

        Args:
            clip_ids: n ids; tokens: n arrays (T_i, F, D); masks: n arrays (T_i, F) bool;
            globals_: (n, G) or None.
        """
        duplicated = self.done.intersection(clip_ids)
        if duplicated:
            raise BankError(f"{self.dir}: clips already in the bank: {sorted(duplicated)[:5]}")
        stem = _chunk_dir(self.dir) / f"{self.next_index:06d}"
        write_npy(stem.with_suffix(".tokens.npy"), np.concatenate(tokens).astype(self.meta.dtype))
        write_npy(stem.with_suffix(".mask.npy"), np.concatenate(masks).astype(bool))
        if globals_ is not None and self.meta.global_dim:
            write_npy(stem.with_suffix(".global.npy"), globals_.astype(np.float32))
        lengths = [int(t.shape[0]) for t in tokens]
        write_json(stem.with_suffix(".json"), {"clip_ids": list(clip_ids), "lengths": lengths})
        self.chunks.append(ChunkRecord(self.next_index, list(clip_ids), lengths))
        self.done.update(clip_ids)
        self.next_index += 1
        if self.meta.freq_dim is None:
            self.meta = self.meta.model_copy(update={"freq_dim": int(tokens[0].shape[1])})
            write_json(self.dir / "meta.json", self.meta.model_dump())

    def finish(self, skipped: dict[str, str] | None = None) -> None:
        skipped = {**self.meta.skipped, **(skipped or {})}
        missing = [c for c in self.meta.clip_ids if c not in self.done and c not in skipped]
        if missing:
            raise BankError(f"{self.dir}: {len(missing)} clips not extracted yet (first: {missing[:3]})")
        self.meta = self.meta.model_copy(update={"complete": True, "skipped": skipped})
        write_json(self.dir / "meta.json", self.meta.model_dump())


class BankSplit:
    """Read access to one split folder. Arrays are memory-mapped; `load()` brings them into RAM/GPU.

    Attributes:
        meta: the split's `SplitMeta`.
        clip_ids: ids of stored clips, in dataset order (skipped clips left out).
        labels: (N, C) float32.
        lengths: (N,) time steps per clip.
    """

    def __init__(self, split_dir: str | Path, allow_incomplete: bool = False) -> None:
        self.dir = Path(split_dir)
        if not (self.dir / "meta.json").exists():
            raise BankError(f"{self.dir}: not a bank split (no meta.json); build it with `patchprobe extract`")
        self.meta = SplitMeta(**read_json(self.dir / "meta.json"))
        if not self.meta.complete and not allow_incomplete:
            raise BankError(f"{self.dir}: extraction did not finish; rerun the same `patchprobe extract` command to resume it")
        chunks = committed_chunks(self.dir)
        where = {}
        self._tokens, self._masks, self._globals = [], [], []
        for slot, chunk in enumerate(chunks):
            stem = _chunk_dir(self.dir) / f"{chunk.index:06d}"
            try:
                self._tokens.append(np.load(stem.with_suffix(".tokens.npy"), mmap_mode="r"))
                self._masks.append(np.load(stem.with_suffix(".mask.npy"), mmap_mode="r"))
                self._globals.append(np.load(stem.with_suffix(".global.npy"), mmap_mode="r") if self.meta.global_dim else None)
            except (OSError, ValueError) as exc:
                raise BankError(f"{stem}.*: chunk files unreadable ({exc}); delete the chunk's .json and rerun extract") from exc
            offset = 0
            for row, (clip_id, length) in enumerate(zip(chunk.clip_ids, chunk.lengths)):
                where[clip_id] = (slot, row, offset, length)
                offset += length
        skipped = self.meta.skipped
        self.missing = [c for c in self.meta.clip_ids if c not in where and c not in skipped]
        if self.missing and not allow_incomplete:
            raise BankError(
                f"{self.dir}: {len(self.missing)} of {len(self.meta.clip_ids) - len(skipped)} clips are missing "
                f"(first: {self.missing[:3]}); a chunk was lost or deleted. Rerun the same `patchprobe extract` "
                "command: it rebuilds the missing clips."
            )
        all_labels = np.load(self.dir / "labels.npy")
        keep = [i for i, clip_id in enumerate(self.meta.clip_ids) if clip_id in where]
        self.clip_ids = [self.meta.clip_ids[i] for i in keep]
        self.labels = all_labels[keep]
        self._where = [where[clip_id] for clip_id in self.clip_ids]
        self.lengths = np.array([w[3] for w in self._where], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    def clip(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(tokens (T_i, F, D), mask (T_i, F), global (G,) or None) of one clip, memory-mapped."""
        slot, row, offset, length = self._where[index]
        tokens = self._tokens[slot][offset : offset + length]
        mask = self._masks[slot][offset : offset + length]
        globals_ = self._globals[slot]
        return tokens, mask, (None if globals_ is None else globals_[row])

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "LoadedSplit":
        """Bring the whole split into memory on `device` (tokens keep the stored dtype unless `dtype`)."""
        return LoadedSplit.from_split(self, device=device, dtype=dtype)


class LoadedSplit:
    """A split held in RAM or on a GPU, serving padded batches.

    tokens are stored padded to the longest clip: (N, T_max, F, D); for equal-length clips (the
    common case) no space is wasted.
    """

    def __init__(self, tokens, mask, globals_, labels, lengths, meta: SplitMeta) -> None:
        self.tokens, self.mask, self.globals, self.labels, self.lengths, self.meta = tokens, mask, globals_, labels, lengths, meta

    @classmethod
    def from_split(cls, split: BankSplit, device="cpu", dtype=None) -> "LoadedSplit":
        count, t_max = len(split), int(split.lengths.max()) if len(split) else 0
        freq, dim = split.meta.freq_dim or 1, split.meta.token_dim
        tokens = np.zeros((count, t_max, freq, dim), dtype=split.meta.dtype)
        mask = np.zeros((count, t_max, freq), dtype=bool)
        globals_ = np.zeros((count, split.meta.global_dim), dtype=np.float32) if split.meta.global_dim else None
        for i in range(count):
            t, m, g = split.clip(i)
            tokens[i, : len(t)], mask[i, : len(m)] = t, m
            if globals_ is not None:
                globals_[i] = g
        to = lambda a, dt=None: torch.from_numpy(a).to(device=device, dtype=dt)  # noqa: E731
        return cls(
            tokens=to(tokens, dtype),
            mask=to(mask),
            globals_=None if globals_ is None else to(globals_),
            labels=to(split.labels.astype(np.float32)),
            lengths=to(split.lengths),
            meta=split.meta,
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor | None]:
        """A padded batch cut to its own longest clip.

        Returns: {"tokens": (B, T, F, D), "mask": (B, T, F), "global": (B, G) or None, "labels": (B, C)}
        """
        longest = int(self.lengths[index].max())
        return {
            "tokens": self.tokens[index, :longest].to(dtype),
            "mask": self.mask[index, :longest],
            "global": None if self.globals is None else self.globals[index],
            "labels": self.labels[index],
        }


# bank.json keys that must match for an extraction to add to (or resume) an existing bank.
IDENTITY_KEYS = ("encoder", "encoder_config_hash", "dataset", "classes")


class Bank:
    """A bank root: `bank.json` plus one folder per split.

    bank.json holds the identity shared by the splits (`IDENTITY_KEYS`, task type, library version,
    the dataset's `source`) and `splits`: every split an extraction was asked for, so a bank whose
    extraction stopped before reaching a split is not mistaken for a complete one.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "bank.json").exists():
            hint = " (it looks like a split folder; pass its parent)" if (self.root / "meta.json").exists() else ""
            raise BankError(f"{self.root}: not a bank (no bank.json){hint}; build one with `patchprobe extract`")
        self.info = read_json(self.root / "bank.json")

    @classmethod
    def create_or_check(cls, root: str | Path, header: dict, splits: list[str]) -> "Bank":
        """Open the bank at `root` for an extraction of `splits` described by `header`, creating it if needed.

        A new bank gets `bank.json` = header + {"splits": splits}. An existing one must match the header
        on `IDENTITY_KEYS` (else BankError: a bank holds one encoder config and one dataset); the
        requested splits are added to its recorded `splits`.
        """
        root = Path(root)
        path = root / "bank.json"
        if path.exists():
            bank = cls(root)
            for key in IDENTITY_KEYS:
                if bank.info.get(key) != header.get(key):
                    raise BankError(
                        f"{root}: bank.json has {key}={bank.info.get(key)!r} but this extraction has {header.get(key)!r}; "
                        "a bank holds one encoder config and one dataset. Use a new --bank folder."
                    )
            recorded = list(bank.info.get("splits") or bank.splits)
            wanted = recorded + [s for s in splits if s not in recorded]
            if wanted != bank.info.get("splits"):
                bank.info = {**bank.info, "splits": wanted}
                write_json(path, bank.info)
            return bank
        root.mkdir(parents=True, exist_ok=True)
        write_json(path, {**header, "splits": list(splits)})
        return cls(root)

    @property
    def expected_splits(self) -> list[str]:
        """Splits this bank should hold: those recorded in bank.json (banks written before it was recorded: those present)."""
        return list(self.info.get("splits") or self.splits)

    def is_complete(self) -> bool:
        """True when every expected split exists, finished extracting, and holds every clip it should.

        A split holds every clip it should when its commit records cover `meta.clip_ids` less the
        clips skipped as bad. Cheap (reads metadata and commit records, no token data); any unreadable
        or inconsistent file counts as incomplete.
        """
        try:
            expected = self.expected_splits
            return bool(expected) and all(
                name in self.splits and BankSplit(self.root / name).meta.complete for name in expected
            )
        except (BankError, OSError, ValueError, KeyError, TypeError):
            return False

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "valid", "test") if (self.root / s / "meta.json").exists()]

    def split(self, name: str, allow_incomplete: bool = False) -> BankSplit:
        if name not in self.splits:
            raise BankError(f"{self.root}: no {name!r} split (has: {', '.join(self.splits) or 'none'})")
        return BankSplit(self.root / name, allow_incomplete=allow_incomplete)

    def describe(self) -> dict:
        """Shapes, sizes on disk and metadata, as `patchprobe info` prints them."""
        out = {"path": str(self.root), **self.info, "splits": {}}
        for name in self.splits:
            split = BankSplit(self.root / name, allow_incomplete=True)
            size = split.size_on_disk()
            out["splits"][name] = {
                "clips": len(split),
                "of": len(split.meta.clip_ids),
                "complete": split.meta.complete,
                "token_grid": f"T x {split.meta.freq_dim} x {split.meta.token_dim}",
                "time_steps": {"min": int(split.lengths.min()), "max": int(split.lengths.max())} if len(split) else None,
                "global_dim": split.meta.global_dim,
                "dtype": split.meta.dtype,
                "bytes": size,
                "bytes_per_clip": size // max(len(split), 1),
                "skipped": len(split.meta.skipped),
                "created": split.meta.created,
            }
        return out


def remove_bank(root: str | Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
