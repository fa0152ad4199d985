"""The benchmark grid: encoders x datasets x probes, as idempotent jobs that any number of workers share.

`run_grid(path)` walks the jobs in order (extract once per encoder/dataset, then one search per probe,
each ending with its seed runs), skips what is done, and waits for what another worker holds. The searches
of one bank run back to back on one loaded copy of it (`BankInMemory`: at most one bank in memory). Several
workers, on one machine or many, cooperate through the shared bank/run folders (extraction takes a
lock file) and one Optuna storage (PostgreSQL for several machines). Rerunning after a crash resumes:
banks resume chunk by chunk, searches trial by trial, seed runs are skipped once written.
`collect_results` writes one tidy table, a row per (encoder, dataset, probe, seed, split, metric).
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import optuna
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._io import atomic_write_with, read_json, write_json
from ._lock import FileLock
from .bank import Bank, LoadedBank, extract_bank
from .datasets import ManifestDataset, MixupAugmented, MixupConfig, checked, create_dataset
from .encoders import create_encoder
from .errors import BankError
from .probes import PROBES
from .sweep import SweepConfig, default_storage, run_sweep
from .sweep.search import WORKER_SETTINGS
from .train import Run

PATH_KEYS = ("root", "data_dir", "manifest", "path")


class EncoderEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    key: str | None = None  # folder/table name; default: name
    args: dict = Field(default_factory=dict)  # e.g. checkpoint: PATH, layer: 6

    _key_is_safe = field_validator("key")(lambda cls, v: v if v is None else safe_name(v, "encoder key"))

    @property
    def label(self) -> str:
        return self.key or safe_name(self.name, "encoder name (give a `key`)")


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def safe_name(name: str, what: str) -> str:
    """`name` if it can become one folder name (letters, digits, `._+-`, not starting with a dot), else ValueError.

    Names in a grid file become folders under `banks/` and `runs/`; a grid shared between machines is
    untrusted input, so no name may climb out of its folder (`..`, `/`) or hide (a leading dot).
    """
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits and . _ + - only (it becomes a folder name), "
                         "starting with a letter or digit")
    return name


class DatasetEntry(BaseModel):
    """One dataset of a grid, with its protocol: options, per-probe arguments, k-shot draws, mixup variants."""

    model_config = ConfigDict(extra="forbid")

    name: str  # folder/table name
    manifest: str | None = None  # a CSV manifest, or
    dataset: str | None = None  # a registered dataset (benchmark key, folder, synthetic)
    options: dict = Field(default_factory=dict)  # its options (data_dir, k, seed, root, kind, ...)
    probe_args: dict[str, dict] = Field(default_factory=dict)  # probe name or family -> arguments (the name wins)
    draws: list[int] = Field(default_factory=list)  # k-shot draws: one bank per value of the option `seed`
    augment_variants: int = Field(default=0, ge=0)  # mixup variants per training clip (BirdSet protocol: 5)
    augment_p: float = Field(default=0.9, ge=0.0, le=1.0)

    _name_is_safe = field_validator("name")(lambda cls, v: safe_name(v, "dataset name"))

    def cells(self) -> dict[str, int | None]:
        """Bank/run folder name -> k-shot draw (None without draws): `hsn-draw1`, `hsn-draw2`, ... or `hsn`."""
        return {f"{self.name}-draw{d}": d for d in self.draws} if self.draws else {self.name: None}


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
    trials_per_pass: int | None = Field(None, ge=1)  # trials trained together in a search; default: SweepConfig's

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
        # a cell is one bank per encoder: a dataset, or one k-shot draw of it
        self.cells = {cell: (entry, draw) for entry in self.config.datasets for cell, draw in entry.cells().items()}
        for kind, names in (("encoder", [e.label for e in self.config.encoders]), ("dataset", [d.name for d in self.config.datasets])):
            if len(set(names)) != len(names):
                raise ValueError(f"{path}: {kind} names must be unique (got {names}); give repeated encoders a `key`")

    def jobs(self) -> list[Job]:
        out = []
        for encoder in self.encoders:
            for dataset in self.cells:
                out.append(Job(kind="extract", encoder=encoder, dataset=dataset))
                out += [Job(kind="sweep", encoder=encoder, dataset=dataset, probe=probe) for probe in self.config.probes]
        return out

    def bank_dir(self, job: Job) -> Path:
        return self.banks / job.encoder / job.dataset

    def sweep_dir(self, job: Job) -> Path:
        return self.runs / job.encoder / job.dataset / job.probe

    def study_name(self, job: Job) -> str:
        return f"{self.config.name}/{job.encoder}/{job.dataset}/{job.probe}"

    def sweep_config(self, probe: str, dataset: str | None = None) -> SweepConfig:
        """The search of `probe` on cell `dataset`, with the dataset's probe arguments (by probe name, else family)."""
        probe_args = {}
        if dataset is not None:
            entry = self.cells[dataset][0]
            family = PROBES.spec(probe).family if probe in PROBES else None
            probe_args = dict(entry.probe_args.get(probe, entry.probe_args.get(family, {})))
        how = {} if self.config.trials_per_pass is None else {"trials_per_pass": self.config.trials_per_pass}
        return SweepConfig(probe=probe, probe_args=probe_args, trials=self.config.trials, startup_trials=self.config.startup_trials,
                           epochs=self.config.epochs, seeds=self.config.seeds, device=self.config.device, **how)

    def open_dataset(self, name: str):
        """The dataset of cell `name`: the entry's options (paths relative to the grid file), the draw's
        `seed`, and the mixup variants."""
        entry, draw = self.cells[name]
        options = {k: (str(self.root / v) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in entry.options.items()}
        if draw is not None:
            options["seed"] = draw
        if entry.manifest:
            data = ManifestDataset(self.root / entry.manifest, **options)
        elif entry.dataset:
            data = create_dataset(entry.dataset, **options)
        else:
            raise ValueError(f"dataset {entry.name!r}: give `manifest` or `dataset`")
        data = checked(data)
        if entry.augment_variants:
            data = MixupAugmented(data, MixupConfig(variants=entry.augment_variants, p=entry.augment_p))
        return data

    def is_done(self, job: Job) -> bool:
        finished = _bank_complete(self.bank_dir(job)) if job.kind == "extract" else (self.sweep_dir(job) / "summary.json").exists()
        if finished or self.identity_file(job).exists():
            self.claim(job)  # a result (or a started job) of another setting is refused, never reused
        return finished

    def depends_done(self, job: Job) -> bool:
        return job.kind == "extract" or _bank_complete(self.banks / job.encoder / job.dataset)

    def job_identity(self, job: Job) -> dict:
        """Everything a job's result depends on, so that a changed grid entry never reuses an old result:
        the encoder entry and the dataset entry (and draw) for an extraction, plus the search settings."""
        entry, draw = self.cells[job.dataset]
        identity = {"encoder": self.encoders[job.encoder].model_dump(mode="json"),
                    "dataset": entry.model_dump(mode="json", exclude={"probe_args"}), "draw": draw}
        if job.kind == "sweep":
            # settings left at their defaults are left out, so a new search option added to the library does not
            # make every earlier grid folder "another setting"; a grid file's own values are always recorded, bar how a
            # worker runs (device, trials per pass), which does not define the search
            identity["search"] = self.sweep_config(job.probe, job.dataset).model_dump(mode="json", exclude=set(WORKER_SETTINGS),
                                                                                      exclude_defaults=True)
        return identity

    def identity_file(self, job: Job) -> Path:
        return (self.bank_dir(job) if job.kind == "extract" else self.sweep_dir(job)) / "grid-job.json"

    def claim(self, job: Job) -> None:
        """Record the job's identity in its folder, or refuse when the folder holds another job's result."""
        path, identity = self.identity_file(job), self.job_identity(job)
        if path.exists():
            stored = read_json(path)
            if stored != identity:
                changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
                raise BankError(f"{path.parent}: this folder holds {job.kind} results of another setting of "
                                f"{job.key} ({', '.join(changed)} changed in the grid file). Give the changed entry a new "
                                "name or `key` (a new folder), or delete the folder to recompute it")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, identity)


