"""Check a dataset before a long job: every problem found, counted, with its first examples."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .._progress import ProgressBar
from ..errors import AudioError, DatasetError
from .base import SPLITS, AudioDataset, Clip

EXAMPLES = 5


class DataHygieneWarning(UserWarning):
    """The data can be used but a result on it may mislead (the same audio in two splits, classes without training clips)."""


SAME_AUDIO = "same audio in two splits"
CLASS_NOT_IN_TRAIN = "class without training clips"


@dataclass
class ValidationReport:
    """Problems by kind ("missing file", "unreadable audio", "label outside the class list",
    "no label", "empty split", "duplicate id"): clip id (or split) -> detail. Warnings by kind
    (SAME_AUDIO, CLASS_NOT_IN_TRAIN) the same way: they do not make the report fail, `--strict` does."""

    dataset: str
    checked: int = 0
    problems: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, kind: str, item: str, detail: str) -> None:
        self.problems.setdefault(kind, {})[item] = detail

    def warn(self, kind: str, item: str, detail: str) -> None:
        self.warnings.setdefault(kind, {})[item] = detail

    def warning_summary(self) -> str:
        """The warnings, counted, with their first examples ("" when there is none)."""
        if not self.warnings:
            return ""
        return "\n".join([f"{self.dataset}: data hygiene warnings:", *_listed(self.warnings)])

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_clips(self) -> dict[str, str]:
        """Clip id -> "kind: detail" for every problem tied to one clip (what --skip-bad leaves out)."""
        return {item: f"{kind}: {detail}" for kind, items in self.problems.items() if kind not in ("empty split",)
                for item, detail in items.items()}

    def summary(self) -> str:
        if self.ok:
            lines = [f"{self.dataset}: {self.checked} clips checked, no problem found"]
        else:
            lines = [f"{self.dataset}: {self.checked} clips checked; problems:", *_listed(self.problems)]
        if self.warnings:
            lines += ["warnings:", *_listed(self.warnings)]
        return "\n".join(lines)


def _listed(found: dict[str, dict[str, str]]) -> list[str]:
    lines = []
    for kind, items in found.items():
        lines.append(f"  {kind}: {len(items)}")
        lines += [f"    {item}: {detail}" for item, detail in list(items.items())[:EXAMPLES]]
        if len(items) > EXAMPLES:
            lines.append(f"    ... and {len(items) - EXAMPLES} more")
    return lines


def validate_dataset(dataset: AudioDataset, splits: list[str] | None = None, progress: bool = False,
                     hygiene: bool = True) -> ValidationReport:
    """Find every problem of `dataset` (all splits, or `splits`) without stopping at the first.

    Checks: an empty train split (or an empty requested split), ids listed twice, labels the class list
    cannot hold, clips with no label in a multi-class set, missing audio files, unreadable audio (header
    read, not a full decode; WAV/AIFF files shorter than their header says). A dataset without valid or
    test clips is allowed (extract only train).

    With `hygiene`, over all splits whatever `splits` asks (a bank's splits are often extracted one at a
    time): the same audio in two splits (one resolved file, or files with identical bytes; datasets of
    files only) and classes that have valid or test clips but no training clip, as warnings.
    """
    report = ValidationReport(dataset.name)
    wanted = splits or list(SPLITS)
    seen: dict[str, str] = {}
    for split in wanted:
        ids = dataset.clip_ids(split)
        if not ids and (split == "train" or splits is not None):
            report.add("empty split", split, "no clips")
        bar = ProgressBar(progress and len(ids) > 0, f"checking {split}", total=len(ids))
        for clip_id in ids:
            report.checked += 1
            if clip_id in seen:
                report.add("duplicate id", clip_id, f"listed in {seen[clip_id]} and {split}")
            seen.setdefault(clip_id, split)
            try:
                labels = dataset.labels_of(clip_id)
                if not dataset.multilabel and float(np.sum(labels)) != 1.0:
                    report.add("no label" if not np.any(labels) else "several labels", clip_id, "multi-class clips need exactly one label")
            except (KeyError, IndexError, ValueError) as exc:
                report.add("label outside the class list", clip_id, str(exc))
            try:
                dataset.check_audio(clip_id)
            except AudioError as exc:
                kind = "missing file" if "not found" in exc.problem else "unreadable audio"
                report.add(kind, clip_id, exc.problem)
            except Exception as exc:  # soundfile's errors for corrupt or unknown formats
                report.add("unreadable audio", clip_id, f"{type(exc).__name__}: {exc}")
            bar.advance(1)
        bar.close()
    if hygiene:
        _check_class_coverage(dataset, report)
        _check_shared_audio(dataset, report, progress)
    return report


def _check_class_coverage(dataset: AudioDataset, report: ValidationReport) -> None:
    """Warn about classes that valid or test clips carry but no training clip does (nothing to learn them from)."""
    if not dataset.clip_ids("train"):
        return
    counts = {split: np.zeros(len(dataset.classes), dtype=np.int64) for split in SPLITS}
    for split in SPLITS:
        for clip_id in dataset.clip_ids(split):
            try:
                counts[split] += np.asarray(dataset.labels_of(clip_id)) > 0
            except (KeyError, IndexError, ValueError):
                continue  # reported as "label outside the class list" where the split is validated
    for index, name in enumerate(dataset.classes):
        if counts["train"][index] == 0 and (counts["valid"][index] or counts["test"][index]):
            held = ", ".join(f"{counts[s][index]} {s}" for s in ("valid", "test") if counts[s][index])
            report.warn(CLASS_NOT_IN_TRAIN, name, f"{held} clip(s), no train clip: the probe cannot learn it")


HEAD_BYTES = 1 << 16


def _check_shared_audio(dataset: AudioDataset, report: ValidationReport, progress: bool) -> None:
    """Warn about clips of two splits that are one file (same resolved path) or files with the same bytes.

    Cheap on large datasets: only files whose size occurs in two splits are read, first their first 64 KiB,
    and in full only where those match too.
    """
    path_of = getattr(dataset, "path_of", None)
    if path_of is None:
        return  # audio not in files of its own (hub datasets): nothing cheap to compare
    clips: list[tuple[str, str, Path, int]] = []  # (split, clip id, resolved path, size)
    for split in SPLITS:
        for clip_id in dataset.clip_ids(split):
            try:
                path = Path(path_of(clip_id)).resolve()
                size = os.stat(path).st_size
            except (OSError, ValueError, KeyError):
                continue  # a missing or unreadable file is reported where its split is validated
            clips.append((split, clip_id, path, size))
    first_of: dict[object, tuple[str, str]] = {}  # key -> (split, clip id) seen first

    def note(key: object, split: str, clip_id: str, how: str) -> bool:
        seen = first_of.setdefault(key, (split, clip_id))
        if seen[0] != split:
            report.warn(SAME_AUDIO, f"{clip_id} ({split})", f"{how} {seen[1]} ({seen[0]})")
            return True
        return False

    distinct: dict[Path, tuple[str, str, int]] = {}
    for split, clip_id, path, size in clips:
        if not note(("path", path), split, clip_id, "the same file as"):
            distinct.setdefault(path, (split, clip_id, size))
    by_size: dict[int, list[tuple[str, str, Path]]] = {}
    for path, (split, clip_id, size) in distinct.items():
        by_size.setdefault(size, []).append((split, clip_id, path))
    candidates = [group for group in by_size.values() if len({split for split, _, _ in group}) > 1]
    bar = ProgressBar(progress and bool(candidates), "comparing audio across splits", total=sum(map(len, candidates)))
    for group in candidates:
        heads: dict[bytes, list[tuple[str, str, Path]]] = {}
        for split, clip_id, path in group:
            try:
                heads.setdefault(_digest(path, HEAD_BYTES), []).append((split, clip_id, path))
            except OSError:
                pass
            bar.advance(1)
        for same_head in heads.values():
            if len({split for split, _, _ in same_head}) < 2:
                continue
            for split, clip_id, path in same_head:
                try:
                    note(("bytes", _digest(path)), split, clip_id, "identical bytes to")
                except OSError:
                    pass
    bar.close()


def _digest(path: Path, limit: int | None = None) -> bytes:
    """BLAKE2b of a file's bytes (its first `limit` bytes when given)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        remaining = limit
        while remaining is None or remaining > 0:
            block = handle.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not block:
                break
            digest.update(block)
            if remaining is not None:
                remaining -= len(block)
    return digest.digest()


