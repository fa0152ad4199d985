"""The benchmark grid: encoders x datasets x probes, as idempotent jobs that any number of workers share.

`run_grid(path)` walks the jobs in order (extract once per encoder/dataset, then one search per probe,
each ending with its seed runs), skips what is done, and waits for what another worker holds. Several
workers, on one machine or many, cooperate through the shared bank/run folders (extraction takes a
lock file) and one Optuna storage (PostgreSQL for several machines). Rerunning after a crash resumes:
banks resume chunk by chunk, searches trial by trial, seed runs are skipped once written.
`collect_results` writes one tidy table, a row per (encoder, dataset, probe, seed, split, metric).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from ._io import atomic_write_with, read_json
from ._lock import FileLock
from .bank import Bank, extract_bank
from .datasets import ManifestDataset, checked, create_dataset
from .encoders import create_encoder
from .errors import BankError
from .sweep import SweepConfig, default_storage, run_sweep
from .train import Run

PATH_KEYS = ("root", "data_dir", "manifest", "path")


class EncoderEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    key: str | None = None  # folder/table name; default: name
    args: dict = Field(default_factory=dict)  # e.g. checkpoint: PATH, layer: 6

    @property
    def label(self) -> str:
        return self.key or self.name


class DatasetEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # folder/table name
    manifest: str | None = None  # a CSV manifest, or
    dataset: str | None = None  # a registered dataset (benchmark key, folder, synthetic)
    options: dict = Field(default_factory=dict)  # its options (data_dir, k, seed, root, kind, ...)


class GridConfig(BaseModel):
    """A GRID.yaml file. Relative paths are relative to the file's folder."""

    model_config = ConfigDict(extra="forbid")

    name: str
    encoders: list[EncoderEntry]
    datasets: list[DatasetEntry]
    probes: list[str]
    trials: int = 50
    startup_trials: int | None = None
    epochs: int = 30
    seeds: int = 3
    storage: str | None = None  # default: sqlite:///<runs>/optuna.db
    banks: str = "banks"
    runs: str = "runs"
    results: str = "results"
    device: str = "cpu"
    batch_size: int | None = None  # encoder batch size for extraction

    @classmethod
    def load(cls, path: str | Path) -> tuple["GridConfig", Path]:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: grid file not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        return cls(**(raw or {})), path.resolve().parent


class Job(BaseModel):
    kind: str  # "extract" or "sweep"
    encoder: str
    dataset: str
    probe: str | None = None

    @property
    def key(self) -> str:
        return "/".join(x for x in (self.kind, self.encoder, self.dataset, self.probe) if x)