def _bank_complete(folder: Path) -> bool:
    """True when the bank at `folder` holds every split and clip its extraction was asked for (the bank decides)."""
    try:
        return Bank(folder).is_complete()
    except (BankError, OSError, ValueError):  # no bank yet, or one being created
        return False


def _log_job(grid: Grid, job: Job, seconds: float, resumed: bool = False) -> None:
    """Append the job's duration to runs/jobs.jsonl once (two workers finishing one search both get here).

    `resumed`: the job was picked up part-done, so `seconds` is not what the job costs (left out of ETAs).
    """
    grid.runs.mkdir(parents=True, exist_ok=True)
    log_file = grid.runs / "jobs.jsonl"
    lock = FileLock(grid.runs / "jobs.jsonl.lock")
    for _ in range(100):
        if lock.acquire():
            break
        time.sleep(0.05)
    try:
        if job.key in _logged_durations(log_file):
            return
        with open(log_file, "a") as handle:
            handle.write(json.dumps({"job": job.key, "kind": job.kind, "seconds": round(seconds, 2), "resumed": resumed,
                                     "host": socket.gethostname(), "finished": time.time()}) + "\n")
    finally:
        lock.release()


def _logged_durations(log_file: Path) -> dict[str, dict]:
    """job key -> its first entry in jobs.jsonl (later duplicates, from older versions, ignored)."""
    entries: dict[str, dict] = {}
    if log_file.exists():
        for line in log_file.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entries.setdefault(entry.get("job"), entry)
    return entries


