"""The paper's benchmark datasets: one spec each (source, labels, splits, task, metrics, protocol options).

Every dataset registers by key (`create_dataset("esc50", data_dir=...)`, `patchprobe extract --dataset
esc50`). Each reads its source as it really is on the hub (see the module of each reader and
docs/datasets.md): Parquet folders (AudioSet, ESC-50), plain files (FSD50K, BirdSet's `data` branch),
an official tarball (Speech Commands). Protocol choices the sources leave open are named options with
a documented default; the options used are saved in bank.json with the sampled clip ids, so a bank can
be rebuilt exactly. Expected counts per split live with each spec, for `patchprobe datasets check`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict

from ..errors import DatasetError
from .base import DATASETS
from .birdset_source import birdset_files, build_birdset
from .fsd50k import FSD50K_FILES, build_fsd50k
from .hf import Built, ClipRecord, HubDataset, TableAudio, class_names_of, describe_sources, label_names, open_source
from .hub_files import HubFiles
from .speech_commands import DOWNLOAD as SC2_DOWNLOAD, build_speech_commands

TRAIN_NAMES, VALID_NAMES, TEST_NAMES = ("train", "dev"), ("validation", "valid", "val"), ("test", "eval", "test_5s")
ID_COLUMNS = ("video_id", "filename", "fname", "file", "id", "clip_id")
BIRDSET_METRICS = ["map", "cmap5", "auroc", "t1acc"]


class DatasetSpec(BaseModel):
    """What `patchprobe datasets` lists about a benchmark dataset."""

    model_config = ConfigDict(frozen=True)

    key: str
    title: str
    hub_id: str
    config: str | None = None
    multilabel: bool
    metrics: list[str]
    native_rate: str
    clip: str
    classes: str
    options: dict[str, object]  # protocol option -> default
    notes: str = ""
    fetch: str = ""  # how to get a local copy (one command, with its size)
    expected_rows: dict[str, int] = {}  # rows/files per source split as published (card or release notes)
    expected_classes: int | None = None


SPECS: dict[str, DatasetSpec] = {}
Builder = Callable[[DatasetSpec, "str | Path | None", dict], Built]


def _pick(sources: dict, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in sources), None)


def _row_ids(source, split_name: str) -> list[str]:
    column = next((c for c in ID_COLUMNS if c in source.column_names), None)
    if column is not None:
        values = [str(v) for v in source[column]]
        if len(set(values)) == len(values):
            return values
    return [f"{split_name}/{row}" for row in range(len(source))]


def _carve_valid(records: list[ClipRecord], fraction: float, seed: int) -> list[ClipRecord]:
    """Move a seeded `fraction` of the train records to a valid split (for sources without one)."""
    train = [r for r in records if r.split == "train"]
    if fraction <= 0 or any(r.split == "valid" for r in records) or len(train) < 2:
        return records
    chosen = set(random.Random(seed).sample([r.clip_id for r in train], max(1, round(fraction * len(train)))))
    return [r.moved_to("valid") if r.clip_id in chosen else r for r in records]


def _class_list(sources: dict, column: str, records: list[ClipRecord]) -> list[str]:
    """The source's ClassLabel order when it has one (other splits' extra names appended), else sorted names."""
    ordered: list[str] = []
    for source in sources.values():
        for name in class_names_of(source, column) or []:
            if name not in ordered:
                ordered.append(name)
    seen = sorted({label for record in records for label in record.labels})
    return ordered + [name for name in seen if name not in ordered] if ordered else seen


def _generic(candidates: tuple[str, ...], layout: dict[str, str] | None = None, files: HubFiles | None = None) -> Builder:
    """Clip-level datasets: each row is a clip; labels from the first present column of `candidates`.

    With `files` (the repository's Parquet folders), a run without --data-dir fetches exactly those
    files into the HF cache and reads them with `layout`; otherwise `datasets.load_dataset` reads the hub.
    """

    def build(spec: DatasetSpec, data_dir, options: dict) -> Built:
        if data_dir is None and files is not None:
            data_dir = files.fetch(spec.key)
        sources = open_source(spec.key, spec.hub_id, spec.config, data_dir, layout, spec.fetch)
        train = _pick(sources, TRAIN_NAMES)
        if train is None:
            raise DatasetError(f"{spec.key}: the source has no train split (one of {list(TRAIN_NAMES)}); it holds "
                               f"{describe_sources(sources)}")
        valid, test = _pick(sources, VALID_NAMES), _pick(sources, TEST_NAMES)
        if test is None:
            raise DatasetError(f"{spec.key}: the source has no test split (one of {list(TEST_NAMES)}); it holds "
                               f"{describe_sources(sources)}")
        column = next((c for c in candidates if c in sources[train].column_names), None)
        if column is None:
            raise DatasetError(f"{spec.key}: none of the label columns {list(candidates)} is in the source; it holds "
                               f"{describe_sources(sources)}")
        merge_valid = options.get("train_split") == "dev"
        drop = set(options.get("drop_ids") or [])
        records, dropped = [], []
        for ours, name in (("train", train), ("valid", valid), ("test", test)):
            if name is None:
                continue
            source = sources[name]
            split = "train" if ours == "valid" and merge_valid else ours
            for row, (clip_id, labels) in enumerate(zip(_row_ids(source, name), label_names(source, column))):
                if clip_id in drop:
                    dropped.append(clip_id)
                    continue
                records.append(ClipRecord(f"{name}/{clip_id}" if not clip_id.startswith(f"{name}/") else clip_id,
                                          split, name, row, tuple(labels)))
        records = _carve_valid(records, options["valid_fraction"], options["seed"])
        return Built(_class_list(sources, column, records), records, audio_of=TableAudio(sources),
                     root=Path(data_dir) if data_dir else None, source_rows={name: len(split) for name, split in sources.items()},
                     extra={"label_column": column, "dropped_ids": dropped})

    return build


def _esc50(spec: DatasetSpec, data_dir, options: dict) -> Built:
    if data_dir is None:
        data_dir = ESC50_FILES.fetch(spec.key)
    sources = open_source(spec.key, spec.hub_id, None, data_dir, ESC50_LAYOUT, spec.fetch)
    source = sources[_pick(sources, TRAIN_NAMES) or next(iter(sources))]
    missing = [c for c in ("category", "fold", "target") if c not in source.column_names]
    if missing:
        raise DatasetError(f"{spec.key}: columns {missing} missing; the source holds {describe_sources(sources)}")
    categories, folds, targets = source["category"], source["fold"], source["target"]
    classes = [name for _, name in sorted({(int(t), c) for t, c in zip(targets, categories)})]
    ids = _row_ids(source, "esc50")
    protocol = options["protocol"]
    if protocol == "folds":
        def split_of(row):
            fold = int(folds[row])
            return "test" if fold == options["test_fold"] else "valid" if fold == options["valid_fold"] else "train"
        records = [ClipRecord(ids[row], split_of(row), "train", row, (categories[row],)) for row in range(len(source))]
    elif protocol == "random":
        test_rows = set(bird_mae_test_rows(len(source)))
        records = [ClipRecord(ids[row], "test" if row in test_rows else "train", "train", row, (categories[row],)) for row in range(len(source))]
        records = _carve_valid(records, options["valid_fraction"], options["seed"])
    else:
        raise DatasetError(f"esc50: protocol {protocol!r} unknown; use folds or random")
    return Built(classes, records, audio_of=TableAudio(sources), root=Path(data_dir),
                 source_rows={name: len(split) for name, split in sources.items()})


def bird_mae_test_rows(rows: int) -> list[int]:
    """The rows Bird-MAE's ESC-50 split holds out: `Dataset.train_test_split(test_size=0.2, shuffle=True,
    seed=42)`, whose permutation depends only on the row count and the seed, so we run that same call
    on a table of row numbers."""
    import datasets

    split = datasets.Dataset.from_dict({"row": list(range(rows))}).train_test_split(test_size=0.2, shuffle=True, seed=42)
    return list(split["test"]["row"])


def _sc2(spec: DatasetSpec, data_dir, options: dict) -> Built:
    return build_speech_commands(spec.key, data_dir, options)


def _fsd50k(spec: DatasetSpec, data_dir, options: dict) -> Built:
    built = build_fsd50k(spec.key, data_dir, options)
    built.records = _carve_valid(built.records, options["valid_fraction"], options["seed"])
    return built


def _birdset(spec: DatasetSpec, data_dir, options: dict) -> Built:
    built = build_birdset(spec.key, spec.config, data_dir, options)
    built.records = _carve_valid(built.records, options["valid_fraction"], options["seed"])
    return built


BUILDERS: dict[str, Builder] = {}


def _register(spec: DatasetSpec, builder: Builder) -> None:
    SPECS[spec.key] = spec
    BUILDERS[spec.key] = builder

    def factory(data_dir: str | Path | None = None, **options) -> HubDataset:
        return build_benchmark(spec.key, data_dir=data_dir, **options)

    DATASETS.register(spec.key, spec.title, source=spec.hub_id + (f" ({spec.config})" if spec.config else ""),
                      classes=spec.classes, task="multi-label" if spec.multilabel else "multi-class",
                      metrics=", ".join(spec.metrics), protocol=", ".join(f"{k}={v}" for k, v in spec.options.items()))(factory)


def _coerce(key: str, name: str, value, default):
    """Option values from the CLI arrive as strings: convert to the default's type (lists: comma-separated)."""
    if isinstance(value, str) and isinstance(default, list):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
        return float(value)
    if isinstance(value, str) and not isinstance(default, str):
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return type(default)(value)
        except ValueError:
            raise DatasetError(f"{key}: option {name}={value!r} should be a {type(default).__name__}") from None
    return value


def resolve_options(key: str, options: dict) -> dict:
    """The spec's options with `options` applied (CLI strings converted to each default's type); unknown
    names are refused."""
    spec = SPECS[key]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DatasetError(f"{key}: unknown option(s) {unknown}; options are {sorted(spec.options)}")
    return {name: _coerce(key, name, options.get(name, default), default) for name, default in spec.options.items()}


def build_source(key: str, data_dir: str | Path | None = None, **options) -> tuple[Built, dict]:
    """Read benchmark dataset `key`'s source and apply its protocol: (what was built, the options used)."""
    chosen = resolve_options(key, options)
    built = BUILDERS[key](SPECS[key], data_dir, chosen)
    return built, chosen


def build_benchmark(key: str, data_dir: str | Path | None = None, **options) -> HubDataset:
    """Build benchmark dataset `key` from `data_dir` (a local copy in the source's own layout) or the hub
    (the HF cache first, so a download keeps working offline).

    Options are the spec's protocol options (`patchprobe datasets` lists them); unknown ones are refused.
    """
    spec = SPECS[key]
    built, chosen = build_source(key, data_dir, **options)
    for split in ("train", "test"):
        if not any(r.split == split for r in built.records):
            raise DatasetError(f"{key}: the {split} split came out empty (source rows per split: {built.source_rows})")
    provenance = {"dataset": key, "hub_id": spec.hub_id, "config": spec.config, "options": chosen,
                  "data_dir": str(Path(data_dir).resolve()) if data_dir else None, **built.extra}
    return HubDataset(key, built.classes, spec.multilabel, built.records, built.audio_of, provenance, root=built.root,
                      metrics=spec.metrics)


_COMMON = {"valid_fraction": 0.1, "seed": 0}
_LABEL_COLUMNS = ("labels", "label", "events", "classes", "human_labels")
AS20K_LAYOUT = {"train": "data/bal_train/*.parquet", "test": "data/eval/*.parquet"}  # the card's config `balanced`
AS20K_FILES = HubFiles("agkphysics/AudioSet", tuple(AS20K_LAYOUT.values()), size="about 50 GB")
ESC50_LAYOUT = {"train": "data/train-*.parquet"}
ESC50_FILES = HubFiles("ashraq/esc50", tuple(ESC50_LAYOUT.values()), size="about 774 MB")
BIRDSET_COUNTS = {  # config: (classes, train recordings, test_5s segments), from the dataset card
    "HSN": (21, 5460, 12000), "POW": (48, 14911, 4560), "PER": (132, 16802, 15120), "NES": (89, 16117, 24480),
    "SNE": (56, 19390, 23756), "UHH": (27, 3626, 36637), "NBP": (51, 24327, 563)}

_register(DatasetSpec(key="as20k", title="AudioSet-20k (balanced train / eval)", hub_id="agkphysics/AudioSet", config="balanced",
                      multilabel=True, metrics=["map", "auroc"], native_rate="mixed (mostly 48 kHz)", clip="10 s",
                      classes="527 (ontology MIDs)", options={**_COMMON, "drop_ids": []},
                      notes="labels = `labels` MIDs; drop_ids: video ids to leave out", fetch=AS20K_FILES.hint(),
                      expected_rows={"train": 18683, "test": 17141}, expected_classes=527),
          _generic(_LABEL_COLUMNS, AS20K_LAYOUT, AS20K_FILES))
_register(DatasetSpec(key="fsd50k", title="FSD50K", hub_id="Fhrozen/FSD50k", multilabel=True, metrics=["map", "auroc"],
                      native_rate="44.1 kHz", clip="0.3-30 s", classes="200",
                      options={**_COMMON, "train_split": "train_val"}, fetch=FSD50K_FILES.hint() + ", or the Zenodo release unzipped",
                      notes="train_split=train_val: official validation as valid; dev: train on all of dev, valid carved",
                      expected_rows={"train": 36796, "val": 4170, "eval": 10231}, expected_classes=200), _fsd50k)
for _key, _hub, _classes, _note, _rows in (
        ("desed", "lrauch/desed", "10", "schema unconfirmed", {}),
        ("spass", "lrauch/spass", "28", "schema unconfirmed", {}),
        ("urban", "lrauch/urban-sed", "10", "strong labels collapsed to clip level; schema unconfirmed",
         {"train": 6000, "validation": 2000, "test": 2000})):
    _register(DatasetSpec(key=_key, title=f"{_key} ({_hub})", hub_id=_hub, multilabel=True, metrics=["map", "auroc"],
                          native_rate="44.1 kHz", clip="10 s", classes=_classes, options=dict(_COMMON), notes=_note,
                          fetch=f"`hf download {_hub} --repo-type dataset --local-dir DIR`, then pass --data-dir DIR",
                          expected_rows=_rows, expected_classes=int(_classes)), _generic(_LABEL_COLUMNS))
for _key, (_config, (_count, _train, _test)) in zip(("hsn", "pow", "per", "nes", "sne", "uhh", "nbp"), BIRDSET_COUNTS.items()):
    _register(DatasetSpec(key=_key, title=f"BirdSet {_config} (k-shot event windows / test_5s)", hub_id="DBD-research-group/BirdSet",
                          config=_config, multilabel=True, metrics=BIRDSET_METRICS, native_rate="32 kHz", clip="5 s windows",
                          classes="25 train / 27 test" if _config == "UHH" else str(_count),
                          options={"k": 64, "seed": 1, "condition": "lenient", "fill_up": True, "extension_time": 6.0,
                                   "valid_fraction": 0.1},
                          notes="k=0: every event window of every recording; extension_time: seconds an event is extended to",
                          fetch=birdset_files(_config).hint(), expected_rows={"train": _train, "test_5s": _test},
                          expected_classes=_count), _birdset)
_register(DatasetSpec(key="esc50", title="ESC-50", hub_id="ashraq/esc50", multilabel=False, metrics=["accuracy", "map"],
                      native_rate="44.1 kHz", clip="5 s", classes="50",
                      options={**_COMMON, "protocol": "folds", "test_fold": 5, "valid_fold": 4}, fetch=ESC50_FILES.hint(),
                      notes="protocol=folds: test = test_fold, valid = valid_fold; random: Bird-MAE's 80/20 split "
                            "(train_test_split(test_size=0.2, shuffle=True, seed=42)), valid carved from the 80 %",
                      expected_rows={"train": 2000}, expected_classes=50), _esc50)
_register(DatasetSpec(key="sc2", title="Speech Commands v2, 12 classes", hub_id="google/speech_commands", config="v0.02",
                      multilabel=False, metrics=["accuracy"], native_rate="16 kHz", clip="1 s", classes="12 (10 words, _unknown_, _silence_)",
                      options={"silence_window_s": 1.0, "silence_hop_s": 0.5, "test_dir": ""}, fetch=SC2_DOWNLOAD,
                      notes="the official tarballs; train/valid _silence_ = 1 s windows of the noise files (hop 0.5 s)",
                      expected_rows={"train": 84848, "validation": 9982, "test": 4890}, expected_classes=12), _sc2)
