"""BirdSet's files as they are on the hub, and the builder that turns a config into k-shot windows + test_5s.

`DBD-research-group/BirdSet` keeps a loading script on its main branch (`BirdSet.py`), which
`datasets` >= 4 refuses to run; the data itself is on the repository's `data` branch, one folder per
config (read from the loading script, builder version 0.0.4):

    HSN/HSN_metadata_train.parquet       one row per Xeno-canto recording (labels as eBird-code strings)
    HSN/HSN_metadata_test_5s.parquet     one row per 5 s soundscape file; `filepath` may be the index
    HSN/HSN_train_shard_0001.tar.gz ...  32 kHz .ogg files (members at the top level or in folders)
    HSN/HSN_test5s_shard_0001.tar.gz     (note `test5s` in shard names, `test_5s` in the metadata name)

Metadata rows join their audio by the basename of `filepath`. We read the two metadata files with
pyarrow and unpack the shards once, flat, next to them (`--data-dir`) or next to the HF cache. A
`save_to_disk` copy written with `datasets` <= 3.6 (which still runs the script) works too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .birdset import all_windows, kshot_subset
from .hf import Built, ClipRecord, audio_column, class_names_of, entry_seconds, label_names, open_source
from .hub_files import HubFiles, unpack_shards

BIRDSET_REPO = "DBD-research-group/BirdSet"
# Sizes of the whole config on the dataset card (train and test audio included; test, the full
# soundscapes, is not fetched, so the download is somewhat smaller).
CONFIG_SIZES = {"HSN": "5.9 GB", "POW": "15.7 GB", "PER": "10.5 GB", "NES": "14.2 GB", "SNE": "20.8 GB",
                "UHH": "4.9 GB", "NBP": "29.9 GB", "SSW": "35.2 GB"}
# split -> (metadata file suffix, shard infix)
SPLIT_FILES = {"train": ("metadata_train", "train"), "test_5s": ("metadata_test_5s", "test5s")}


def birdset_files(config: str) -> HubFiles:
    """The files of one config that the k-shot / test_5s protocol needs, on the `data` branch."""
    patterns = tuple(p for split, (meta, shard) in SPLIT_FILES.items()
                     for p in (f"{config}/{config}_{meta}.parquet", f"{config}/{config}_{shard}_shard_*.tar.gz"))
    size = CONFIG_SIZES.get(config, "")
    return HubFiles(BIRDSET_REPO, patterns, revision="data", size=f"less than {size}" if size else "")


@dataclass
class BirdSetSplit:
    """One split of a config, as columns (one entry per metadata row).

    Attributes:
        primary: `ebird_code` names (None in test_5s).
        labels: `ebird_code_multilabel` names.
        secondary: `ebird_code_secondary` names.
        detected_events, event_cluster: per row, lists ([[start, end], ...], [cluster, ...]) or None.
        start_time, end_time: seconds or None.
        audio: per row, an audio entry (a path, or `{bytes, path}`).
        class_names: the ClassLabel order where the source has one, else None.
    """

    primary: list[str | None]
    labels: list[list[str]]
    secondary: list[list[str]]
    detected_events: list
    event_cluster: list
    start_time: list
    end_time: list
    audio: list
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def _column(table, name: str, default=None) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [default] * table.num_rows


def read_data_branch(key: str, config: str, root: Path, unpack_to: Path | None = None) -> dict[str, BirdSetSplit]:
    """The train and test_5s splits of `config` from the `data` branch layout under `root`.

    Args:
        root: the folder holding `<config>/` (an `hf download --local-dir` folder or the HF snapshot).
        unpack_to: where the shards' audio goes (default: `root/<config>/audio`); `<split>/` below it.
    """
    import pyarrow.parquet as pq

    folder = root / config
    unpack_to = unpack_to or folder / "audio"
    splits = {}
    for split, (meta, shard) in SPLIT_FILES.items():
        metadata = folder / f"{config}_{meta}.parquet"
        shards = sorted(folder.glob(f"{config}_{shard}_shard_*.tar.gz"))
        if not metadata.exists() or not shards:
            present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise DatasetError(f"{key}: {folder} lacks {metadata.name if not metadata.exists() else f'{config}_{shard}_shard_*.tar.gz'} "
                               f"(found: {present[:10] or 'nothing'}). Fetch the config's files with {birdset_files(config).hint()}")
        table = pq.read_table(metadata)  # a `filepath` pandas index comes back as a column
        if "filepath" not in table.column_names or "ebird_code_multilabel" not in table.column_names:
            raise DatasetError(f"{key}: {metadata} has no `filepath` or `ebird_code_multilabel` column "
                               f"(columns: {table.column_names}); is this BirdSet's metadata file?")
        audio_dir = unpack_shards(shards, unpack_to / split, progress=True)
        audio = [str(audio_dir / Path(str(path)).name) for path in table.column("filepath").to_pylist()]
        splits[split] = BirdSetSplit(
            primary=_column(table, "ebird_code"),
            labels=[list(dict.fromkeys(v or [])) for v in _column(table, "ebird_code_multilabel")],
            secondary=[list(v or []) for v in _column(table, "ebird_code_secondary")],
            detected_events=_column(table, "detected_events"), event_cluster=_column(table, "event_cluster"),
            start_time=_column(table, "start_time"), end_time=_column(table, "end_time"), audio=audio)
    return splits


def read_saved_copy(key: str, data_dir: Path) -> dict[str, BirdSetSplit]:
    """The train and test_5s splits of a `save_to_disk` copy written by `datasets` <= 3.6 (labels as ClassLabel)."""
    sources = open_source(key, BIRDSET_REPO, None, data_dir)
    if "train" not in sources or "test_5s" not in sources:
        raise DatasetError(f"{key}: the save_to_disk copy at {data_dir} needs the train and test_5s splits (found {sorted(sources)})")
    splits = {}
    for name in ("train", "test_5s"):
        source = sources[name]
        audio = source.select_columns([audio_column(source)])
        primary = label_names(source, "ebird_code") if "ebird_code" in source.column_names else [[]] * len(source)
        splits[name] = BirdSetSplit(
            primary=[p[0] if p else None for p in primary],
            labels=label_names(source, "ebird_code_multilabel"),
            secondary=[list(v or []) for v in _get(source, "ebird_code_secondary")],
            detected_events=_get(source, "detected_events"), event_cluster=_get(source, "event_cluster"),
            start_time=_get(source, "start_time"), end_time=_get(source, "end_time"),
            audio=[next(iter(row.values())) for row in audio],
            class_names=class_names_of(source, "ebird_code") or class_names_of(source, "ebird_code_multilabel"))
    return splits


def _get(source, column: str) -> list:
    return source[column] if column in source.column_names else [None] * len(source)


def open_birdset(key: str, config: str, data_dir: str | Path | None) -> tuple[dict[str, BirdSetSplit], Path | None]:
    """A config's splits from `data_dir` (data-branch files or a save_to_disk copy) or the HF cache/hub.

    Returns:
        (splits, root that relative audio paths resolve against).
    """
    if data_dir is None:
        snapshot = birdset_files(config).fetch(key)
        from huggingface_hub import constants

        # the snapshot belongs to the HF cache (read-only by convention): unpack beside the cache, keyed
        # by the snapshot's commit, so a new revision of the data branch is unpacked anew
        unpack_to = Path(constants.HF_HUB_CACHE).parent / "patchprobe" / "birdset" / snapshot.name / config
        return read_data_branch(key, config, snapshot, unpack_to), None
    root = Path(data_dir)
    if not root.exists():
        raise DatasetError(f"{key}: --data-dir {root} does not exist. Fetch the config's files with {birdset_files(config).hint()}")
    if (root / "dataset_dict.json").exists():
        return read_saved_copy(key, root), root
    if (root / config).is_dir() or not (root.name == config):
        return read_data_branch(key, config, root), root
    return read_data_branch(key, config, root.parent), root


def build_birdset(key: str, config: str, data_dir, options: dict) -> Built:
    """k-shot (or every) event windows of the train recordings, and the test_5s segments.

    Options: k, seed, condition, fill_up, extension_time (see `patchprobe.datasets.birdset`).
    """
    splits, root = open_birdset(key, config, data_dir)
    train, test = splits["train"], splits["test_5s"]
    recordings = {}
    for row in range(len(train)):
        label = train.primary[row] or (train.labels[row][0] if train.labels[row] else None)
        if label is None:
            continue
        recordings[row] = {"label": label, "secondary": train.secondary[row],
                           "duration": entry_seconds(train.audio[row], f"train/{row}", root),
                           "detected_events": train.detected_events[row], "event_cluster": train.event_cluster[row]}
    k, extension = int(options["k"]), float(options["extension_time"])
    events = (kshot_subset(recordings, k, options["seed"], options["condition"], options["fill_up"], extension) if k > 0
              else all_windows(recordings, extension))

    def path_of(entry) -> str | None:
        return entry if isinstance(entry, str) else None

    records, taken = [], Counter()
    for e in events:
        clip_id = f"train/{e.row}@{e.start:g}-{e.end:g}"
        taken[clip_id] += 1  # two events of a short recording can share a window: both are samples
        records.append(ClipRecord(clip_id if taken[clip_id] == 1 else f"{clip_id}~{taken[clip_id]}", "train", "train", e.row,
                                  tuple(dict.fromkeys(train.labels[e.row] or [e.label])), e.start, e.end, path_of(train.audio[e.row])))
    for row, labels in enumerate(test.labels):
        start, end = test.start_time[row], test.end_time[row]
        window = f"@{start:g}-{end:g}" if start is not None and end is not None else ""
        records.append(ClipRecord(f"test_5s/{row}{window}", "test", "test_5s", row, tuple(labels),
                                  None if start is None else float(start), None if end is None else float(end),
                                  path_of(test.audio[row])))
    ordered = list(train.class_names or [])
    ordered += [name for name in (test.class_names or []) if name not in ordered]
    seen = sorted({label for record in records for label in record.labels} | {r["label"] for r in recordings.values()})
    classes = ordered + [name for name in seen if name not in ordered]
    return Built(classes, records, audio_of=lambda split, row: splits[split].audio[row], root=root,
                 source_rows={name: len(split) for name, split in splits.items()},
                 extra={"kshot_events": len(events), "recordings": len(recordings)})
