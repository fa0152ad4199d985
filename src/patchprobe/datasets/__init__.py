"""Labelled audio in: the dataset interface, users' CSV manifests, and the synthetic generator."""

from .base import DATASETS, SPLITS, AudioDataset, Clip
from .manifest import ManifestDataset
from .synthetic import EVENT_CLASSES, SyntheticConfig, load_synthetic_dataset, synthesize_clip, write_synthetic_dataset


def create_dataset(name: str, **kwargs) -> AudioDataset:
    """Build a registered dataset by name, e.g. `create_dataset("manifest", path="data/manifest.csv")`."""
    return DATASETS.create(name, **kwargs)


__all__ = [
    "DATASETS",
    "EVENT_CLASSES",
    "SPLITS",
    "AudioDataset",
    "Clip",
    "ManifestDataset",
    "SyntheticConfig",
    "create_dataset",
    "load_synthetic_dataset",
    "synthesize_clip",
    "write_synthetic_dataset",
]
