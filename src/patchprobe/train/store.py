"""The run folder: one trained probe, its config, its scores and the bank it was trained on, as a typed store.

    RUN/config.json         {"train": TrainConfig, "probe": architecture, "bank": BankIdentity, "library_version",
                             "lr_selection": LrSelection or null}
    RUN/metrics.json        {"<split>": {metric: value}, "probe", "num_parameters", "train_seconds", "diverged",
                             "unstable", "warnings", "peak_epoch", "optimizer_steps"}
    RUN/history.json        [{"epoch", "loss", "valid_<metric>" (with a valid split)}, ...]
    RUN/probe.safetensors   the probe's state dict
    RUN/class_metrics.json  {"<split>": ClassMetrics (AP, AUROC, support per class; confusion matrix if multi-class)}
    RUN/scores.npz          per evaluated split: "<split>/clip_ids" (N,), "<split>/labels" (N, C) uint8,
                            "<split>/scores" (N, C) float16 probabilities (sigmoid; softmax if multi-class)
    RUN/thresholds.json     DecisionThresholds: per-class decision thresholds fitted on valid

`Run` is the only code that reads or writes these files. A run is written whole into a temporary
sibling folder and renamed into place, so a reader (or a crash) sees the old run or the new one,
never a mix. A lock file beside the folder (`.RUN.lock`) keeps two processes from writing one run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file

from .._io import write_json
from .._lock import FileLock
from .._version import __version__
from ..bank import BankIdentity
from ..errors import RunError
from ..probes import Probe, create_probe
from .core import ClassMetrics, DecisionThresholds, LrSelection, SplitScores, TrainConfig, TrainResult, lr_grid

CONFIG, METRICS, HISTORY, WEIGHTS = "config.json", "metrics.json", "history.json", "probe.safetensors"
CLASS_METRICS, SCORES, THRESHOLDS = "class_metrics.json", "scores.npz", "thresholds.json"
RUN_FILES = (CONFIG, METRICS, HISTORY, WEIGHTS, CLASS_METRICS, SCORES, THRESHOLDS)


class ProbeArchitecture(BaseModel):
    """What `create_probe` needs to rebuild the trained probe (`config.json` -> "probe")."""

    model_config = ConfigDict(extra="allow")

    name: str
    token_dim: int
    num_classes: int
    global_dim: int = 0
    freq_tokens: int = 0
    probe_args: dict = {}
    num_parameters: int


class RunRecord(BaseModel):
    """The contents of `config.json`."""

    model_config = ConfigDict(extra="allow")

    train: TrainConfig
    probe: ProbeArchitecture
    bank: BankIdentity
    library_version: str = ""
    lr_selection: LrSelection | None = None  # how lr "auto" chose `train.lr`; None when the rate was given


class RunMetrics(BaseModel):
    """The contents of `metrics.json`: scores per evaluated split plus training facts.

    The evaluated splits (valid, test, ...) are the dict-valued entries; a diverged run has none.
    """

    model_config = ConfigDict(extra="allow")

    probe: str
    num_parameters: int
    train_seconds: float
    diverged: str | None = None  # the loss became non-finite: training stopped, no scores
    unstable: str | None = None  # the loss stayed finite but rose (see `train.trainer.loss_rise`): scores kept, not trusted
    warnings: list[str] = []  # e.g. too few optimiser steps
    peak_epoch: int | None = None  # epoch (from 1) where the valid metric peaked; training still ran every epoch
    optimizer_steps: int | None = None

    @property
    def splits(self) -> dict[str, dict[str, Any]]:
        """Evaluated split -> {metric: value}."""
        return {name: value for name, value in (self.model_extra or {}).items() if isinstance(value, dict)}

    def split(self, name: str) -> dict[str, Any]:
        """The metrics of split `name` ({} when the run diverged or the bank has no such split)."""
        return self.splits.get(name, {})

    def score(self, split: str, metric: str) -> float | None:
        """One score; None when the run diverged."""
        return None if self.diverged else self.split(split)[metric]

    def to_json(self) -> dict:
        # evaluated splits first, as runs have always been written
        return {**self.splits, "probe": self.probe, "num_parameters": self.num_parameters,
                "train_seconds": self.train_seconds, "diverged": self.diverged, "unstable": self.unstable,
                "warnings": self.warnings, "peak_epoch": self.peak_epoch, "optimizer_steps": self.optimizer_steps}


def _read(path: Path, model: type[BaseModel] | None) -> Any:
    """A run file parsed (and validated as `model`); RunError naming the file when it is unreadable."""
    try:
        raw = json.loads(path.read_text())
        return raw if model is None else model.model_validate(raw)
    except (OSError, ValueError, ValidationError) as exc:
        detail = exc.errors()[0] if isinstance(exc, ValidationError) else exc
        raise RunError(f"{path}: unreadable or not a patchprobe run file ({detail}); train the run again into "
                       f"{path.parent} with --overwrite (overwrite=True)") from None


class Run:
    """A finished run folder, read lazily and typed.

    Open one with `Run(folder)` (raises RunError unless `Run.is_finished(folder)`); write one with `Run.write`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise RunError(f"{self.root}: no such run folder; train one with `patchprobe train --out {self.root}`")
        missing = [name for name in (CONFIG, METRICS, WEIGHTS) if not (self.root / name).exists()]
        if missing:
            raise RunError(f"{self.root}: not a finished run folder (missing {', '.join(missing)}); "
                           "train it with `patchprobe train --out` (an interrupted run leaves no folder)")
        self._record: RunRecord | None = None
        self._metrics: RunMetrics | None = None

    # ---- reading -------------------------------------------------------------------------------------------------

    @staticmethod
    def is_finished(root: str | Path) -> bool:
        """True when `root` holds a finished run (its metrics are written)."""
        return (Path(root) / METRICS).is_file()

    @classmethod
    def find(cls, root: str | Path) -> Iterator["Run"]:
        """Every finished run under `root` (recursively, `root` itself included), in sorted path order.

        Hidden folders are skipped: they hold the staging copies of runs being written (or left by a crash).
        """
        root = Path(root)
        for metrics in sorted(root.rglob(METRICS)):
            if not any(part.startswith(".") for part in metrics.parent.relative_to(root).parts):
                yield cls(metrics.parent)

    @property
    def record(self) -> RunRecord:
        if self._record is None:
            self._record = _read(self.root / CONFIG, RunRecord)
        return self._record

    @property
    def config(self) -> TrainConfig:
        """The TrainConfig the probe was trained with."""
        return self.record.train

    @property
    def architecture(self) -> ProbeArchitecture:
        return self.record.probe

    @property
    def bank(self) -> BankIdentity:
        """The identity of the bank this run was trained on (path, encoder, dataset, fingerprints, classes)."""
        return self.record.bank

    @property
    def metrics(self) -> RunMetrics:
        if self._metrics is None:
            self._metrics = _read(self.root / METRICS, RunMetrics)
        return self._metrics

    @property
    def history(self) -> list[dict]:
        """Loss (and valid metric) per epoch: [{"epoch", "loss", "valid_<metric>"}, ...]."""
        return _read(self.root / HISTORY, None) if (self.root / HISTORY).exists() else []

    @property
    def lr_selection(self) -> LrSelection | None:
        """How lr "auto" chose the rate (grid, scores, chosen, edge), or None when the rate was given."""
        return self.record.lr_selection

    @property
    def thresholds(self) -> DecisionThresholds:
        """Per-class decision thresholds on the probabilities of `scores` (F1-optimal on valid; argmax for multi-class)."""
        return _read(self._written_by_current(THRESHOLDS), DecisionThresholds)

    def class_metrics(self, split: str) -> ClassMetrics:
        """AP, AUROC and support per class (and the confusion matrix for multi-class data) on `split`."""
        table = _read(self._written_by_current(CLASS_METRICS), None)
        if split not in table:
            raise RunError(f"{self.root / CLASS_METRICS}: no split {split!r} (has {', '.join(table) or 'none'})")
        return ClassMetrics.model_validate(table[split])

    def scores(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The probe's outputs per clip on `split`: (clip_ids (N,) str, labels (N, C) uint8, scores (N, C) float32).

        Scores are probabilities (sigmoid per class; softmax for multi-class banks), stored as float16.
        """
        path = self._written_by_current(SCORES)
        try:
            with np.load(path, allow_pickle=False) as stored:
                if f"{split}/scores" not in stored:
                    held = sorted({key.split("/")[0] for key in stored.files})
                    raise RunError(f"{path}: no split {split!r} (has {', '.join(held) or 'none'})")
                return (stored[f"{split}/clip_ids"], stored[f"{split}/labels"], stored[f"{split}/scores"].astype(np.float32))
        except (OSError, ValueError) as exc:
            raise RunError(f"{path}: unreadable ({exc}); train the run again into {self.root} with --overwrite") from None

    def _written_by_current(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            reason = "the run diverged" if self.metrics.diverged else "the run was written by an older patchprobe"
            raise RunError(f"{path}: missing ({reason}); train the run again into {self.root} with --overwrite (overwrite=True)")
        return path

    @property
    def finished(self) -> bool:
        return self.is_finished(self.root)

    def matches(self, config: TrainConfig, bank: BankIdentity | None = None) -> bool:
        """True when this run trained exactly `config` (and, given `bank`, on the same bank data).

        A config with lr "auto" matches a run whose rate was chosen by "auto" over the same grid.
        """
        if config.lr == "auto" and config.solver == "adamw":
            selection = self.lr_selection
            if selection is None or selection.grid != lr_grid(config) or self.config != config.model_copy(update={"lr": self.config.lr}):
                return False
        elif self.config != config:
            return False
        return bank is None or self.bank.same_data(bank)

    def probe(self, device: str | torch.device = "cpu") -> Probe:
        """Rebuild the trained probe on `device`, in eval mode."""
        arch = self.architecture
        probe = create_probe(arch.name, arch.token_dim, arch.num_classes, arch.global_dim, arch.freq_tokens, **arch.probe_args)
        try:
            state = load_file(str(self.root / WEIGHTS))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise RunError(f"{self.root / WEIGHTS}: cannot read the probe weights ({exc}); train the run again") from None
        probe.load_state_dict(state)
        return probe.to(device).eval()

    def result(self, device: str | torch.device = "cpu") -> TrainResult:
        """This run as the TrainResult training returned (probe rebuilt on `device`, `reused` set)."""
        metrics = self.metrics
        return TrainResult(config=self.config, probe=self.probe(device), metrics=metrics.splits, history=self.history,
                           seconds=metrics.train_seconds, diverged=metrics.diverged, reused=True, unstable=metrics.unstable,
                           warnings=list(metrics.warnings), peak_epoch=metrics.peak_epoch, optimizer_steps=metrics.optimizer_steps,
                           lr_selection=self.lr_selection)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    # ---- writing -------------------------------------------------------------------------------------------------

    @staticmethod
    def lock(root: str | Path) -> FileLock:
        """The lock that keeps two processes from writing the run at `root` (a sibling file: the folder is replaced)."""
        root = Path(root)
        return FileLock(root.parent / f".{root.name}.lock")

    @staticmethod
    def check_writable(root: str | Path, config: TrainConfig, bank: BankIdentity, overwrite: bool = False) -> "Run | None":
        """What writing `config` to `root` would do: the existing identical finished run to reuse, or None to train.

        Raises RunError when `root` holds a different finished run (unless `overwrite`) or is a folder
        with other content than a run's (never replaced: it may be the user's data).
        """
        root = Path(root)
        if Run.is_finished(root):
            try:
                existing = Run(root)
                if existing.matches(config, bank):
                    return existing
                held = f"a finished run of another setting ({_describe(existing.config)} on {existing.bank.dataset}/{existing.bank.encoder})"
            except RunError as exc:  # a damaged run (e.g. left by an older version's interrupted save)
                held = f"a damaged run ({exc})"
            if not overwrite:
                raise RunError(f"{root}: holds {held}; pass --overwrite (overwrite=True) to replace it, or choose another "
                               "output folder")
            return None
        if root.exists() and not root.is_dir():
            raise RunError(f"{root}: exists and is not a folder; choose another output folder")
        if root.is_dir():
            foreign = [p.name for p in root.iterdir() if p.name not in RUN_FILES]
            if foreign:
                raise RunError(f"{root}: is not empty and not a run folder (holds {', '.join(sorted(foreign)[:5])}); "
                               "choose a new or empty output folder")
        return None

    @classmethod
    def write(cls, root: str | Path, result: TrainResult, bank: BankIdentity) -> "Run":
        """Write a trained result as the run folder `root`, replacing what was there in one rename.

        The caller holds `Run.lock(root)` and has called `check_writable`. Files go to a temporary sibling
        folder, are flushed to disk, and the folder is renamed into place; a crash at any point leaves
        the old run (or nothing) at `root`, plus a temporary folder the next write removes.
        """
        root = Path(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            _write_files(staging, result, bank)
            _fsync_dir(staging)
            if root.exists():
                # rename() cannot replace a non-empty folder: move the old run aside first, then drop it.
                retired = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(root, retired)
                os.rename(staging, root)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(staging, root)
            _fsync_dir(root.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(root)


def _describe(config: TrainConfig) -> str:
    return f"probe {config.probe}, lr {config.lr_text}, weight decay {config.weight_decay:g}, seed {config.seed}, {config.epochs} epochs"


def _write_files(folder: Path, result: TrainResult, bank: BankIdentity) -> None:
    probe = result.probe
    architecture = {"name": result.config.probe, **probe.architecture(), "probe_args": result.config.probe_args,
                    "num_parameters": probe.num_parameters()}
    record = {"train": result.config.model_dump(mode="json"), "probe": architecture, "bank": bank.model_dump(),
              "library_version": __version__,
              "lr_selection": None if result.lr_selection is None else result.lr_selection.model_dump(mode="json")}
    metrics = RunMetrics(**result.metrics, probe=result.config.probe, num_parameters=architecture["num_parameters"],
                         train_seconds=result.seconds, diverged=result.diverged, unstable=result.unstable,
                         warnings=result.warnings, peak_epoch=result.peak_epoch, optimizer_steps=result.optimizer_steps)
    state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    _save_weights(state, folder / WEIGHTS)
    write_json(folder / HISTORY, result.history)
    if result.class_metrics:
        write_json(folder / CLASS_METRICS, {name: table.model_dump() for name, table in result.class_metrics.items()})
    if result.scores:
        _save_scores(result.scores, folder / SCORES)
    if result.thresholds is not None:
        write_json(folder / THRESHOLDS, result.thresholds.model_dump())
    write_json(folder / CONFIG, record)
    write_json(folder / METRICS, metrics.to_json())


def _save_scores(scores: dict[str, SplitScores], path: Path) -> None:
    arrays = {}
    for name, split in scores.items():
        arrays[f"{name}/clip_ids"] = np.asarray(split.clip_ids, dtype=str)
        arrays[f"{name}/labels"] = np.asarray(split.labels, dtype=np.uint8)
        arrays[f"{name}/scores"] = np.asarray(split.scores, dtype=np.float16)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    _fsync_file(path)


def _save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path))
    _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Temporary folders of earlier writes of `root` that crashed (the caller holds the lock, so none is live)."""
    for pattern in (f".{root.name}.tmp-*", f".{root.name}.old-*"):
        for leftover in root.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
