"""The dataset interface every source of labelled audio implements, and the dataset registry."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import stable_hash
from ..audio import check_audio_file, load_audio
from ..registry import Registry

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Clip:
    """One decoded clip.

    Attributes:
        clip_id: unique id within the dataset.
        waveform: (N,) float32 mono samples.
        sample_rate: Hz.
        labels: (C,) float32 multi-hot (multi-label) or one-hot (multi-class) vector.
        split: "train", "valid" or "test".
    """

    clip_id: str
    waveform: np.ndarray
    sample_rate: int
    labels: np.ndarray
    split: str


class AudioDataset(ABC):
    """Labelled audio clips grouped in splits, with a fixed, ordered class list.

    Subclasses implement `clip_ids`, `labels_of` and `load`; everything else derives from them.
    """

    name: str = "dataset"

    @property
    @abstractmethod
    def classes(self) -> list[str]:
        """Ordered class names; column c of every label vector is classes[c]."""

    @property
    @abstractmethod
    def multilabel(self) -> bool:
        """True for multi-label (sigmoid, mAP); False for multi-class (softmax, accuracy)."""

    @abstractmethod
    def clip_ids(self, split: str) -> list[str]:
        """Clip ids of one split, in a stable order."""

    @abstractmethod
    def labels_of(self, clip_id: str) -> np.ndarray:
        """(C,) float32 label vector of one clip, without decoding its audio."""

    @abstractmethod
    def load(self, clip_id: str, target_sr: int | None = None) -> Clip:
        """Decode one clip, mixed to mono and resampled to `target_sr` (None keeps the native rate)."""

    def check_audio(self, clip_id: str) -> None:
        """Raise if a clip's audio is missing or unreadable; subclasses read only a header where they can."""
        self.load(clip_id)

    def audio_stamp(self, clip_id: str) -> str | None:
        """A short string that changes whenever the clip's audio changes; None when the dataset cannot tell.

        Contract (the bank relies on it): `extract_bank` stores each clip's stamp beside its tokens and,
        on every later run, compares it with a fresh one by string equality; any difference means the
        tokens are stale (the run names the changed clips and refuses, or re-extracts them with
        `refresh_changed`). So a stamp must
        - change when the decoded audio can change (other file, other bytes, other row of a table);
        - stay equal while the audio is the same, across processes and runs (no object ids, no
          wall-clock time, no absolute paths that move with the data if avoidable);
        - be cheap: it is taken for every clip of a split each time `extract` runs (tens of
          microseconds to a few milliseconds per clip; read at most a few MB).
        Keep it under about 100 characters (one is stored per clip). None opts a clip out of the check.
        File-backed datasets get `file_stamp(path_of(clip_id))`; others return None until they say
        what their audio is (e.g. a hub row's file hash or its audio bytes' hash).
        """
        return None

    @property
    def splits(self) -> list[str]:
        return [split for split in SPLITS if self.clip_ids(split)]

    def label_matrix(self, split: str) -> np.ndarray:
        """(N, C) float32 labels of a split, rows in `clip_ids(split)` order."""
        ids = self.clip_ids(split)
        if not ids:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.stack([self.labels_of(clip_id) for clip_id in ids]).astype(np.float32)

    def fingerprint(self, split: str | None = None) -> str:
        """Hash of the class list, task type, and the ids and labels of one split (or all splits)."""
        splits = [split] if split else list(SPLITS)
        content = {
            "classes": self.classes,
            "multilabel": self.multilabel,
            "splits": {s: [self.clip_ids(s), self.label_matrix(s).astype(np.uint8).tolist()] for s in splits},
        }
        return stable_hash(content, length=16)

    @property
    def metrics(self) -> list[str]:
        """Metric names (keys of `patchprobe.train.METRICS`) every run on this dataset reports."""
        return ["map", "auroc"] if self.multilabel else ["accuracy", "map", "auroc"]

    def source(self) -> dict:
        """How to reopen this dataset's audio later (e.g. {"manifest": "/abs/path.csv"}); {} when unknown.

        Saved in bank.json so tools such as `patchprobe analyze` can draw a clip's spectrogram.
        """
        return {}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "multilabel": self.multilabel,
            "sizes": {split: len(self.clip_ids(split)) for split in SPLITS},
        }


class ListedDataset(AudioDataset, ABC):
    """A dataset whose clips are all known up front: an ordered class list, ids per split, label names per clip.

    Manifests, class folders and hub datasets store their clips this way; a subclass calls `_set_clips`
    once and implements `load`. `split_error` is the error raised for an unknown split name.
    """

    split_error: type[Exception] = ValueError

    def _set_clips(self, classes: list[str], multilabel: bool, ids: dict[str, list[str]], labels: dict[str, tuple[str, ...] | list[str]]) -> None:
        self._classes = list(classes)
        self._index = {label: i for i, label in enumerate(self._classes)}
        self._multilabel = bool(multilabel)
        self._ids = {split: list(ids.get(split, [])) for split in SPLITS}
        self._split_of = {clip_id: split for split, listed in self._ids.items() for clip_id in listed}
        self._labels = labels

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def multilabel(self) -> bool:
        return self._multilabel

    def clip_ids(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise self.split_error(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return list(self._ids[split])

    def labels_of(self, clip_id: str) -> np.ndarray:
        vector = np.zeros(len(self._classes), dtype=np.float32)
        for label in self._labels[clip_id]:
            vector[self._index[label]] = 1.0
        return vector


class FileDataset(ListedDataset, ABC):
    """A listed dataset whose clips are audio files: `path_of(clip_id)` is all a subclass adds."""

    @abstractmethod
    def path_of(self, clip_id: str) -> Path:
        """The clip's audio file."""

    def check_audio(self, clip_id: str) -> None:
        check_audio_file(self.path_of(clip_id))

    def audio_stamp(self, clip_id: str) -> str | None:
        """`file_stamp` of the clip's file (see `AudioDataset.audio_stamp`)."""
        return file_stamp(self.path_of(clip_id))

    def load(self, clip_id: str, target_sr: int | None = None) -> Clip:
        waveform, sr = load_audio(self.path_of(clip_id), target_sr)
        return Clip(clip_id, waveform, sr, self.labels_of(clip_id), self._split_of[clip_id])


# Files up to this size are stamped by their content; larger ones by size and modification time.
CONTENT_STAMP_MAX_BYTES = 8 << 20


def file_stamp(path: str | Path) -> str | None:
    """What an audio file is, as a short string: "b2:SIZE:HASH" or "mt:SIZE:MTIME_NS".

    Files up to `CONTENT_STAMP_MAX_BYTES` (8 MB: a minute of 16-bit stereo at 44.1 kHz, more than
    most clips) are stamped by a BLAKE2b hash of their bytes, so a copy, a `touch` or a checkout
    that rewrites the same audio keeps its stamp, and a replacement with the same size and time is
    still caught. Hashing costs about 1 ms per MB. Larger files (long recordings) are stamped by
    size and modification time in nanoseconds: reading them on every `extract` run would cost as
    much as decoding them, and a rewritten file almost always changes one of the two.
    A missing or unreadable file gets None (cannot tell; validation and decoding report it properly).
    """
    try:
        stat = os.stat(path)
        if stat.st_size > CONTENT_STAMP_MAX_BYTES:
            return f"mt:{stat.st_size}:{stat.st_mtime_ns}"
        with open(path, "rb") as handle:
            return f"b2:{stat.st_size}:{hashlib.blake2b(handle.read(), digest_size=12).hexdigest()}"
    except OSError:
        return None


DATASETS: Registry[AudioDataset] = Registry("dataset")
