"""The on-disk token-map store.

Layout of a bank (one encoder + config, one dataset), one self-describing folder per split:

    BANK/bank.json                 encoder, dataset, class list and requested splits shared by the splits
    BANK/.extract.lock             held (flock) by the one `extract` writing the bank; holder's pid and host
    BANK/.extract.sKofN.lock       the same for shard K of an extraction run as N shards (`extract --shard K/N`)
    BANK/.extract.mutex            taken briefly by writers around every read-modify-write of shared files
    BANK/<split>/meta.json         everything needed to read the split alone (see `SplitMeta`)
    BANK/<split>/labels.npy        (N, C) float32, rows in `clip_ids` order
    BANK/<split>/chunks/K.json     commit record of chunk K (see `ChunkRecord`); sKofN-K.json when written by shard K of N
    BANK/<split>/chunks/K.tokens.npy   (sum T_i, F, D) token rows of those clips (float16 default)
    BANK/<split>/chunks/K.mask.npy     (sum T_i, F) bool validity
    BANK/<split>/chunks/K.global.npy   (n, G) float32 global vectors (absent when G = 0)
    BANK/<split>/verified.json     chunk files whose checksum was verified: name -> [bytes, mtime_ns]

Clips are ragged along time (T_i differs); padding and masks are applied at batch time. A chunk
exists only once its `.json` is written (last, atomically), so a killed extraction never leaves a
half-written or duplicated clip: array files without a commit record are ignored and overwritten.

The commit record holds the chunk's clip ids, their lengths, each array file's size and BLAKE2b
checksum, and each clip's audio stamp (`AudioDataset.audio_stamp`). Loading verifies every chunk
file once (checksum and finite values) and records the file's size and mtime in `verified.json`, so
later loads skip files that did not change; `Bank.verify(full=True)` checks everything again.

A split knows the clips it should hold (`SplitMeta.clip_ids` less `skipped`): a split missing
some (a deleted or corrupt chunk) is refused for reading, and `extract_bank` rebuilds them.

Sharded extraction (`Shard`): N processes, on one machine or many sharing the folder, each extract a
contiguous slice of every split's clips into the same bank. Each holds its own shard lock; chunk
names carry the shard, so they cannot collide; shared files (bank.json, meta.json, verified.json)
change only under the bank's mutex. A split is complete when every clip is committed, whichever
shard committed it; until then reading it names the shards that still lack clips.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from .._version import __version__
from .._io import read_json, write_json, write_npy
from ..errors import BankError

# Version of the on-disk layout. 2: chunk checksums and audio stamps in commit records, verified.json.
BANK_FORMAT = 2

# The arrays of one chunk, by role; "global" only when the encoder gives a global vector.
CHUNK_ARRAYS = ("tokens", "mask", "global")

# What to tell the user whenever rerunning `extract` is the repair.
RERUN = "rerun the same `patchprobe extract` command: it rebuilds what is missing and keeps the rest"


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
    format: int = 1  # BANK_FORMAT of the writer; folders from before it was recorded read as 1
    shards: int = 1  # how many shards the last extraction of this split ran as (names the unfinished ones)


@dataclass(frozen=True)
class Shard:
    """One process's share of an extraction run as `count` processes (`extract --shard index/count`).

    Shard i takes the i-th of `count` contiguous slices of every split's clip list, in the dataset's
    order (slice sizes differ by at most one clip): the shares are disjoint, cover every clip, and
    are the same on every rerun. `index` is 0-based, as SLURM_ARRAY_TASK_ID with `--array=0-(n-1)`
    and torchrun's RANK are. Shard(0, 1), the default, is the whole split: an unsharded extraction.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1):
            raise ValueError(f"--shard {self.index}/{self.count}: the shard count must be a whole number >= 1")
        if not (isinstance(self.index, int) and 0 <= self.index < self.count):
            raise ValueError(f"--shard {self.index}/{self.count}: the shard index must be in 0..{self.count - 1} (0-based, like "
                             f"SLURM_ARRAY_TASK_ID with --array=0-{self.count - 1} and torchrun's RANK)")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """`"i/n"` -> Shard(i, n); a ValueError naming --shard for anything else."""
        match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
        if not match:
            raise ValueError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4 for the first of 4 shards (0-based, like "
                             "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT with --array=0-3)")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def share(self, clip_ids: list[str]) -> list[str]:
        """This shard's clips of `clip_ids`, in their order: the slice [N i / n, N (i + 1) / n)."""
        total = len(clip_ids)
        return list(clip_ids[total * self.index // self.count : total * (self.index + 1) // self.count])

    @staticmethod
    def owner(position: int, total: int, count: int) -> int:
        """Index of the shard (of `count`) whose share holds the clip at `position` of `total` (inverse of `share`)."""
        return (count * (position + 1) - 1) // total

    @property
    def prefix(self) -> str:
        """What this shard's chunk names start with ("" unsharded, so unsharded banks keep their names)."""
        return f"s{self.index}of{self.count}-" if self.sharded else ""

    @property
    def lock_name(self) -> str:
        return f".extract.s{self.index}of{self.count}.lock" if self.sharded else ".extract.lock"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


UNSHARDED = Shard()

# A chunk's name: K (unsharded) or sIofN-K (written by shard I of N); K counts the chunks of one writer.
_CHUNK_NAME = re.compile(r"(?:s(\d+)of(\d+)-)?(\d+)")


def _chunk_shard(name: str) -> Shard | None:
    """The shard that wrote the chunk named `name` (a file stem), or None when it is no chunk name."""
    match = _CHUNK_NAME.fullmatch(name)
    if not match:
        return None
    if match.group(1) is None:
        return UNSHARDED
    try:
        return Shard(int(match.group(1)), int(match.group(2)))
    except ValueError:
        return None


@contextmanager
def _bank_mutex(root: Path):
    """Hold BANK/.extract.mutex (flock, blocking) for one short read-modify-write of a file the shards share."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".extract.mutex", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@dataclass
class ChunkRecord:
    """The commit record of one chunk (`chunks/K.json`).

    Attributes:
        index: K.
        clip_ids: the n clips of the chunk, in storage order.
        lengths: (n,) time steps per clip; the token rows of clip i follow those of clip i - 1.
        files: role ("tokens", "mask", "global") -> {"name", "bytes", "blake2b"} of its array file.
        audio_stamps: (n,) the clips' audio stamps at extraction (None: the dataset gives none).
        shard: the shard that wrote it (`UNSHARDED` for an unsharded extraction).
    """

    index: int
    clip_ids: list[str]
    lengths: list[int]
    files: dict[str, dict] = field(default_factory=dict)
    audio_stamps: list[str | None] = field(default_factory=list)
    shard: Shard = UNSHARDED

    @property
    def name(self) -> str:
        """The stem of its files: K, or sIofN-K for shard I of N."""
        return _chunk_name(self.shard, self.index)

    def to_json(self) -> dict:
        return {"clip_ids": self.clip_ids, "lengths": self.lengths, "files": self.files, "audio_stamps": self.audio_stamps}


def _chunk_dir(split_dir: Path) -> Path:
    return split_dir / "chunks"


def _chunk_name(shard: Shard, index: int) -> str:
    return f"{shard.prefix}{index:06d}"


def _stem(split_dir: Path, name: str) -> Path:
    return _chunk_dir(split_dir) / name


def file_digest(path: Path) -> str:
    """BLAKE2b (16 bytes, hex) of a file's bytes, read in 4 MB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json_file(path: Path, advice: str):
    """read_json with every failure turned into a BankError naming the file and what to do."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise BankError(f"{path}: missing; {advice}") from None
    except (OSError, ValueError) as exc:  # ValueError: invalid JSON or text encoding
        raise BankError(f"{path}: unreadable or corrupt ({type(exc).__name__}: {exc}); {advice}") from None


def read_split_meta(split_dir: Path) -> SplitMeta:
    """The split's meta.json, refusing a corrupt one or one from before `BANK_FORMAT` with a BankError."""
    path = Path(split_dir) / "meta.json"
    advice = f"delete the folder {split_dir} and {RERUN}"
    blob = _read_json_file(path, advice)
    try:
        meta = SplitMeta(**blob)
    except (ValidationError, TypeError) as exc:
        raise BankError(f"{path}: not a valid split description ({str(exc).splitlines()[0]}); {advice}") from None
    if meta.format < BANK_FORMAT:
        raise BankError(
            f"{split_dir}: written by patchprobe {meta.library_version} in bank format {meta.format}, before chunk "
            f"checksums and audio stamps (format {BANK_FORMAT}); this version cannot check it. Extract again into a new "
            "--bank folder (or delete this one and rerun the same `patchprobe extract` command)."
        )
    if meta.format > BANK_FORMAT:
        raise BankError(f"{split_dir}: bank format {meta.format} is newer than this patchprobe understands ({BANK_FORMAT}); upgrade patchprobe")
    return meta


def read_chunk_records(split_dir: Path) -> tuple[list[ChunkRecord], dict[int, str]]:
    """Every commit record of a split, in index order, and the problems of those that cannot be used.

    Cheap: reads the records and stats the array files (no token data). A record is unusable when it
    is unreadable, inconsistent, or one of its files is missing or has another size than committed.

    Returns:
        (records, problems): usable records; chunk name -> description of what is wrong with it.
    """
    records, problems = [], {}
    for path in sorted(_chunk_dir(split_dir).glob("*.json")):
        shard = _chunk_shard(path.stem)
        if shard is None:
            continue
        index = int(_CHUNK_NAME.fullmatch(path.stem).group(3))
        try:
            blob = read_json(path)
            record = ChunkRecord(index, list(blob["clip_ids"]), [int(n) for n in blob["lengths"]], dict(blob["files"]),
                                 list(blob["audio_stamps"]), shard)
            if not (len(record.clip_ids) == len(record.lengths) == len(record.audio_stamps)) or "tokens" not in record.files:
                raise ValueError("clip ids, lengths and audio stamps differ in count, or no token file")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems[path.stem] = f"{path}: commit record unreadable or corrupt ({type(exc).__name__}: {exc})"
            continue
        problem = _file_sizes_problem(split_dir, record)
        if problem:
            problems[path.stem] = problem
            continue
        records.append(record)
    return records, problems


def _file_sizes_problem(split_dir: Path, record: ChunkRecord) -> str | None:
    for role, entry in record.files.items():
        path = _chunk_dir(split_dir) / entry["name"]
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path}: missing ({role} of chunk {record.name})"
        if size != entry["bytes"]:
            return f"{path}: {size} bytes, committed with {entry['bytes']} (truncated or overwritten)"
    return None


def verify_chunk(split_dir: Path, record: ChunkRecord, verified: dict | None = None) -> str | None:
    """Check one committed chunk's files against their checksums and for non-finite values.

    Args:
        verified: name -> [bytes, mtime_ns] of files already verified; those whose size and mtime are
            unchanged are skipped (pass None to check everything). Files that pass are added to it.

    Returns:
        a description of the first problem, or None.
    """
    problem = _file_sizes_problem(split_dir, record)
    if problem:
        return problem
    for role, entry in record.files.items():
        path = _chunk_dir(split_dir) / entry["name"]
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if verified is not None and verified.get(entry["name"]) == stamp:
            continue
        if file_digest(path) != entry["blake2b"]:
            return f"{path}: checksum mismatch (the file changed after it was committed: disk or copy corruption)"
        if role != "mask":
            try:
                values = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                return f"{path}: unreadable ({exc})"
            finite = all(np.isfinite(values[start : start + 4096]).all() for start in range(0, len(values), 4096))
            if not finite:
                return (f"{path}: holds NaN or infinite values (written so at extraction: the encoder overflowed, "
                        "e.g. float16 storage of large activations; extract with --dtype float32)")
        if verified is not None:
            verified[entry["name"]] = stamp
    return None


def remove_chunk(split_dir: Path, name: str) -> None:
    """Drop the chunk `name`: its commit record first (the chunk stops existing), then its array files."""
    stem = _stem(split_dir, name)
    stem.with_suffix(".json").unlink(missing_ok=True)
    for role in CHUNK_ARRAYS:
        stem.with_suffix(f".{role}.npy").unlink(missing_ok=True)


def _read_verified(split_dir: Path) -> dict:
    try:
        blob = read_json(split_dir / "verified.json")
        return blob if isinstance(blob, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: verify again


def _write_verified(split_dir: Path, verified: dict) -> None:
    try:
        write_json(split_dir / "verified.json", verified)
    except OSError:
        pass  # a read-only bank is verified on every load instead


class ExtractLock:
    """An exclusive lock on a bank (or on one shard of it) for one extraction: `flock` on BANK/`shard.lock_name`.

    The kernel releases it when the holder dies (even by SIGKILL), so a stale lock cannot block a
    rerun. The file records the holder's pid, host and start time for the refusal message. flock
    covers processes on one machine, and machines sharing an NFS (v4, or v3 with lockd) or Lustre
    (mounted with -o flock) folder.

    Shards of one run (same count) each hold their own lock and write at once; taking it is refused
    while the same shard is held, or while an extraction with another shard count (unsharded
    included) holds any lock of the bank: its slices differ, so both would extract some clips.
    """

    def __init__(self, root: Path, shard: Shard = UNSHARDED) -> None:
        self.root = Path(root)
        self.shard = shard
        self.path = self.root / shard.lock_name
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, or raise BankError naming the extraction that holds it (or one that conflicts)."""
        self.root.mkdir(parents=True, exist_ok=True)
        # Under the mutex, so that no other writer takes its own lock between the probes below and ours.
        with _bank_mutex(self.root):
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.seek(0)
                holder = handle.read().strip() or "unknown holder"
                handle.close()
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    if self.shard.sharded:
                        raise BankError(
                            f"{self.root}: shard {self.shard} of this bank is already being extracted ({holder}); wait for it "
                            "to finish (then rerun to check it is complete), or give this process another --shard"
                        ) from None
                    raise BankError(
                        f"{self.root}: another extraction is writing this bank ({holder}); wait for it to finish "
                        "(then rerun to check it is complete), or use another --bank folder"
                    ) from None
                raise
            conflicting = [(shard, holder) for shard, holder in running_extractions(self.root, skip=self.path)
                           if shard.count != self.shard.count]
            if conflicting:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                handle.close()
                raise BankError(_conflict_message(self.root, self.shard, conflicting))
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.truncate(0)
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ExtractLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def running_extractions(root: Path, skip: Path | None = None) -> list[tuple[Shard, str]]:
    """The extractions holding a lock of the bank at `root` now: (shard, "pid P on HOST since ...") each.

    Each lock file is probed with a non-blocking flock (taken and released at once when free); call it
    under the bank mutex, as `ExtractLock.acquire` does, so a probe never stands in a starting writer's way.
    """
    running = []
    for path in sorted(Path(root).glob(".extract*.lock")):
        match = re.fullmatch(r"\.extract(?:\.s(\d+)of(\d+))?\.lock", path.name)
        if not match or (skip is not None and path == skip):
            continue
        try:
            shard = Shard(int(match.group(1)), int(match.group(2))) if match.group(1) else UNSHARDED
        except ValueError:
            continue
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                running.append((shard, handle.read().strip() or "unknown holder"))
            else:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return running


def _conflict_message(root: Path, shard: Shard, others: list[tuple[Shard, str]]) -> str:
    def layout(s: Shard) -> str:
        return f"shard {s} (--shard {s})" if s.sharded else "an extraction without --shard"

    listed = "; ".join(f"{layout(s)}: {holder}" for s, holder in others[:4]) + (f"; and {len(others) - 4} more" if len(others) > 4 else "")
    ours = f"--shard {shard}" if shard.sharded else "an extraction without --shard"
    count = others[0][0].count
    same = f"--shard i/{count} like it" if count > 1 else "no --shard like it"
    return (f"{root}: another extraction is writing this bank and splits its clips differently ({listed}); {ours} would "
            f"extract some of the same clips. Wait for it to finish, or run this one with {same}")


class SplitWriter:
    """Appends chunks of token maps to one split folder (used by `extract_bank`), for one shard of its clips.

    Opening an existing folder checks that it was built with the same encoder config, the same
    dataset and the same storage dtype; otherwise it refuses, so a bank never mixes token maps from
    two models. It then drops every chunk holding clips of its share that cannot be used (unreadable
    record, missing, truncated or corrupt file, non-finite values, clips committed twice), listed in
    `repaired`, so that their clips count as not extracted; a split that lost clips is no longer
    complete. Chunks of other shards of the same run are never touched: their writers may be running.

    Attributes:
        share: the clips of `meta.clip_ids` this shard extracts (all of them unsharded).
        done: clips of the share (and of the chunks holding them) already committed.
    """

    def __init__(self, split_dir: Path, meta: SplitMeta, shard: Shard = UNSHARDED) -> None:
        self.dir = Path(split_dir)
        self.shard = shard
        self.repaired: list[str] = []
        with _bank_mutex(self.dir.parent):
            self.meta = self._create_or_check_meta(meta)
        self.share = shard.share(self.meta.clip_ids)
        chunks = _chunk_dir(self.dir)
        chunks.mkdir(parents=True, exist_ok=True)
        for stale in chunks.glob(".*.tmp"):  # ".NAME.ROLE.npy.RANDOM.tmp", left by a killed writer
            if self._may_clean(stale.name[1:].split(".")[0]):
                stale.unlink(missing_ok=True)
        self.chunks = self._usable_chunks()
        self.done = {clip_id for chunk in self.chunks for clip_id in chunk.clip_ids}
        # Array files without a commit record were left by a killed run (or a dropped chunk): our lock and the
        # refusal of other shard counts guarantee that no writer is about to commit those we may clean.
        committed = {path.stem for path in chunks.glob("*.json")}
        for path in chunks.glob("*.npy"):
            stem = path.name.split(".")[0]
            if stem not in committed and self._may_clean(stem):
                path.unlink(missing_ok=True)
        own = [int(_CHUNK_NAME.fullmatch(stem).group(3)) for stem in committed if _chunk_shard(stem) == shard]
        self.next_index = max(own) + 1 if own else 0
        missing = [c for c in self.share if c not in self.done and c not in self.meta.skipped]
        if self.meta.complete and missing:
            self._update_meta(lambda current: current.model_copy(update={"complete": False}))

    def _create_or_check_meta(self, meta: SplitMeta) -> SplitMeta:
        """meta.json as it must be for this extraction: created, or checked against the stored one (call under the mutex)."""
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            existing = read_split_meta(self.dir)
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
            if existing.dtype != meta.dtype:
                raise BankError(
                    f"{self.dir}: this split stores tokens as {existing.dtype}; you asked for {meta.dtype}. Rerun with "
                    f"--dtype {existing.dtype} to resume it, or use a new --bank folder for {meta.dtype}."
                )
            meta = existing.model_copy(update={"skipped": {**existing.skipped, **meta.skipped}, "shards": self.shard.count})
        else:
            meta = meta.model_copy(update={"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "format": BANK_FORMAT,
                                           "shards": self.shard.count})
        write_json(meta_path, meta.model_dump())
        return meta

    def _update_meta(self, change) -> None:
        """Apply `change` (SplitMeta -> SplitMeta) to the meta.json on disk under the mutex: other shards update it too."""
        with _bank_mutex(self.dir.parent):
            self.meta = change(read_split_meta(self.dir))
            write_json(self.dir / "meta.json", self.meta.model_dump())

    def _may_clean(self, stem: str) -> bool:
        """Whether leftover files of chunk `stem` are ours to delete: our shard's, or of another shard count (none runs)."""
        writer = _chunk_shard(stem)
        return writer is not None and (writer.count != self.shard.count or writer == self.shard)

    def _usable_chunks(self) -> list[ChunkRecord]:
        records, problems = read_chunk_records(self.dir)
        problems = {name: problem for name, problem in problems.items() if self._may_clean(name)}
        wanted = set(self.share)
        verified = _read_verified(self.dir)
        usable, seen = [], set()
        for record in records:
            if record.shard != self.shard and not wanted.intersection(record.clip_ids):
                continue  # another shard's clips: its writer checks them
            problem = verify_chunk(self.dir, record, verified)
            twice = seen.intersection(record.clip_ids)
            if twice and problem is None:
                problem = f"{_stem(self.dir, record.name)}.json: clips committed twice (first: {sorted(twice)[:3]})"
            if problem:
                problems[record.name] = problem
                continue
            usable.append(record)
            seen.update(record.clip_ids)
        for name, problem in sorted(problems.items()):
            remove_chunk(self.dir, name)
            self.repaired.append(problem)
        self._save_verified(verified)
        return usable

    def _save_verified(self, verified: dict) -> None:
        """Add `verified` to verified.json (under the mutex: other shards add theirs)."""
        try:
            with _bank_mutex(self.dir.parent):
                _write_verified(self.dir, {**_read_verified(self.dir), **verified})
        except OSError:
            pass  # a read-only bank is verified on every load instead

    def stale_clips(self, stamp_of) -> list[str]:
        """Committed clips whose audio stamp differs from `stamp_of(clip_id)` now (clips without a stamp are not checked)."""
        changed = []
        for chunk in self.chunks:
            for clip_id, stored in zip(chunk.clip_ids, chunk.audio_stamps):
                if stored is not None and stamp_of(clip_id) != stored:
                    changed.append(clip_id)
        return changed

    def drop_clips(self, clip_ids: list[str]) -> list[str]:
        """Remove every chunk holding one of `clip_ids` (their other clips are extracted again); returns the chunk names."""
        wanted = set(clip_ids)
        dropped = [chunk.name for chunk in self.chunks if wanted.intersection(chunk.clip_ids)]
        if dropped and self.meta.complete:
            self._update_meta(lambda current: current.model_copy(update={"complete": False}))
        for name in dropped:
            remove_chunk(self.dir, name)
        self.chunks = [chunk for chunk in self.chunks if chunk.name not in dropped]
        self.done = {clip_id for chunk in self.chunks for clip_id in chunk.clip_ids}
        return dropped

    def write_labels(self, labels: np.ndarray) -> None:
        """(N, C) labels in `meta.clip_ids` order; rewritten only when the stored file differs or is unreadable."""
        labels = labels.astype(np.float32)
        try:
            if np.array_equal(np.load(self.dir / "labels.npy"), labels):
                return
        except (OSError, ValueError, EOFError):
            pass
        write_npy(self.dir / "labels.npy", labels)

    def append(self, clip_ids: list[str], tokens: list[np.ndarray], masks: list[np.ndarray], globals_: np.ndarray | None,
               audio_stamps: list[str | None] | None = None) -> None:
        """Commit one chunk.

        Args:
            clip_ids: n ids; tokens: n arrays (T_i, F, D); masks: n arrays (T_i, F) bool;
            globals_: (n, G) or None; audio_stamps: n stamps (`AudioDataset.audio_stamp`) or None.
        """
        duplicated = self.done.intersection(clip_ids)
        if duplicated:
            raise BankError(f"{self.dir}: clips already in the bank: {sorted(duplicated)[:5]}")
        name = _chunk_name(self.shard, self.next_index)
        stem = _stem(self.dir, name)
        with np.errstate(over="ignore"):  # an overflow to inf is caught just below, with a better message than numpy's
            arrays = {"tokens": np.concatenate(tokens).astype(self.meta.dtype), "mask": np.concatenate(masks).astype(bool)}
        if globals_ is not None and self.meta.global_dim:
            arrays["global"] = globals_.astype(np.float32)
        for role, array in arrays.items():
            if role != "mask" and not np.isfinite(array).all():
                rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
                raise BankError(
                    f"{self.dir}: the encoder's {role} for this chunk hold NaN or infinite values in {self.meta.dtype} "
                    f"(first bad row {int(rows[0])}); use --dtype float32 if values overflow float16, else check the encoder"
                )
        files = {}
        for role, array in arrays.items():
            path = stem.with_suffix(f".{role}.npy")
            write_npy(path, array)
            files[role] = {"name": path.name, "bytes": path.stat().st_size, "blake2b": file_digest(path)}
        lengths = [int(t.shape[0]) for t in tokens]
        stamps = list(audio_stamps) if audio_stamps is not None else [None] * len(clip_ids)
        record = ChunkRecord(self.next_index, list(clip_ids), lengths, files, stamps, self.shard)
        write_json(stem.with_suffix(".json"), record.to_json())
        self.chunks.append(record)
        self.done.update(clip_ids)
        self.next_index += 1
        if self.meta.freq_dim is None:
            freq = int(tokens[0].shape[1])
            self._update_meta(lambda current: current.model_copy(update={"freq_dim": current.freq_dim or freq}))

    def finish(self, skipped: dict[str, str] | None = None) -> None:
        """Record this shard's share as done (and its `skipped` clips); the split is complete once no clip is missing."""
        skipped = {**self.meta.skipped, **(skipped or {})}
        missing = [c for c in self.share if c not in self.done and c not in skipped]
        if missing:
            raise BankError(f"{self.dir}: {len(missing)} clips not extracted yet (first: {missing[:3]})")

        def finished(current: SplitMeta) -> SplitMeta:
            merged = {**current.skipped, **skipped}
            committed = set(self.done)
            if self.shard.sharded:  # the other shards' clips count once committed, whoever committed them
                committed.update(clip_id for record in read_chunk_records(self.dir)[0] for clip_id in record.clip_ids)
            complete = all(c in committed or c in merged for c in current.clip_ids)
            return current.model_copy(update={"complete": complete, "skipped": merged})

        self._update_meta(finished)

    @property
    def complete(self) -> bool:
        return self.meta.complete


def _shards_advice(lacking: dict[int, int], count: int) -> str:
    """What to tell the user when shards `lacking` (index -> clips missing) of a `count`-shard extraction must run."""
    listed = ", ".join(f"{index}/{count} ({missing} clip{'s' if missing != 1 else ''})" for index, missing in sorted(lacking.items()))
    flags = " and with ".join(f"--shard {index}/{count}" for index in sorted(lacking))
    return (f"shard(s) {listed} have not committed all their clips. Wait for them if they are running, else run your "
            f"`patchprobe extract` command with {flags} (a shard resumes where it stopped); the split can be read once every "
            "shard has committed its clips.")


def unfinished_shards(meta: SplitMeta, committed: set[str]) -> dict[int, int]:
    """Shard index (of `meta.shards`) -> how many of its clips are neither committed nor skipped (only shards lacking some)."""
    lacking: dict[int, int] = {}
    total = len(meta.clip_ids)
    for position, clip_id in enumerate(meta.clip_ids):
        if clip_id not in committed and clip_id not in meta.skipped:
            owner = Shard.owner(position, total, meta.shards)
            lacking[owner] = lacking.get(owner, 0) + 1
    return lacking


class BankSplit:
    """Read access to one split folder. Arrays are memory-mapped; `load()` brings them into RAM/GPU.

    Opening reads the metadata and commit records and checks that every committed file exists with
    its committed size, that no clip is committed twice and none is missing (cheap: no token data);
    `verify()` checks the checksums and values, and `load()` verifies before reading.

    Attributes:
        meta: the split's `SplitMeta`.
        clip_ids: ids of stored clips, in dataset order (skipped clips left out).
        labels: (N, C) float32.
        lengths: (N,) time steps per clip.
        missing: ids the split should hold but does not (`meta.clip_ids` less skipped, less stored).
        problems: what is wrong with the split (only with `allow_incomplete`; otherwise the first is raised).
    """

    def __init__(self, split_dir: str | Path, allow_incomplete: bool = False) -> None:
        self.dir = Path(split_dir)
        if not (self.dir / "meta.json").exists():
            raise BankError(f"{self.dir}: not a bank split (no meta.json); build it with `patchprobe extract`")
        self.meta = read_split_meta(self.dir)
        self.problems: list[str] = []
        records, broken = read_chunk_records(self.dir)
        if not self.meta.complete:
            self._problem(self._unfinished(records), allow_incomplete)
        for problem in broken.values():
            self._problem(f"{problem}; {RERUN}", allow_incomplete)
        self.chunks: list[ChunkRecord] = []
        where = {}
        self._tokens, self._masks, self._globals = [], [], []
        for chunk in records:
            twice = [c for c in chunk.clip_ids if c in where]
            if twice:
                self._problem(f"{_stem(self.dir, chunk.name)}.json: clips committed twice (first: {twice[:3]}; two extractions at "
                              f"once?); {RERUN}", allow_incomplete)
                continue
            stem = _stem(self.dir, chunk.name)
            try:
                tokens = np.load(stem.with_suffix(".tokens.npy"), mmap_mode="r")
                masks = np.load(stem.with_suffix(".mask.npy"), mmap_mode="r")
                globals_ = np.load(stem.with_suffix(".global.npy"), mmap_mode="r") if self.meta.global_dim else None
                if len(tokens) != sum(chunk.lengths) or len(masks) != len(tokens) or (globals_ is not None and len(globals_) != len(chunk.clip_ids)):
                    raise ValueError("array rows do not match the commit record")
            except (OSError, ValueError) as exc:
                self._problem(f"{stem}.*: chunk files unreadable ({exc}); {RERUN}", allow_incomplete)
                continue
            slot = len(self.chunks)
            self.chunks.append(chunk)
            self._tokens.append(tokens)
            self._masks.append(masks)
            self._globals.append(globals_)
            offset = 0
            for row, (clip_id, length) in enumerate(zip(chunk.clip_ids, chunk.lengths)):
                where[clip_id] = (slot, row, offset, length)
                offset += length
        skipped = self.meta.skipped
        self.missing = [c for c in self.meta.clip_ids if c not in where and c not in skipped]
        # A sharded extraction still running lacks clips by design: the message above names its shards.
        if self.missing and (self.meta.complete or self.meta.shards <= 1):
            rerun = ("Rerun the same `patchprobe extract` command: it rebuilds the missing clips." if self.meta.shards <= 1
                     else _shards_advice(unfinished_shards(self.meta, set(where)), self.meta.shards))
            self._problem(
                f"{self.dir}: {len(self.missing)} of {len(self.meta.clip_ids) - len(skipped)} clips are missing "
                f"(first: {self.missing[:3]}); a chunk was lost, deleted or found corrupt. {rerun}",
                allow_incomplete,
            )
        labels_path = self.dir / "labels.npy"
        try:
            all_labels = np.load(labels_path)
            if all_labels.shape != (len(self.meta.clip_ids), len(self.meta.classes)):
                raise ValueError(f"shape {all_labels.shape}, expected {(len(self.meta.clip_ids), len(self.meta.classes))}")
        except (OSError, ValueError, EOFError) as exc:
            self._problem(f"{labels_path}: unreadable or corrupt ({exc}); {RERUN} (it rewrites the labels)", allow_incomplete)
            all_labels = np.zeros((len(self.meta.clip_ids), len(self.meta.classes)), dtype=np.float32)
        keep = [i for i, clip_id in enumerate(self.meta.clip_ids) if clip_id in where]
        self.clip_ids = [self.meta.clip_ids[i] for i in keep]
        self.labels = all_labels[keep]
        self._where = [where[clip_id] for clip_id in self.clip_ids]
        self.lengths = np.array([w[3] for w in self._where], dtype=np.int64)

    def _unfinished(self, records: list[ChunkRecord]) -> str:
        """Why a split not marked complete cannot be read yet, and what to run."""
        count = self.meta.shards
        if count <= 1:
            return f"{self.dir}: extraction did not finish; rerun the same `patchprobe extract` command to resume it"
        lacking = unfinished_shards(self.meta, {clip_id for record in records for clip_id in record.clip_ids})
        if not lacking:
            return (f"{self.dir}: every clip is committed, but the extraction in {count} shards did not record its end; rerun "
                    f"your `patchprobe extract` command with one of its shards (e.g. --shard 0/{count}) to finish it")
        return f"{self.dir}: extraction in {count} shards is not finished: {_shards_advice(lacking, count)}"

    def _problem(self, message: str, allow: bool) -> None:
        if not allow:
            raise BankError(message)
        self.problems.append(message)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    def verify(self, full: bool = False) -> list[str]:
        """Check every committed chunk's checksums and values; returns the problems found (empty: all good).

        Files verified before (recorded in verified.json with the same size and mtime) are skipped
        unless `full`; files that pass are recorded.
        """
        verified = {} if full else _read_verified(self.dir)
        problems = []
        for chunk in self.chunks:
            problem = verify_chunk(self.dir, chunk, verified)
            if problem:
                problems.append(f"{problem}; {RERUN} (it drops and rebuilds chunk {chunk.name})")
        _write_verified(self.dir, verified)
        return problems

    def clip(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(tokens (T_i, F, D), mask (T_i, F), global (G,) or None) of one clip, memory-mapped."""
        slot, row, offset, length = self._where[index]
        tokens = self._tokens[slot][offset : offset + length]
        mask = self._masks[slot][offset : offset + length]
        globals_ = self._globals[slot]
        return tokens, mask, (None if globals_ is None else globals_[row])

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.dir.rglob("*") if p.is_file())

    def load(self, device: str | torch.device = "cpu", dtype: torch.dtype | None = None, residency: str = "auto") -> "LoadedSplit":
        """Verify the split (see `verify`), then serve it on `device` (tokens keep the stored dtype unless `dtype`).

        residency: "memory" reads every token into RAM (or GPU memory); "stream" leaves the tokens in
        their memory-mapped chunk files and gathers each batch from them (banks larger than memory);
        "auto" streams when the padded tokens would take more than `STREAM_FRACTION` of the free memory
        of `device`, and says so on stderr. `LoadedSplit.residency` records the choice and why.
        """
        if residency not in ("auto", "memory", "stream"):
            raise ValueError(f"residency must be 'auto', 'memory' or 'stream' (got {residency!r})")
        problems = self.verify()
        if problems:
            raise BankError(problems[0] + (f" ({len(problems) - 1} more chunk(s) also fail)" if len(problems) > 1 else ""))
        device = torch.device(device)
        needed = self.padded_token_bytes(dtype)
        free = free_memory_bytes(device)
        stream = residency == "stream" or (residency == "auto" and needed > STREAM_FRACTION * free)
        why = f"{self.dir}: {needed / 1e9:.2f} GB of tokens, {free / 1e9:.2f} GB free on {device.type}"
        if stream:
            if residency == "auto":
                print(f"{why}: streaming batches from the memory-mapped chunks (larger than {STREAM_FRACTION:.0%} of free memory)",
                      file=sys.stderr)
            return LoadedSplit.streamed(self, device=device, reason=f"stream ({why})")
        loaded = LoadedSplit.from_split(self, device=device, dtype=dtype)
        loaded.residency = f"memory ({why})"
        return loaded

    def padded_token_bytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes of the tokens padded to the longest clip, (N, T_max, F, D), in the stored dtype or `dtype`."""
        itemsize = torch.empty(0, dtype=dtype).element_size() if dtype is not None else np.dtype(self.meta.dtype).itemsize
        t_max = int(self.lengths.max()) if len(self) else 0
        return len(self) * t_max * (self.meta.freq_dim or 1) * self.meta.token_dim * itemsize


# "auto" residency streams a split whose tokens would take more than this share of the free memory (room
# for the batches, the probes and the other splits).
STREAM_FRACTION = 0.6


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on `device`: CUDA's free memory, else the kernel's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class MappedTokens:
    """The tokens of a streamed split: (N, T_max, F, D) as seen by `LoadedSplit`, left in the chunk files.

    Indexing with rows (and optionally a time slice) gathers those clips from the memory-mapped chunks
    into one new CPU tensor (page-locked when the split serves a GPU, so the copy there is asynchronous);
    the page cache and the kernel's read-ahead do the prefetching.
    """

    def __init__(self, split: BankSplit, pin: bool) -> None:
        self._split, self._pin = split, pin
        t_max = int(split.lengths.max()) if len(split) else 0
        self.shape = torch.Size((len(split), t_max, split.meta.freq_dim or 1, split.meta.token_dim))
        self.dtype = torch.from_numpy(np.empty(0, np.dtype(split.meta.dtype))).dtype
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        rows, times = (key if isinstance(key, tuple) else (key, slice(None)))
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        rows = torch.as_tensor(rows).reshape(-1).tolist()
        longest = len(range(*times.indices(self.shape[1])))
        if times.start not in (None, 0) or times.step not in (None, 1):
            raise IndexError("MappedTokens: only a leading time slice (:T) is supported")
        out = torch.zeros((len(rows), longest, *self.shape[2:]), dtype=self.dtype, pin_memory=self._pin)
        view = out.numpy()
        for slot, row in enumerate(rows):
            tokens = self._split.clip(row)[0][:longest]
            view[slot, : len(tokens)] = tokens
        return out


class LoadedSplit:
    """A split held in RAM or on a GPU, serving padded batches.

    tokens are stored padded to the longest clip: (N, T_max, F, D); for equal-length clips (the
    common case) no space is wasted. Pooled vectors of the global-vector heads (`pooled`) are
    computed once per loaded split and kept with it.
    """

    def __init__(self, tokens, mask, globals_, labels, lengths, meta: SplitMeta, residency: str = "memory") -> None:
        self.tokens, self.mask, self.globals, self.labels, self.lengths, self.meta = tokens, mask, globals_, labels, lengths, meta
        self.residency = residency  # "memory (...)" or "stream (...)": where the tokens are, and why
        self._pooled: dict[str, torch.Tensor] = {}

    @classmethod
    def streamed(cls, split: BankSplit, device="cpu", reason: str = "stream") -> "LoadedSplit":
        """The split with its tokens left in the memory-mapped chunks (`MappedTokens`); mask, global vectors
        and labels (small) in memory on the CPU. Batches are gathered on the CPU; the trainer moves them."""
        device = torch.device(device)
        tokens, mask, globals_ = read_split_arrays(split, pin=False, tokens=False)
        return cls(
            tokens=MappedTokens(split, pin=device.type == "cuda"),
            mask=mask,
            globals_=globals_,
            labels=torch.from_numpy(split.labels.astype(np.float32)),
            lengths=torch.from_numpy(split.lengths),
            meta=split.meta,
            residency=reason,
        )

    @classmethod
    def from_split(cls, split: BankSplit, device="cpu", dtype=None) -> "LoadedSplit":
        """Read every chunk of `split` whole into preallocated tensors (see `read_split_arrays`) on `device`."""
        device = torch.device(device)
        tokens, mask, globals_ = read_split_arrays(split, pin=device.type == "cuda")
        to = lambda t, dt=None: t.to(device=device, dtype=dt, non_blocking=True)  # noqa: E731
        return cls(
            tokens=to(tokens, dtype),
            mask=to(mask),
            globals_=None if globals_ is None else to(globals_),
            labels=to(torch.from_numpy(split.labels.astype(np.float32))),
            lengths=to(torch.from_numpy(split.lengths)),
            meta=split.meta,
        )

    def pooled(self, kind: str, batch_size: int = 256) -> torch.Tensor:
        """The pooled input of the global-vector heads for every clip, computed once and kept (float32).

        kind: "global" (G,) the encoder's global vector; "mean" (D,) the mean of valid tokens;
        "freqmean" (F D,) the mean over valid time steps per frequency band, bands concatenated.
        Returns (N, H) on the split's device, equal (to float rounding) to pooling each padded batch
        as `probes.linear` does. The cache belongs to this loaded split: a changed bank is a new
        load and computes its own.
        """
        if kind not in self._pooled:
            self._pooled[kind] = self._compute_pooled(kind, batch_size)
        return self._pooled[kind]

    def _compute_pooled(self, kind: str, batch_size: int) -> torch.Tensor:
        if kind == "global":
            if self.globals is None:
                raise ValueError(f"{self.meta.split} split of {self.meta.encoder}: the bank holds no global vector (global_dim 0)")
            return self.globals.float()
        if kind not in ("mean", "freqmean"):
            raise ValueError(f"unknown pooled input {kind!r}: expected 'global', 'mean' or 'freqmean'")
        parts = []
        for start in range(0, len(self), batch_size):
            tokens = self.tokens[start : start + batch_size].float()
            weights = self.mask[start : start + batch_size].to(tokens.dtype).unsqueeze(-1)  # (b, T, F, 1)
            if kind == "mean":
                parts.append((tokens * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1.0))
            else:
                per_band = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (b, F, D)
                parts.append(per_band.reshape(len(per_band), -1))
        if not parts:
            width = self.tokens.shape[3] * (1 if kind == "mean" else self.tokens.shape[2])
            return torch.zeros((0, width), device=self.tokens.device)
        return torch.cat(parts)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def batch(self, index: torch.Tensor, dtype: torch.dtype = torch.float32, pooled: tuple[str, ...] | None = None
              ) -> dict[str, torch.Tensor | None]:
        """A padded batch cut to its own longest clip.

        Args:
            pooled: when given (e.g. ("mean",)), the batch carries those pooled inputs (`pooled`) under
                "pooled" {kind: (B, H)} instead of tokens and mask (then None): what heads that read only
                pooled vectors need, without reading and casting the token maps.

        Returns: {"tokens": (B, T, F, D), "mask": (B, T, F), "global": (B, G) or None, "labels": (B, C)}
        """
        if pooled is not None:
            return {
                "tokens": None,
                "mask": None,
                "global": None if self.globals is None else self.globals[index],
                "labels": self.labels[index],
                "pooled": {kind: self.pooled(kind)[index] for kind in pooled},
            }
        longest = int(self.lengths[index].max())
        return {
            "tokens": self.tokens[index, :longest].to(dtype),
            "mask": self.mask[index, :longest],
            "global": None if self.globals is None else self.globals[index],
            "labels": self.labels[index],
        }


def _npy_data_offset(handle, path: Path, shape: tuple, dtype: np.dtype) -> int:
    """Byte offset of the array data in an open .npy file, after checking its header matches `shape`/`dtype`."""
    version = np.lib.format.read_magic(handle)
    header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    stored_shape, fortran_order, stored_dtype = header(handle)
    if tuple(stored_shape) != tuple(shape) or stored_dtype != dtype or (fortran_order and len(shape) > 1):
        raise BankError(f"{path}: holds {stored_dtype} {tuple(stored_shape)} (fortran_order={fortran_order}), its commit record "
                        f"says {dtype} {tuple(shape)}; {RERUN}")
    return handle.tell()


def _read_npy_into(path: Path, destination: np.ndarray) -> None:
    """Fill the C-contiguous `destination` with the data of the .npy file at `path` (same shape and dtype), in
    large reads straight into its memory: no intermediate copy, no per-row Python work."""
    with open(path, "rb", buffering=0) as handle:
        handle.seek(_npy_data_offset(handle, path, destination.shape, destination.dtype))
        view = memoryview(destination.reshape(-1).view(np.uint8))
        filled = 0
        while filled < len(view):
            count = handle.readinto(view[filled : filled + (256 << 20)])
            if not count:
                raise BankError(f"{path}: ended after {filled} of {len(view)} data bytes (truncated); {RERUN}")
            filled += count


# Buffers of at least this size are allocated on huge pages (`_empty`); smaller ones gain nothing.
HUGE_PAGE_MIN_BYTES = 8 << 20


def _empty(shape: tuple, dtype: np.dtype, pin: bool, zero: bool) -> torch.Tensor:
    """An uninitialised CPU tensor (zeros where `zero`) for `read_split_arrays` to read files into.

    Large unpinned buffers come from a private anonymous mapping advised to use transparent huge pages:
    the first write into fresh memory faults every page in, and with 4 KiB pages those faults, not the
    read, set the pace (measured on a 200 MB split: 1.2 GB/s into torch.empty, 3.4-3.9 GB/s into huge
    pages, against 5-8 GB/s for reading the same files into a reused buffer; `load()` as a whole 3.0
    GB/s). A fresh mapping is zeroed by the kernel, so `zero` costs nothing there.
    """
    torch_dtype = torch.from_numpy(np.empty(0, dtype)).dtype
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if not pin and nbytes >= HUGE_PAGE_MIN_BYTES and hasattr(mmap, "MADV_HUGEPAGE"):
        memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            memory.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # kernel without transparent huge pages: ordinary pages, still correct
            pass
        # the tensor keeps the array alive, the array the mapping: freed with the last of them
        return torch.from_numpy(np.frombuffer(memory, dtype=dtype).reshape(shape))
    tensor = torch.empty(shape, dtype=torch_dtype, pin_memory=pin)
    return tensor.zero_() if zero else tensor


def read_split_arrays(split: BankSplit, pin: bool = False, tokens: bool = True) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Every clip of a split in preallocated CPU tensors, padded to the longest clip, in `split.clip_ids` order.

    Each chunk file is read whole: straight into its rows of the destination when its clips are the
    next rows in order and all as long as the longest (what extraction writes), else into one buffer
    scattered to its rows. Speed: that of reading the files (see benchmarks/train.py).

    Args:
        pin: allocate page-locked memory (fast, asynchronous copies to a GPU).
        tokens: False reads only the mask and global vectors (a streamed split); tokens is then None.

    Returns:
        tokens (N, T_max, F, D) in the stored dtype, mask (N, T_max, F) bool, globals (N, G) float32 or None.
    """
    read_tokens = tokens
    count = len(split)
    t_max = int(split.lengths.max()) if count else 0
    freq, dim = split.meta.freq_dim or 1, split.meta.token_dim
    ragged = bool(count) and bool((split.lengths != t_max).any())
    token_dtype = np.dtype(split.meta.dtype)
    tokens = _empty((count, t_max, freq, dim) if read_tokens else (0, t_max, freq, dim), token_dtype, pin, zero=ragged)
    mask = _empty((count, t_max, freq), np.dtype(bool), pin, zero=ragged)
    globals_ = _empty((count, split.meta.global_dim), np.dtype(np.float32), pin, zero=False) if split.meta.global_dim else None
    token_rows, mask_rows = tokens.numpy(), mask.numpy()
    global_rows = None if globals_ is None else globals_.numpy()
    row_of = {clip_id: row for row, clip_id in enumerate(split.clip_ids)}
    for chunk in split.chunks:
        # -1: a committed clip the split does not list (read, then left out)
        rows = np.array([row_of.get(clip_id, -1) for clip_id in chunk.clip_ids], dtype=np.int64)
        lengths = np.asarray(chunk.lengths, dtype=np.int64)
        stem = _stem(split.dir, chunk.name)
        in_order = bool(len(rows)) and rows[0] >= 0 and bool((rows == np.arange(rows[0], rows[0] + len(rows))).all())
        if not read_tokens:
            chunk_mask = np.empty((int(lengths.sum()), freq), bool)
            _read_npy_into(stem.with_suffix(".mask.npy"), chunk_mask)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            for row, start, length in zip(rows, starts, lengths):
                if row >= 0:
                    mask_rows[row, :length] = chunk_mask[start : start + length]
        elif in_order and bool((lengths == t_max).all()):
            first, last = int(rows[0]), int(rows[0]) + len(rows)
            # (n, T, F, D) rows are the file's (n T, F, D) array: same bytes, read in place
            _read_npy_into(stem.with_suffix(".tokens.npy"), token_rows[first:last].reshape(-1, freq, dim))
            _read_npy_into(stem.with_suffix(".mask.npy"), mask_rows[first:last].reshape(-1, freq))
        else:
            total = int(lengths.sum())
            chunk_tokens = np.empty((total, freq, dim), token_dtype)
            chunk_mask = np.empty((total, freq), bool)
            _read_npy_into(stem.with_suffix(".tokens.npy"), chunk_tokens)
            _read_npy_into(stem.with_suffix(".mask.npy"), chunk_mask)
            listed = rows >= 0
            if bool((lengths == t_max).all()):
                token_rows[rows[listed]] = chunk_tokens.reshape(len(rows), t_max, freq, dim)[listed]
                mask_rows[rows[listed]] = chunk_mask.reshape(len(rows), t_max, freq)[listed]
            else:  # ragged clips: one slice copy each, from memory
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
                for row, start, length in zip(rows[listed], starts[listed], lengths[listed]):
                    token_rows[row, :length] = chunk_tokens[start : start + length]
                    mask_rows[row, :length] = chunk_mask[start : start + length]
        if global_rows is not None:
            chunk_globals = np.empty((len(rows), split.meta.global_dim), np.float32)
            _read_npy_into(stem.with_suffix(".global.npy"), chunk_globals)
            global_rows[rows[rows >= 0]] = chunk_globals[rows >= 0]
    return (tokens if read_tokens else None), mask, globals_


# bank.json keys that must match for an extraction to add to (or resume) an existing bank.
IDENTITY_KEYS = ("encoder", "encoder_config_hash", "dataset", "classes")


class Bank:
    """A bank root: `bank.json` plus one folder per split.

    bank.json holds the identity shared by the splits (`IDENTITY_KEYS`, task type, storage dtype,
    library version, the dataset's `source`) and `splits`: every split an extraction was asked for,
    so a bank whose extraction stopped before reaching a split is not mistaken for a complete one.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / "bank.json").exists():
            hint = " (it looks like a split folder; pass its parent)" if (self.root / "meta.json").exists() else ""
            raise BankError(f"{self.root}: not a bank (no bank.json){hint}; build one with `patchprobe extract`")
        self.info = _read_json_file(
            self.root / "bank.json",
            "delete it and rerun the same `patchprobe extract` command: it writes a new one and keeps the token maps "
            "(each split checks them against the encoder and data)",
        )
        if not isinstance(self.info, dict):
            raise BankError(f"{self.root / 'bank.json'}: not a JSON object; delete it and rerun the same `patchprobe extract` command")

    @classmethod
    def create_or_check(cls, root: str | Path, header: dict, splits: list[str]) -> "Bank":
        """Open the bank at `root` for an extraction of `splits` described by `header`, creating it if needed.

        A new bank gets `bank.json` = header + {"splits": splits}. An existing one must match the header
        on `IDENTITY_KEYS` and on "dtype" where recorded (else BankError: a bank holds one encoder
        config, one dataset and one storage dtype); the requested splits are added to its `splits`.
        Shards starting at once do this one after another (under the bank's mutex).
        """
        root = Path(root)
        with _bank_mutex(root):
            return cls._create_or_check(root, header, splits)

    @classmethod
    def _create_or_check(cls, root: Path, header: dict, splits: list[str]) -> "Bank":
        path = root / "bank.json"
        if path.exists():
            bank = cls(root)
            for key in IDENTITY_KEYS:
                if bank.info.get(key) != header.get(key):
                    raise BankError(
                        f"{root}: bank.json has {key}={bank.info.get(key)!r} but this extraction has {header.get(key)!r}; "
                        "a bank holds one encoder config and one dataset. Use a new --bank folder."
                    )
            stored_dtype = bank.info.get("dtype")
            if stored_dtype is not None and "dtype" in header and stored_dtype != header["dtype"]:
                raise BankError(
                    f"{root}: this bank stores tokens as {stored_dtype}; you asked for {header['dtype']}. Rerun with "
                    f"--dtype {stored_dtype}, or use a new --bank folder for {header['dtype']}."
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
        clips skipped as bad, and every committed file is there with its committed size. Cheap
        (metadata, commit records and file sizes; no token data, no checksums: `verify` does
        those); any unreadable or inconsistent file counts as incomplete.
        """
        try:
            expected = self.expected_splits
            return bool(expected) and all(name in self.splits and not BankSplit(self.root / name).problems for name in expected)
        except (BankError, OSError, ValueError, KeyError, TypeError):
            return False

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "valid", "test") if (self.root / s / "meta.json").exists()]

    def split(self, name: str, allow_incomplete: bool = False) -> BankSplit:
        if name not in self.splits:
            raise BankError(f"{self.root}: no {name!r} split (has: {', '.join(self.splits) or 'none'})")
        return BankSplit(self.root / name, allow_incomplete=allow_incomplete)

    def verify(self, full: bool = True) -> dict[str, list[str]]:
        """Every problem of every split: completeness, missing clips, and (all chunks, `full`) checksums and values.

        Returns: split name -> problems (empty lists: the split is sound); an expected split that is
        absent is reported under its name.
        """
        out = {}
        for name in dict.fromkeys(self.expected_splits + self.splits):
            if name not in self.splits:
                out[name] = [f"{self.root / name}: not extracted yet; {RERUN}"]
                continue
            try:
                split = BankSplit(self.root / name, allow_incomplete=True)
            except BankError as exc:
                out[name] = [str(exc)]
                continue
            out[name] = split.problems + split.verify(full=full)
        return out

    def describe(self) -> dict:
        """Shapes, sizes on disk, metadata and problems, as `patchprobe info` prints them (never raises for a split's problems)."""
        out = {"path": str(self.root), **self.info, "splits": {}, "problems": {}}
        for name in dict.fromkeys(self.expected_splits + self.splits):
            if name not in self.splits:
                out["problems"][name] = [f"{self.root / name}: not extracted yet; {RERUN}"]
                continue
            try:
                split = BankSplit(self.root / name, allow_incomplete=True)
            except BankError as exc:
                out["problems"][name] = [str(exc)]
                continue
            size = split.size_on_disk()
            meta = split.meta
            positives = split.labels.sum(axis=0) if len(split) else np.zeros(len(meta.classes))
            out["splits"][name] = {
                "clips": len(split),
                "of": len(meta.clip_ids),
                "complete": meta.complete and not split.problems,
                "missing": len(split.missing),
                "token_grid": f"T x {meta.freq_dim} x {meta.token_dim}",
                "time_steps": {"min": int(split.lengths.min()), "max": int(split.lengths.max())} if len(split) else None,
                "global_dim": meta.global_dim,
                "dtype": meta.dtype,
                "layer": meta.layer,
                "sample_rate": meta.sample_rate,
                "bytes": size,
                "bytes_per_clip": size // max(len(split), 1),
                "skipped": len(meta.skipped),
                "skipped_clips": dict(list(meta.skipped.items())[:5]),
                "positives": {c: int(v) for c, v in zip(meta.classes, positives)},
                "created": meta.created,
            }
            if split.problems:
                out["problems"][name] = split.problems
        return out
