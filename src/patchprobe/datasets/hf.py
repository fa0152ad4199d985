"""Benchmark datasets as clip records over their sources: Parquet/`save_to_disk` tables read through
Hugging Face `datasets` (optional extra `hf`), or plain audio files.

Audio is never decoded by `datasets` (that would need torchcodec): the audio column is read as its
stored bytes or path and decoded with soundfile, then resampled with soxr like every other clip.
Clips are records (a source row or an audio file, an optional time window, label names), so one
recording can give several clips (BirdSet event windows, Speech Commands' sliced noise files).
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.decode import check_declared_length, prepare_waveform
from ..errors import AudioError, DatasetError
from .base import SPLITS, Clip, ListedDataset, file_stamp


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a benchmark dataset, optionally the window [start, end) seconds of its audio.

    The audio is `path` (an audio file) when set, else the audio column of `row` of `source_split`.
    """

    clip_id: str
    split: str
    source_split: str
    row: int
    labels: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    path: str | None = None

    def moved_to(self, split: str) -> "ClipRecord":
        return dataclasses.replace(self, split=split)


@dataclass
class Built:
    """What a benchmark builder makes of its source.

    Attributes:
        classes: the ordered class list.
        records: every clip with its split.
        audio_of: (source split, row) -> audio entry for records without a path (None if all have one).
        root: folder relative audio paths resolve against.
        source_rows: rows (or files) per split of the source as published, before our protocol
            (compared with the dataset card's counts by `patchprobe datasets check`).
        extra: provenance saved in bank.json beside the options (e.g. the k-shot draw's size).
    """

    classes: list[str]
    records: list[ClipRecord]
    audio_of: object = None
    root: Path | None = None
    source_rows: dict[str, int] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)


def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError("benchmark datasets are read with Hugging Face `datasets`: pip install 'patchprobe[hf]'") from exc
    return datasets


def open_source(key: str, hub_id: str, config: str | None, data_dir: str | Path | None,
                layout: dict[str, str] | None = None, fetch_hint: str = "") -> dict:
    """The source's splits as `datasets.Dataset`s, with every Audio column set to decode=False.

    Args:
        key: our dataset key (for messages).
        hub_id, config: the hub repository and configuration (used when there is no `data_dir`).
        data_dir: a local copy instead of the hub: a `save_to_disk` folder, or the repository's
            Parquet files.
        layout: split name -> glob of its Parquet files relative to `data_dir` (the repository's own
            layout, as its card's config declares it); without one, files named `<split>-*.parquet`
            are grouped by that prefix (sub-folders searched).
        fetch_hint: the command that fetches a local copy, for messages.
    Raises:
        DatasetError naming what to download and where to put it.
    """
    datasets = _import_datasets()
    fetch = fetch_hint or (f"`hf download {hub_id} --repo-type dataset --local-dir DIR` (the Parquet files"
                           f"{f' of config {config}' if config else ''}), then pass --data-dir DIR")
    if data_dir is not None:
        root = Path(data_dir)
        if not root.exists():
            raise DatasetError(f"{key}: --data-dir {root} does not exist. Put a local copy there: {fetch}; "
                               "or a folder written by datasets' save_to_disk")
        if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
            loaded = datasets.load_from_disk(str(root))
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        elif layout:
            splits = _load_layout(datasets, key, root, layout, fetch)
        else:
            splits = _load_parquet(datasets, key, root, fetch)
    else:
        try:
            loaded = datasets.load_dataset(hub_id, config) if config else datasets.load_dataset(hub_id)
        except Exception as exc:  # offline, missing repo, script-based repo: one piece of advice
            raise DatasetError(f"{key}: could not load {hub_id}{f' ({config})' if config else ''} from the hub "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                               f"Without internet, fetch it elsewhere with {fetch}") from exc
        splits = dict(loaded)
    return {name: _without_decoding(datasets, split) for name, split in splits.items()}


def _load_layout(datasets, key: str, root: Path, layout: dict[str, str], fetch: str) -> dict:
    found = {split: sorted(str(f) for f in root.glob(pattern)) for split, pattern in layout.items()}
    missing = [f"{split} ({layout[split]})" for split, files in found.items() if not files]
    if missing:
        present = sorted(str(f.relative_to(root)) for f in root.rglob("*.parquet"))[:8]
        raise DatasetError(f"{key}: under {root} no Parquet files for split(s) {', '.join(missing)}; found "
                           f"{present or 'no Parquet files'}. Get them with {fetch}")
    return dict(datasets.load_dataset("parquet", data_files=found))


