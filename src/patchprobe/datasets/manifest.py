"""User data: a CSV manifest with columns `path`, `labels` and `split`."""

from __future__ import annotations

import csv
from pathlib import Path


from ..errors import ManifestError
from .base import DATASETS, SPLITS, FileDataset

REQUIRED_COLUMNS = ("path", "labels", "split")
LABEL_SEPARATOR = ";"


class ManifestDataset(FileDataset):
    """Clips listed in a CSV manifest.

    Columns: `path` (audio file, relative to the manifest's folder, or absolute), `labels`
    (class names joined by ';', empty for no label), `split` (train / valid / test). An optional
    `id` column names clips; otherwise the path is the id.

    Args:
        manifest: the CSV file.
        classes: the ordered class list; default is the sorted union of all labels.
        multilabel: force the task type; default is multi-label when any row has several labels
            or none, multi-class otherwise.
        name: dataset name recorded in banks (default: the manifest's file stem).
    """

    split_error = ManifestError

    def __init__(
        self,
        manifest: str | Path,
        classes: list[str] | None = None,
        multilabel: bool | None = None,
        name: str | None = None,
    ) -> None:
        self.manifest = Path(manifest)
        self.root = self.manifest.parent
        self.name = name or self.manifest.stem
        rows = _read_rows(self.manifest)
        self._rows = {row["id"]: row for row in rows}
        seen = sorted({label for row in rows for label in row["labels"]})
        if classes is None:
            classes = seen
        else:
            classes = list(classes)
            unknown = sorted(set(seen) - set(classes))
            if unknown:
                first = next(r for r in rows if set(r["labels"]) & set(unknown))
                raise ManifestError(
                    f"{self.manifest}: line {first['line']}: label(s) {unknown[:5]} are not in the given class list "
                    f"({len(unknown)} unknown in all); add them to `classes` or fix the manifest"
                )
        if not classes:
            raise ManifestError(f"{self.manifest}: no row has a label; the `labels` column must name at least one class")
        if multilabel is None:
            multilabel = any(len(row["labels"]) != 1 for row in rows)
        elif not multilabel:
            bad = next((r for r in rows if len(r["labels"]) != 1), None)
            if bad is not None:
                raise ManifestError(
                    f"{self.manifest}: line {bad['line']}: multi-class data needs exactly one label per clip, "
                    f"got {len(bad['labels'])}; pass multilabel=True or fix the row"
                )
        ids = {split: [row["id"] for row in rows if row["split"] == split] for split in SPLITS}
        self._set_clips(classes, multilabel, ids, {row["id"]: row["labels"] for row in rows})

    def source(self) -> dict:
        return {"manifest": str(self.manifest.resolve())}

    def path_of(self, clip_id: str) -> Path:
        path = Path(self._rows[clip_id]["path"])
        return path if path.is_absolute() else self.root / path



def _read_rows(manifest: Path) -> list[dict]:
    """The manifest's rows as dicts (id, path, labels, split, line), each checked; ManifestError names FILE: line N.

    Accepts a UTF-8 byte-order mark (Excel writes one) and surrounding spaces in header names, labels
    and splits. Paths are kept verbatim: a file name may start or end with a space (the audio reader
    says so when only the stripped name exists). Empty trailing fields (a trailing comma) are ignored.
    """
    if manifest.is_dir():
        raise ManifestError(
            f"{manifest}: is a folder; --manifest needs a CSV file with columns {', '.join(REQUIRED_COLUMNS)} "
            f"(for a folder per class use --dataset folder --data-dir {manifest})"
        )
    if not manifest.exists():
        raise ManifestError(f"{manifest}: manifest not found")
    line = 1
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:  # -sig: drops a byte-order mark
            reader = csv.reader(handle)
            header_fields = next(reader, None)
            header = [name.strip() for name in header_fields or []]
            missing = [column for column in REQUIRED_COLUMNS if column not in header]
            if missing:
                raise ManifestError(
                    f"{manifest}: line 1: missing column(s) {missing}; a manifest needs a header with "
                    f"{', '.join(REQUIRED_COLUMNS)} (found: {header or 'no header'})"
                )
            repeated = sorted({name for name in header if name and header.count(name) > 1})
            if repeated:
                raise ManifestError(f"{manifest}: line 1: column(s) {repeated} appear more than once in the header; keep one of each")
            named = [i for i, name in enumerate(header) if name]
            raw_rows = []
            line = reader.line_num + 1
            for fields in reader:
                first_line, line = line, reader.line_num + 1
                if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
                    continue  # a blank line
                if len(fields) > len(header):
                    extra = [value for value in fields[len(header):] if value.strip()]
                    if extra:
                        raise ManifestError(
                            f"{manifest}: line {first_line}: {len(fields)} fields but the header has {len(header)} "
                            f"(extra: {', '.join(repr(v) for v in extra[:3])}); quote a value that holds a comma "
                            f"(\"a,b.wav\"), or add the column to the header"
                        )
                absent = [header[i] for i in named if i >= len(fields)]
                if absent:  # short rows are fine when only unnamed (empty-header) columns lack a value
                    raise ManifestError(
                        f"{manifest}: line {first_line}: {len(fields)} field(s) but the header has {len(header)} "
                        f"(no value for {', '.join(absent)}); every row needs {', '.join(header)}"
                    )
                row = {header[i]: fields[i] for i in named}
                raw_rows.append((first_line, row))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc}); save the manifest as UTF-8 CSV") from exc
    except csv.Error as exc:
        raise ManifestError(f"{manifest}: line {line}: not readable as CSV ({exc})") from exc
    except OSError as exc:
        raise ManifestError(f"{manifest}: cannot read the manifest ({exc.strerror or exc})") from exc
    if not raw_rows:
        raise ManifestError(f"{manifest}: no rows below the header")
    rows, seen_ids = [], {}
    for line, raw in raw_rows:
        path = raw["path"]
        if not path.strip():
            raise ManifestError(f"{manifest}: line {line}: empty `path`")
        if "\x00" in path:
            raise ManifestError(f"{manifest}: line {line}: `path` {path!r} holds a NUL character; no file can have that name")
        split = raw["split"].strip().lower()
        if split not in SPLITS:
            raise ManifestError(f"{manifest}: line {line}: split {raw['split']!r} is not one of {', '.join(SPLITS)}")
        clip_id = raw.get("id", "").strip() or path
        if clip_id in seen_ids:
            raise ManifestError(f"{manifest}: line {line}: clip {clip_id!r} already listed on line {seen_ids[clip_id]}")
        seen_ids[clip_id] = line
        labels = [label.strip() for label in raw["labels"].split(LABEL_SEPARATOR) if label.strip()]
        if len(set(labels)) != len(labels):
            raise ManifestError(f"{manifest}: line {line}: label repeated in {raw['labels']!r}")
        rows.append({"id": clip_id, "path": path, "labels": labels, "split": split, "line": line})
    return rows


@DATASETS.register("manifest", "clips listed in a CSV manifest (path, labels, split)")
def _manifest_dataset(path: str | Path, **kwargs) -> ManifestDataset:
    return ManifestDataset(path, **kwargs)
