"""Users' data as a folder per class: `ROOT/<class>/*.wav`, or `ROOT/<split>/<class>/*.wav`."""

from __future__ import annotations

import random
from pathlib import Path


from ..errors import ManifestError
from .base import DATASETS, SPLITS, FileDataset

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus"}


class FolderDataset(FileDataset):
    """Single-label clips whose class is their folder's name.

    With `train/`, `valid/`, `test/` sub-folders the splits are taken from them; otherwise each class's
    files are split at random (seeded) by `valid_fraction` and `test_fraction`, so every class appears
    in every split that has room for it.

    Args:
        root: the folder.
        valid_fraction, test_fraction: shares of each class held out when there are no split folders.
        seed: the random split.
    """

    split_error = ManifestError

    def __init__(self, root: str | Path, valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> None:
        self.root = Path(root)
        self.name = self.root.name
        if not self.root.is_dir():
            raise ManifestError(f"{self.root}: not a folder; expected ROOT/<class>/<audio files>")
        split_dirs = [d for d in self.root.iterdir() if d.is_dir() and d.name in SPLITS]
        self._split_source = "folders" if split_dirs else f"random(valid={valid_fraction}, test={test_fraction}, seed={seed})"
        entries: list[tuple[str, str, str]] = []  # (relative path, class, split)
        if split_dirs:
            for split_dir in split_dirs:
                entries += [(str(p.relative_to(self.root)), cls, split_dir.name) for cls, p in _class_files(split_dir)]
        else:
            by_class: dict[str, list[Path]] = {}
            for cls, path in _class_files(self.root):
                by_class.setdefault(cls, []).append(path)
            rng = random.Random(seed)
            for cls in sorted(by_class):
                files = sorted(by_class[cls])
                rng.shuffle(files)
                n_test, n_valid = round(test_fraction * len(files)), round(valid_fraction * len(files))
                for i, path in enumerate(files):
                    split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
                    entries.append((str(path.relative_to(self.root)), cls, split))
        if not entries:
            raise ManifestError(f"{self.root}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in class folders")
        ids = {split: sorted(p for p, _, s in entries if s == split) for split in SPLITS}
        self._set_clips(sorted({cls for _, cls, _ in entries}), False, ids, {path: (cls,) for path, cls, _ in entries})

    def path_of(self, clip_id: str) -> Path:
        return self.root / clip_id


    def source(self) -> dict:
        return {"folder": str(self.root.resolve()), "splits": self._split_source}


def _class_files(folder: Path):
    """(class, file) for every audio file under a class folder; hidden files and folders (a name starting with
    '.', e.g. macOS's `._x.wav` resource forks or `.ipynb_checkpoints`) are not data and are passed over."""
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(class_dir).parts)
            if path.suffix.lower() in AUDIO_SUFFIXES and path.is_file() and not hidden:
                yield class_dir.name, path


@DATASETS.register("folder", "a folder per class (ROOT/<class>/*.wav or ROOT/<split>/<class>/*.wav)")
def _folder_dataset(data_dir: str | Path, valid_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> FolderDataset:
    # explicit arguments: the CLI checks --dataset-arg keys and types against this signature
    return FolderDataset(data_dir, valid_fraction=float(valid_fraction), test_fraction=float(test_fraction), seed=int(seed))
