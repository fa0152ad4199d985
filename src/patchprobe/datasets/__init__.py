"""Labelled audio in: the dataset interface, users' manifests and class folders, the paper's benchmark
datasets (through Hugging Face `datasets`), mixup variants, validation, and the synthetic generator."""

from . import benchmark as _benchmark  # noqa: F401  (registers as20k ... sc2)
from .augment import MixupAugmented, MixupConfig
from .base import DATASETS, SPLITS, AudioDataset, Clip
from .benchmark import SPECS, DatasetSpec, build_benchmark
from .check import DatasetCheck, check_dataset
from .birdset import event_window, kshot_subset, recording_events
from .folder import FolderDataset
from .hf import ClipRecord, HubDataset
from .manifest import ManifestDataset
from .synthetic import EVENT_CLASSES, SyntheticConfig, load_synthetic_dataset, synthesize_clip, write_synthetic_dataset
from .validate import FilteredDataset, ValidationReport, checked, validate_dataset


def reopen_dataset(source: dict) -> AudioDataset | None:
    """The dataset a bank was built from, from the `source` record in its bank.json (None if it names none).

    Mixup variants are not rebuilt: the clean clips (and every valid/test clip) load from the base dataset.
    """
    if source.get("manifest"):
        return ManifestDataset(source["manifest"])
    if source.get("folder"):
        return FolderDataset(source["folder"])
    if source.get("dataset") in SPECS:
        options = {k: v for k, v in (source.get("options") or {}).items() if k in SPECS[source["dataset"]].options}
        return build_benchmark(source["dataset"], data_dir=source.get("data_dir"), **options)
    return None


def create_dataset(name: str, **kwargs) -> AudioDataset:
    """Build a registered dataset by name, e.g. `create_dataset("manifest", path="data/manifest.csv")`,
    `create_dataset("esc50", data_dir="data/esc50")` or `create_dataset("hsn", k=64, seed=2)`."""
    return DATASETS.create(name, **kwargs)


__all__ = [
    "DATASETS", "EVENT_CLASSES", "SPECS", "SPLITS", "AudioDataset", "Clip", "ClipRecord", "DatasetCheck", "DatasetSpec", "FilteredDataset",
    "FolderDataset", "HubDataset", "ManifestDataset", "MixupAugmented", "MixupConfig", "SyntheticConfig", "ValidationReport",
    "build_benchmark", "check_dataset", "checked", "create_dataset", "reopen_dataset", "event_window", "kshot_subset", "load_synthetic_dataset", "recording_events",
    "synthesize_clip", "validate_dataset", "write_synthetic_dataset",
]