def _load_parquet(datasets, key: str, root: Path, fetch: str) -> dict:
    by_split: dict[str, list[str]] = {}
    for file in sorted(root.rglob("*.parquet")):
        match = re.match(r"([A-Za-z_]+?)(?:[-.]\d|-|$)", file.stem)
        if match:
            by_split.setdefault(match.group(1), []).append(str(file))
    if not by_split:
        raise DatasetError(f"{key}: no Parquet files named <split>-*.parquet and no save_to_disk folder under {root}. "
                           f"Get them with {fetch}")
    return dict(datasets.load_dataset("parquet", data_files=by_split))


def describe_sources(sources: dict) -> str:
    """What a source holds, for error messages: each split with its rows and columns (with types)."""
    parts = []
    for name, split in sources.items():
        columns = ", ".join(f"{column}: {_type_name(feature)}" for column, feature in split.features.items())
        parts.append(f"{name} ({len(split)} rows; {columns})")
    return "; ".join(parts) or "no splits"


def _type_name(feature) -> str:
    kind = type(feature).__name__
    if kind == "Value":
        return feature.dtype
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:
        inner, kind = feature[0], "List"
    return f"{kind}({_type_name(inner)})" if inner is not None else kind


def _without_decoding(datasets, split):
    for column, feature in split.features.items():
        if isinstance(feature, datasets.Audio):
            split = split.cast_column(column, datasets.Audio(decode=False))
    return split


def audio_column(split) -> str:
    """The name of the split's audio column (an Audio feature, or `audio`)."""
    datasets = _import_datasets()
    for column, feature in split.features.items():
        if isinstance(feature, datasets.Audio):
            return column
    if "audio" in split.column_names:
        return "audio"
    raise DatasetError(f"no audio column among {split.column_names}")


def label_names(split, column: str) -> list[list[str]]:
    """Every row's labels as lists of names, whatever the column's type.

    ClassLabel and Sequence(ClassLabel) use the feature's names; strings may join several labels with
    ',' or ';'; plain integers become their decimal strings.
    """
    if column not in split.column_names:
        raise DatasetError(f"label column {column!r} not found; columns: {split.column_names}")
    names = class_names_of(split, column)
    out = []
    for value in split[column]:
        values = value if isinstance(value, (list, tuple)) else [value]
        row: list[str] = []
        for item in values:
            if item is None:
                continue
            if names is not None and isinstance(item, (int, np.integer)):
                row.append(names[int(item)])
            elif isinstance(item, str):
                row.extend(part.strip() for part in re.split(r"[;,]", item) if part.strip())
            else:
                row.append(str(item))
        out.append(list(dict.fromkeys(row)))
    return out


def class_names_of(split, column: str) -> list[str] | None:
    """The ordered names of a ClassLabel (or Sequence(ClassLabel)) column, else None."""
    feature = split.features.get(column)
    for candidate in (feature, getattr(feature, "feature", None), feature[0] if isinstance(feature, list) and feature else None):
        if getattr(candidate, "names", None):
            return list(candidate.names)
    return None


def open_entry(entry, clip_id: str, root: Path | None = None):
    """What soundfile opens for a `{bytes, path}` audio entry (or a path string): its bytes, else its
    file (relative paths resolved against `root`). Raises AudioError when neither is there."""
    if isinstance(entry, str):
        entry = {"bytes": None, "path": entry}
    if entry.get("bytes"):
        return io.BytesIO(entry["bytes"])
    path = Path(entry.get("path") or "")
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise AudioError(clip_id, f"audio file {path} not found (the row stores no bytes)")
    return str(path)


def entry_seconds(entry, clip_id: str, root: Path | None = None) -> float:
    """Duration of an audio entry from its header (no decoding); a WAV/AIFF whose data is shorter than its
    header declares (a truncated file or row) is an AudioError."""
    handle = open_entry(entry, clip_id, root)
    try:
        info = sf.info(handle)
    except Exception as exc:  # libsndfile raises several types; all mean "cannot read the header"
        raise AudioError(clip_id, f"cannot read the audio header ({type(exc).__name__}: {exc})") from exc
    check_declared_length(handle, info.frames, info.samplerate, name=clip_id)
    return info.frames / info.samplerate