class Grid:
    """A loaded grid file: its jobs, their folders, and their state."""

    def __init__(self, path: str | Path) -> None:
        self.config, self.root = GridConfig.load(path)
        self.banks, self.runs, self.results = (self.root / p for p in (self.config.banks, self.config.runs, self.config.results))
        self.storage = self.config.storage or default_storage(self.runs)
        self.encoders = {e.label: e for e in self.config.encoders}
        self.datasets = {d.name: d for d in self.config.datasets}
        for kind, names in (("encoder", [e.label for e in self.config.encoders]), ("dataset", [d.name for d in self.config.datasets])):
            if len(set(names)) != len(names):
                raise ValueError(f"{path}: {kind} names must be unique (got {names}); give repeated encoders a `key`")

    def jobs(self) -> list[Job]:
        out = []
        for encoder in self.encoders:
            for dataset in self.datasets:
                out.append(Job(kind="extract", encoder=encoder, dataset=dataset))
                out += [Job(kind="sweep", encoder=encoder, dataset=dataset, probe=probe) for probe in self.config.probes]
        return out

    def bank_dir(self, job: Job) -> Path:
        return self.banks / job.encoder / job.dataset

    def sweep_dir(self, job: Job) -> Path:
        return self.runs / job.encoder / job.dataset / job.probe

    def study_name(self, job: Job) -> str:
        return f"{self.config.name}/{job.encoder}/{job.dataset}/{job.probe}"

    def sweep_config(self, probe: str) -> SweepConfig:
        return SweepConfig(probe=probe, trials=self.config.trials, startup_trials=self.config.startup_trials,
                           epochs=self.config.epochs, seeds=self.config.seeds, device=self.config.device)

    def open_dataset(self, name: str):
        entry = self.datasets[name]
        options = {k: (str(self.root / v) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in entry.options.items()}
        if entry.manifest:
            return ManifestDataset(self.root / entry.manifest, **options)
        if entry.dataset:
            return create_dataset(entry.dataset, **options)
        raise ValueError(f"dataset {name!r}: give `manifest` or `dataset`")

    def is_done(self, job: Job) -> bool:
        if job.kind == "extract":
            return _bank_complete(self.bank_dir(job))
        return (self.sweep_dir(job) / "summary.json").exists()

    def depends_done(self, job: Job) -> bool:
        return job.kind == "extract" or _bank_complete(self.banks / job.encoder / job.dataset)


def _bank_complete(folder: Path) -> bool:
    """True when the bank at `folder` holds every split and clip its extraction was asked for (the bank decides)."""
    try:
        return Bank(folder).is_complete()
    except (BankError, OSError, ValueError):  # no bank yet, or one being created
        return False


def _log_job(grid: Grid, job: Job, seconds: float) -> None:
    grid.runs.mkdir(parents=True, exist_ok=True)
    with open(grid.runs / "jobs.jsonl", "a") as handle:  # appends of one short line are atomic enough for a log
        handle.write(json.dumps({"job": job.key, "kind": job.kind, "seconds": round(seconds, 2), "host": socket.gethostname(),
                                 "finished": time.time()}) + "\n")


def run_grid(path: str | Path, poll_seconds: float = 10.0, progress: bool = True, log=print) -> pd.DataFrame:
    """Do every unfinished job of the grid (waiting for those other workers hold), then write the results table."""
    grid = Grid(path)
    while True:
        pending = [job for job in grid.jobs() if not grid.is_done(job)]
        if not pending:
            break
        progressed = False
        for job in pending:
            if grid.is_done(job) or not grid.depends_done(job):
                continue
            tick = time.perf_counter()
            if job.kind == "extract":
                lock = FileLock(grid.bank_dir(job).with_suffix(".lock"))
                if not lock.acquire():
                    continue
                try:
                    log(f"[{job.key}] extracting")
                    entry = grid.encoders[job.encoder]
                    encoder = create_encoder(entry.name, device=grid.config.device, **entry.args)
                    extract_bank(checked(grid.open_dataset(job.dataset)), encoder, grid.bank_dir(job), batch_size=grid.config.batch_size,
                                 progress=progress)
                finally:
                    lock.release()
            else:
                log(f"[{job.key}] searching ({grid.config.trials} trials)")
                summary = run_sweep(grid.bank_dir(job), grid.sweep_config(job.probe), grid.sweep_dir(job), storage=grid.storage,
                                    study_name=grid.study_name(job), progress=progress)
                if summary is None:
                    continue
            _log_job(grid, job, time.perf_counter() - tick)
            progressed = True
        if not progressed:
            time.sleep(poll_seconds)  # everything left is held by other workers
    return collect_results(grid)


def collect_results(grid: Grid) -> pd.DataFrame:
    """One row per (encoder, dataset, probe, seed, split, metric), written to results.parquet and results.csv."""
    rows = []
    for job in grid.jobs():
        if job.kind != "sweep" or not grid.is_done(job):
            continue
        folder = grid.sweep_dir(job)
        summary = read_json(folder / "summary.json")
        for seed in summary["seeds"]:
            metrics = Run(folder / "final" / f"seed={seed}").metrics
            for split in ("valid", "test"):
                for metric, value in metrics.split(split).items():
                    if isinstance(value, float):
                        rows.append({
                            "encoder": job.encoder, "dataset": job.dataset, "probe": job.probe, "seed": seed, "split": split,
                            "metric": metric, "value": value, "num_parameters": summary["num_parameters"],
                            "train_seconds": metrics.train_seconds, "search_seconds": summary["search_seconds"],
                            "lr": summary["best"]["lr"], "weight_decay": summary["best"]["weight_decay"],
                            "lr_edge": summary["edge"]["lr"], "weight_decay_edge": summary["edge"]["weight_decay"],
                            "trials_complete": summary["trials"]["complete"], "trials_pruned": summary["trials"]["pruned"],
                        })
    table = pd.DataFrame(rows)
    grid.results.mkdir(parents=True, exist_ok=True)
    atomic_write_with(grid.results / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write_with(grid.results / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


def grid_status(path: str | Path) -> dict:
    """Each job's state (done, running, waiting, pending), sweep trial counts, and an ETA for one worker."""
    grid = Grid(path)
    durations: dict[str, list[float]] = {}
    log_file = grid.runs / "jobs.jsonl"
    if log_file.exists():
        for line in log_file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            durations.setdefault(entry["kind"], []).append(entry["seconds"])
    mean = {kind: sum(v) / len(v) for kind, v in durations.items() if v}
    jobs, eta, known = [], 0.0, True
    for job in grid.jobs():
        state, trials = "pending", None
        if grid.is_done(job):
            state = "done"
        elif job.kind == "extract" and FileLock(grid.bank_dir(job).with_suffix(".lock")).held():
            state = "running"
        elif job.kind == "sweep":
            if not grid.depends_done(job):
                state = "waiting"
            else:
                try:
                    study = optuna.load_study(study_name=grid.study_name(job), storage=grid.storage)
                    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and not t.user_attrs.get("over_budget")]
                    running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
                    trials = len([t for t in finished if t.state.name in ("COMPLETE", "PRUNED")])
                    state = "running" if running else ("pending" if trials == 0 else "partial")
                except KeyError:  # no study yet
                    trials = 0
        if state != "done":
            if job.kind in mean:
                fraction = 1 - (trials or 0) / grid.config.trials if job.kind == "sweep" else 1.0
                eta += mean[job.kind] * max(fraction, 0.0)
            else:
                known = False
        jobs.append({"job": job.key, "state": state, "trials": trials})
    counts = {state: sum(j["state"] == state for j in jobs) for state in ("done", "running", "partial", "pending", "waiting")}
    return {"grid": grid.config.name, "jobs": jobs, "counts": counts, "eta_seconds": round(eta) if known or eta else None,
            "eta_complete": known}
