"""FSD50K from its files: the hub copy (`Fhrozen/FSD50k`) or the official Zenodo release.

Both hold the same CSVs (the hub copy is a copy of Zenodo record 4060432):

    hub (`Fhrozen/FSD50k`)        Zenodo (unzipped)                  what
    labels/dev.csv                FSD50K.ground_truth/dev.csv        fname,labels,mids,split (train/val)
    labels/eval.csv               FSD50K.ground_truth/eval.csv       fname,labels,mids
    labels/vocabulary.csv         FSD50K.ground_truth/vocabulary.csv index,label,mid (no header)
    clips/dev/<fname>.wav         FSD50K.dev_audio/<fname>.wav       44.1 kHz mono
    clips/eval/<fname>.wav        FSD50K.eval_audio/<fname>.wav

`labels` holds comma-joined class names (ancestors included) inside quotes; the class order is the
vocabulary's. `datasets.load_dataset` on the hub repository sees an audio folder labelled by folder
name, not these labels, so we read the files directly.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import DatasetError
from .hf import Built, ClipRecord
from .hub_files import HubFiles

FSD50K_FILES = HubFiles("Fhrozen/FSD50k", ("labels/*.csv", "clips/dev/*.wav", "clips/eval/*.wav"), size="about 34 GB")
LAYOUTS = {  # name -> (labels folder, dev audio, eval audio)
    "hub": ("labels", "clips/dev", "clips/eval"),
    "zenodo": ("FSD50K.ground_truth", "FSD50K.dev_audio", "FSD50K.eval_audio"),
}


def _layout(key: str, root: Path) -> tuple[Path, Path, Path]:
    for labels, dev, evaluation in LAYOUTS.values():
        if (root / labels / "dev.csv").exists():
            return root / labels, root / dev, root / evaluation
    raise DatasetError(f"{key}: {root} holds neither the hub layout (labels/dev.csv, clips/dev/) nor the Zenodo "
                       f"layout (FSD50K.ground_truth/dev.csv, FSD50K.dev_audio/). Fetch the hub copy with {FSD50K_FILES.hint()}, "
                       "or unzip the Zenodo release (record 4060432: FSD50K.dev_audio.zip + .z01-.z05, "
                       "FSD50K.eval_audio.zip + .z01, FSD50K.ground_truth.zip) into DIR")


def _rows(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.exists():
        raise DatasetError(f"{path}: missing (FSD50K's ground-truth CSVs are dev.csv, eval.csv and vocabulary.csv)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: columns {missing} missing (header: {reader.fieldnames}); expected {list(required)}")
        return list(reader)


def _vocabulary(path: Path) -> list[str]:
    if not path.exists():
        raise DatasetError(f"{path}: missing (FSD50K's class list, rows `index,label,mid`)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row]
    try:
        return [label for _, label, _ in sorted(rows, key=lambda row: int(row[0]))]
    except (ValueError, IndexError) as exc:
        raise DatasetError(f"{path}: expected rows `index,label,mid` without a header (e.g. `53,Crushing,/m/07plct2`)") from exc


def build_fsd50k(key: str, data_dir, options: dict) -> Built:
    """Train = dev rows with split `train`, valid = `val` (or all of dev, valid carved, with train_split=dev),
    test = eval. Options: train_split (`train_val` or `dev`)."""
    root = Path(data_dir) if data_dir is not None else FSD50K_FILES.fetch(key)
    if not root.exists():
        raise DatasetError(f"{key}: --data-dir {root} does not exist. Fetch the hub copy with {FSD50K_FILES.hint()}")
    labels_dir, dev_audio, eval_audio = _layout(key, root)
    classes = _vocabulary(labels_dir / "vocabulary.csv")
    if options["train_split"] not in ("train_val", "dev"):
        raise DatasetError(f"{key}: train_split {options['train_split']!r} unknown; use train_val or dev")
    records = []
    dev = _rows(labels_dir / "dev.csv", ("fname", "labels", "split"))
    for row, entry in enumerate(dev):
        if entry["split"] not in ("train", "val"):
            raise DatasetError(f"{labels_dir / 'dev.csv'}: line {row + 2}: split {entry['split']!r}; expected train or val")
        split = "valid" if entry["split"] == "val" and options["train_split"] == "train_val" else "train"
        records.append(ClipRecord(f"dev/{entry['fname']}", split, "dev", row, _names(entry["labels"]),
                                  path=str(dev_audio / f"{entry['fname']}.wav")))
    evaluation = _rows(labels_dir / "eval.csv", ("fname", "labels"))
    records += [ClipRecord(f"eval/{entry['fname']}", "test", "eval", row, _names(entry["labels"]),
                           path=str(eval_audio / f"{entry['fname']}.wav")) for row, entry in enumerate(evaluation)]
    unknown = sorted({label for record in records for label in record.labels} - set(classes))
    if unknown:
        raise DatasetError(f"{key}: labels not in vocabulary.csv: {unknown[:5]}")
    train_rows = sum(e["split"] == "train" for e in dev)
    return Built(classes, records, root=root,
                 source_rows={"train": train_rows, "val": len(dev) - train_rows, "eval": len(evaluation)},
                 extra={"layout": str(labels_dir.relative_to(root))})


def _names(joined: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name.strip() for name in joined.split(",") if name.strip()))