class FilteredDataset(AudioDataset):
    """`base` without the clips in `dropped` (id -> reason); the reasons go into the bank's metadata."""

    def __init__(self, base: AudioDataset, dropped: dict[str, str]) -> None:
        self.base, self.dropped = base, dict(dropped)
        self.name = base.name

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    @property
    def multilabel(self) -> bool:
        return self.base.multilabel

    @property
    def metrics(self) -> list[str]:
        return self.base.metrics

    def clip_ids(self, split: str) -> list[str]:
        return [clip_id for clip_id in self.base.clip_ids(split) if clip_id not in self.dropped]

    def labels_of(self, clip_id: str) -> np.ndarray:
        return self.base.labels_of(clip_id)

    def audio_stamp(self, clip_id: str) -> str | None:
        return self.base.audio_stamp(clip_id)

    def check_audio(self, clip_id: str) -> None:
        self.base.check_audio(clip_id)

    def load(self, clip_id: str, target_sr: int | None = None) -> Clip:
        return self.base.load(clip_id, target_sr)

    def source(self) -> dict:
        return {**self.base.source(), "skipped_at_validation": self.dropped}


def checked(dataset: AudioDataset, skip_bad: bool = False, splits: list[str] | None = None, progress: bool = False,
            strict: bool = False, warn: Callable[[str], None] | None = None) -> AudioDataset:
    """Validate `dataset` (all splits, or `splits`); raise with the full report, or (skip_bad) return it
    without the bad clips.

    Data hygiene warnings (the same audio in two splits, classes without training clips) go to `warn`
    (default: a DataHygieneWarning); with `strict` they are errors.
    """
    report = validate_dataset(dataset, splits=splits, progress=progress)
    if report.warnings and strict:
        raise DatasetError(f"{report.warning_summary() if report.ok else report.summary()}\n--strict makes these warnings errors: move or remove the clips "
                           "named above (a clip must not be in two splits; every class needs training clips), or drop --strict")
    if report.warnings:
        message = report.warning_summary() + "\n(results on this data may mislead; --strict makes this an error)"
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, DataHygieneWarning, stacklevel=2)
    if report.ok:
        return dataset
    if not skip_bad or "empty split" in report.problems:
        advice = "fix them, or pass --skip-bad to leave those clips out (they are recorded in the bank)"
        raise DatasetError(f"{report.summary()}\n{advice if 'empty split' not in report.problems else 'a split is empty'}")
    return FilteredDataset(dataset, report.bad_clips())