class BankInMemory:
    """The one bank a grid worker holds in memory: loaded when a search first needs it, kept for the searches of the
    same bank that follow, dropped before another is loaded (or an extraction runs), so memory holds at most one bank."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.folder: Path | None = None
        self._bank: LoadedBank | None = None

    def get(self, folder: Path) -> LoadedBank:
        """The bank at `folder`, loaded onto the device unless it is the one held."""
        if self.folder != folder or self._bank is None:
            self.release()
            self._bank = LoadedBank.load(folder, device=self.device)
            self.folder = folder
        return self._bank

    def release(self) -> None:
        self._bank, self.folder = None, None


def run_grid(path: str | Path, poll_seconds: float = 10.0, progress: bool = True, log=print) -> pd.DataFrame:
    """Do every unfinished job of the grid (waiting for those other workers hold), then write the results table.

    The searches of one bank run back to back on one loaded copy of it; a bank is loaded again only when this worker
    comes back to it (after waiting on another worker's trials elsewhere).
    """
    grid = Grid(path)
    held = BankInMemory(grid.config.device)
    said: dict[str, str] = {}  # job -> the last line printed about it: a waiting worker says each thing once

    def say(job: Job, message: str) -> None:
        if said.get(job.key) != message:
            said[job.key] = message
            log(message)

    while True:
        pending = [job for job in grid.jobs() if not grid.is_done(job)]
        if not pending:
            break
        # the held bank's searches first (a stable sort: otherwise the grid's order, a bank's probes back to back)
        pending.sort(key=lambda job: not (job.kind == "sweep" and grid.bank_dir(job) == held.folder))
        progressed = False
        for job in pending:
            if grid.is_done(job) or not grid.depends_done(job):
                continue
            tick = time.perf_counter()
            if job.kind == "extract":
                lock = FileLock(grid.bank_dir(job).with_suffix(".lock"))
                if not lock.acquire():
                    continue
                held.release()  # the encoder and its batches need the memory more than a bank we may not come back to
                try:
                    log(f"[{job.key}] extracting")
                    resumed = grid.bank_dir(job).exists()
                    entry = grid.encoders[job.encoder]
                    encoder = create_encoder(entry.name, device=grid.config.device, **entry.args)
                    grid.claim(job)
                    extract_bank(grid.open_dataset(job.dataset), encoder, grid.bank_dir(job), batch_size=grid.config.batch_size,
                                 progress=progress)
                finally:
                    lock.release()
                _log_job(grid, job, time.perf_counter() - tick, resumed=resumed)
            else:
                say(job, f"[{job.key}] searching ({grid.config.trials} trials)")
                grid.claim(job)
                summary = run_sweep(held.get(grid.bank_dir(job)), grid.sweep_config(job.probe, job.dataset), grid.sweep_dir(job), storage=grid.storage,
                                    study_name=grid.study_name(job), progress=progress, log=lambda message, job=job: log(f"[{job.key}] {message}"))
                if summary is None:
                    say(job, f"[{job.key}] waiting: other workers hold its last trials (a silent one is reclaimed after its grace period)")
                    continue
                # the search's own compute (trials and seed runs, whichever workers ran them), not this worker's share
                _log_job(grid, job, summary["search_seconds"] + sum(summary["train_seconds"]))
            progressed = True
        if not progressed:
            time.sleep(poll_seconds)  # everything left is held by other workers
    return collect_results(grid)


def collect_results(grid: Grid) -> pd.DataFrame:
    """One row per (encoder, dataset, draw, probe, seed, split, metric), written to results.parquet and
    results.csv; the per-cell summary (`summarize_results`) to cells.csv."""
    rows = []
    for job in grid.jobs():
        if job.kind != "sweep" or not grid.is_done(job):
            continue
        folder = grid.sweep_dir(job)
        summary = read_json(folder / "summary.json")
        entry, draw = grid.cells[job.dataset]
        for seed in summary["seeds"]:
            metrics = Run(folder / "final" / f"seed={seed}").metrics
            for split in ("valid", "test"):
                for metric, value in metrics.split(split).items():
                    if isinstance(value, float):
                        rows.append({
                            "encoder": job.encoder, "dataset": entry.name, "draw": draw, "probe": job.probe, "seed": seed,
                            "split": split,
                            "metric": metric, "value": value, "num_parameters": summary["num_parameters"],
                            "train_seconds": metrics.train_seconds, "search_seconds": summary["search_seconds"],
                            "lr": summary["best"]["lr"], "weight_decay": summary["best"]["weight_decay"],
                            "lr_edge": summary["edge"]["lr"], "weight_decay_edge": summary["edge"]["weight_decay"],
                            "trials_complete": summary["trials"]["complete"], "trials_pruned": summary["trials"]["pruned"],
                            "run": str(folder / "final" / f"seed={seed}"),  # where `patchprobe report` finds per-clip scores
                        })
    table = pd.DataFrame(rows)
    grid.results.mkdir(parents=True, exist_ok=True)
    atomic_write_with(grid.results / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    atomic_write_with(grid.results / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    cells = summarize_results(table)
    atomic_write_with(grid.results / "cells.csv", lambda tmp: cells.to_csv(tmp, index=False))
    return table


def summarize_results(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (encoder, dataset, probe, split, metric): mean and sd over k-shot draws of each draw's
    mean over seeds (the paper's aggregate for BirdSet), or over seeds where a dataset has no draws.

    Columns: mean, sd, n (draws, or seeds), seeds (per draw).
    """
    columns = ["encoder", "dataset", "probe", "split", "metric", "mean", "sd", "n", "seeds"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    keys = ["encoder", "dataset", "probe", "split", "metric"]
    with_draw = table.assign(draw=table["draw"].fillna(-1))
    per_draw = with_draw.groupby(keys + ["draw"], as_index=False).agg(value=("value", "mean"), seeds=("seed", "nunique"))
    rows = []
    for key, group in per_draw.groupby(keys):
        drawn = (group["draw"] >= 0).any()
        values = group["value"] if drawn else with_draw.set_index(keys).loc[key, "value"]
        values = pd.Series(values, dtype=float)
        rows.append({**dict(zip(keys, key)), "mean": values.mean(), "sd": values.std(ddof=1) if len(values) > 1 else 0.0,
                     "n": len(values), "seeds": int(group["seeds"].min())})
    return pd.DataFrame(rows, columns=columns)


def grid_status(path: str | Path) -> dict:
    """Each job's state (done, running, waiting, pending), sweep trial counts, and an ETA for one worker."""
    grid = Grid(path)
    durations: dict[str, list[float]] = {}
    for entry in _logged_durations(grid.runs / "jobs.jsonl").values():
        if not entry.get("resumed"):  # a job picked up part-done took less than a job costs
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
