"""`patchprobe datasets check`: a benchmark dataset's local copy against what its publishers say it holds,
before any extraction: rows per source split, classes, sample rates, missing or unreadable audio."""

from __future__ import annotations

import random
from collections import Counter

import soundfile as sf
from pydantic import BaseModel

from ..errors import AudioError
from .base import SPLITS
from .benchmark import SPECS, build_source
from .hf import HubDataset, open_entry


class SplitCount(BaseModel):
    """Rows (or files) of one source split: found in the local copy vs published."""

    split: str
    found: int | None
    expected: int | None

    @property
    def matches(self) -> bool:
        return self.expected is None or self.found == self.expected


class DatasetCheck(BaseModel):
    """The outcome of `check_dataset`: every count and problem, and whether it all matches."""

    key: str
    source: list[SplitCount]
    clips: dict[str, int]  # clips per split of the protocol we build (after windows, k-shot, carving)
    classes: int
    expected_classes: int | None
    checked: int  # clips whose audio header was read
    sample_rates: dict[int, int]  # Hz -> clips
    missing: list[str]
    unreadable: list[str]
    options: dict

    @property
    def ok(self) -> bool:
        classes_ok = self.expected_classes is None or self.classes == self.expected_classes
        return classes_ok and all(s.matches for s in self.source) and not self.missing and not self.unreadable


def check_dataset(key: str, data_dir=None, sample: int | None = 200, seed: int = 0, **options) -> DatasetCheck:
    """Compare benchmark dataset `key` (from `data_dir` or the HF cache) with its spec's published counts.

    Args:
        key: a benchmark key (`patchprobe datasets` lists them).
        data_dir: the local copy; None reads the HF cache (or the hub, where the source allows).
        sample: audio headers to read, spread over all splits (None or 0: every clip).
        seed: which clips are sampled.
        options: the dataset's protocol options.
    """
    spec = SPECS[key]
    built, chosen = build_source(key, data_dir, **options)
    dataset = HubDataset(key, built.classes, spec.multilabel, built.records, built.audio_of, {}, root=built.root)
    names = list(dict.fromkeys([*spec.expected_rows, *built.source_rows]))
    source = [SplitCount(split=n, found=built.source_rows.get(n), expected=spec.expected_rows.get(n)) for n in names]
    records = built.records
    if sample:
        records = sorted(random.Random(seed).sample(records, min(sample, len(records))), key=lambda r: r.clip_id)
    rates: Counter[int] = Counter()
    missing, unreadable = [], []
    for record in records:
        try:
            handle = open_entry(dataset.audio_entry(record), record.clip_id, built.root)
            rates[sf.info(handle).samplerate] += 1
        except AudioError as exc:
            (missing if "not found" in exc.problem else unreadable).append(f"{record.clip_id}: {exc.problem}")
        except Exception as exc:  # libsndfile's errors: the file is there but cannot be read
            unreadable.append(f"{record.clip_id}: {type(exc).__name__}: {exc}")
    return DatasetCheck(key=key, source=source, clips={s: sum(r.split == s for r in built.records) for s in SPLITS},
                        classes=len(built.classes), expected_classes=spec.expected_classes, checked=len(records),
                        sample_rates=dict(sorted(rates.items())), missing=missing, unreadable=unreadable, options=chosen)