def decode_entry(entry, target_sr: int | None, clip_id: str, root: Path | None = None,
                 start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a `{bytes, path}` audio entry (or a path string), optionally only [start, end) seconds."""
    handle = open_entry(entry, clip_id, root)
    try:
        with sf.SoundFile(handle) as sound:
            sr = sound.samplerate
            first = int(round((start or 0.0) * sr))
            if first:
                sound.seek(min(first, sound.frames))
            frames = -1 if end is None else max(0, int(round(end * sr)) - first)
            samples = sound.read(frames, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(clip_id, f"cannot decode audio ({type(exc).__name__}: {exc})") from exc
    if samples.shape[0] == 0:
        raise AudioError(clip_id, "no samples in the requested window" if start or end else "empty audio")
    return prepare_waveform(samples, sr, target_sr, source=clip_id)


class TableAudio:
    """The audio entry of a row of a `datasets` source split, reading only the audio column."""

    def __init__(self, sources: dict) -> None:
        self._sources = sources
        self._audio: dict = {}

    def fingerprint(self, source_split: str) -> str | None:
        """The source split's content fingerprint as `datasets` computes it (changes with its files)."""
        return getattr(self._sources[source_split], "_fingerprint", None)

    def __call__(self, source_split: str, row: int):
        if source_split not in self._audio:
            source = self._sources[source_split]
            self._audio[source_split] = source.select_columns([audio_column(source)])
        return next(iter(self._audio[source_split][row].values()))


class HubDataset(ListedDataset):
    """Clips defined by `ClipRecord`s over the rows or audio files of a benchmark source.

    Args:
        name: dataset key recorded in banks.
        classes: the ordered class list.
        multilabel: task type.
        records: every clip, each with its split.
        audio_of: (source split, row) -> audio entry, for records without a `path`
            (e.g. `TableAudio(sources)`); None when every record is an audio file.
        provenance: how to rebuild this dataset (source id, options, data_dir, sampled ids...),
            saved in bank.json.
        root: folder that relative audio paths are resolved against.
    """

    split_error = DatasetError

    def __init__(self, name: str, classes: list[str], multilabel: bool, records: list[ClipRecord], audio_of,
                 provenance: dict, root: Path | None = None, metrics: list[str] | None = None) -> None:
        self.name = name
        self._metrics = metrics
        self._records = {record.clip_id: record for record in records}
        if len(self._records) != len(records):
            seen: set[str] = set()
            duplicate = next(r.clip_id for r in records if r.clip_id in seen or seen.add(r.clip_id))
            raise DatasetError(f"{name}: clip id {duplicate!r} occurs twice")
        ids = {split: [r.clip_id for r in records if r.split == split] for split in SPLITS}
        self._set_clips(classes, multilabel, ids, {r.clip_id: r.labels for r in records})
        self._audio_of = audio_of
        self._provenance = provenance
        self._root = root

    def record(self, clip_id: str) -> ClipRecord:
        return self._records[clip_id]

    def audio_entry(self, record: ClipRecord):
        if record.path is not None:
            return {"bytes": None, "path": record.path}
        return self._audio_of(record.source_split, record.row)

    def check_audio(self, clip_id: str) -> None:
        entry_seconds(self.audio_entry(self._records[clip_id]), clip_id, self._root)

    def audio_stamp(self, clip_id: str) -> str | None:
        """What the clip's audio is (see `AudioDataset.audio_stamp`): its file's stamp for file records; for
        table rows, the table's content fingerprint (which `datasets` derives from its files) and the row."""
        record = self._records[clip_id]
        if record.path is not None:
            path = Path(record.path)
            return file_stamp(path if path.is_absolute() or self._root is None else self._root / path)
        fingerprint = self._audio_of.fingerprint(record.source_split) if isinstance(self._audio_of, TableAudio) else None
        return f"ds:{fingerprint}:{record.row}" if fingerprint else None

    def load(self, clip_id: str, target_sr: int | None = None) -> Clip:
        record = self._records[clip_id]
        wave, sr = decode_entry(self.audio_entry(record), target_sr, clip_id, self._root, record.start, record.end)
        return Clip(clip_id, wave, sr, self.labels_of(clip_id), record.split)

    @property
    def metrics(self) -> list[str]:
        return list(self._metrics) if self._metrics else super().metrics

    def source(self) -> dict:
        return dict(self._provenance)
