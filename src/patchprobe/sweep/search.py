"""The paper's search for one (bank, probe): Sobol then TPE over learning rate and weight decay, a
successive-halving pruner on the validation score, then the best setting retrained with several seeds.

Optuna is the engine and its storage the coordination: a SQLite file by default, or a PostgreSQL URL
that any number of worker processes on any number of machines join (`patchprobe sweep ...` again,
anywhere). Each worker asks for trials until the study holds `trials` live ones; trial numbers are
handed out by the storage, so the budget is exact however many workers race. A worker that dies
leaves a RUNNING trial whose heartbeat stops; once it has been silent for the grace period, any worker
marks it failed and runs a fresh one, so finished trials are never lost and the budget still completes.
A worker with nothing left to start waits for the trials others hold (reclaiming silent ones) when asked
to (`wait_seconds`), so the last worker alive always finishes the study. A database outage is waited out
(`db_retry_seconds`, see `storage.py`); equal settings are never trained twice in one study.

A worker trains its trials in passes of up to `trials_per_pass`: it asks the study for that many, trains them as one
`train_probes` call (one stacked model on the vectorised trainer), reports each trial's validation score to that trial
and stops the ones the pruner prunes, then tells each its own result. To the study a pass looks like that many workers
running in step; each trial keeps its own heartbeat.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import optuna
import torch
import scipy.stats
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._io import atomic_write_with, write_json
from ..bank import LoadedBank
from ..errors import SweepIncompleteError
from ..probes import PROBES
from ..train import LOSSES, Run, TrainConfig, compute_metrics, evaluate_scores, fit, loss_name, predict, primary_metric, train_probes
from .grid import WAIT_FOR_OTHER_WRITERS
from .storage import Heartbeat, RetryingStorage, redact, redact_in

# Learning-rate ranges (log-uniform) per probe, declared where each probe is registered (`lr_range`):
# a decade or more around the best rates measured on the demo data. Weight decay: the paper's range.
# (`SweepConfig.lr_bounds` asks the registry, so probes registered later get theirs too.)
LR_RANGES: dict[str, tuple[float, float]] = {name: PROBES.spec(name).lr_range for name in PROBES.names()}
WEIGHT_DECAY_RANGE = (1e-5, 5e-4)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
EDGE_FRACTION = 0.1  # of the log-range: a best value this close to a bound is flagged
DB_RETRY_SECONDS = 120.0  # how long a worker waits out a database outage before giving up (--db-retry-seconds)
MAX_REDRAWS = 20  # attempts at a setting no other trial of the study has
# Trials a worker asks for and trains in one pass (--trials-per-pass). 1: with the paper's pruner, a pass of 4 measured
# 1.52x the time of one trial at a time for protobin and 1.39x faster for mhca (8 trials on the demo bank); without
# pruning passes are faster (docs/sweeps.md, "Trials per pass").
TRIALS_PER_PASS = 1
# What a study's settings may differ in between workers: how each worker runs, not what the search is.
WORKER_SETTINGS = ("heartbeat_seconds", "grace_seconds", "device", "trials_per_pass")


class SweepConfig(BaseModel):
    """One search: saved as `sweep.json` in its folder and in the study's attributes (`sweep_config`)."""

    model_config = ConfigDict(extra="forbid")

    probe: str
    probe_args: dict = Field(default_factory=dict)
    trials: int = Field(50, ge=1)  # a finished study can be extended by a larger value; never shrunk
    startup_trials: int | None = Field(None, ge=0)  # Sobol trials before TPE; default: half of `trials` at creation
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=1)
    seeds: int = Field(3, ge=1)  # final retraining of the best setting
    lr_range: tuple[float, float] | None = None  # default: the probe's registered lr_range
    weight_decay_range: tuple[float, float] = WEIGHT_DECAY_RANGE
    prune: bool = True
    # Successive halving (Optuna's SuccessiveHalvingPruner) on the validation score, reported every
    # `report_every` epochs (default epochs // 10, at least 1). "auto": no pruning until a trial completes, then
    # min_resource = max(1, its last reported epoch // 100), i.e. 1 for runs under 200 epochs.
    prune_reduction_factor: int = Field(4, ge=2)
    prune_min_resource: int | Literal["auto"] = "auto"
    prune_min_early_stopping_rate: int = Field(0, ge=0)
    report_every: int | None = Field(None, ge=1)
    sampler_seed: int = 0
    heartbeat_seconds: int = Field(30, ge=1)  # a worker silent for `grace_seconds` is taken for dead
    grace_seconds: int = Field(120, ge=2)
    device: str = "cpu"
    # trials asked for and trained together, as one stacked model; each is reported, pruned and told on its own
    trials_per_pass: int = Field(TRIALS_PER_PASS, ge=1)

    @model_validator(mode="after")
    def _grace_outlasts_heartbeat(self) -> "SweepConfig":
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(f"grace_seconds ({self.grace_seconds}) must exceed heartbeat_seconds ({self.heartbeat_seconds}), "
                             "or live workers' trials are taken for dead (--grace-seconds, --heartbeat-seconds)")
        return self

    def lr_bounds(self) -> tuple[float, float]:
        if self.lr_range:
            return tuple(self.lr_range)  # type: ignore[return-value]
        return PROBES.spec(self.probe).lr_range

    def n_startup(self) -> int:
        return self.trials // 2 if self.startup_trials is None else self.startup_trials

    def report_interval(self) -> int:
        """Epochs between validation reports to the pruner."""
        return self.report_every or max(1, self.epochs // 10)

    def pruner_settings(self) -> dict:
        """The pruning protocol as saved with the study and its summary."""
        if not self.prune:
            return {"pruner": "none"}
        return {"pruner": "successive_halving", "reduction_factor": self.prune_reduction_factor,
                "min_resource": self.prune_min_resource, "min_early_stopping_rate": self.prune_min_early_stopping_rate,
                "report_every_epochs": self.report_interval()}

    def make_pruner(self) -> optuna.pruners.BasePruner:
        if not self.prune:
            return optuna.pruners.NopPruner()
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.prune_min_resource, reduction_factor=self.prune_reduction_factor,
                                                      min_early_stopping_rate=self.prune_min_early_stopping_rate)


def _derived_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (the sampler seed, a trial number, an attempt)."""
    value = 0x9E3779B9
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x7F4A7C15) % (2**32)
    return value


def _setting(params: dict, names) -> tuple:
    """The comparable form of a trial's setting: its values at 12 significant digits."""
    return tuple(float(f"{params[name]:.12g}") if name in params else None for name in names)


class SobolThenTPE(BaseSampler):
    """The paper's sampler: scrambled Sobol points for the first `n_startup` trials, then TPE.

    Startup trial k takes row k of one seeded, scrambled Sobol table (dimension i = `param_names[i]`,
    mapped onto the parameter's range, in log space for log ranges). The point depends only on the trial
    number the storage hands out, so concurrent workers never draw the same point, and the first trial
    is a Sobol point too.

    TPE trial k draws with a seed derived from (seed, k): two workers sampling at the same moment from the
    same history draw different points, and a trial that replaces a failed one does not repeat its point.
    A draw equal to another trial's setting is drawn again (up to MAX_REDRAWS times).
    """

    def __init__(self, n_startup: int, param_names: tuple[str, ...] = ("lr", "weight_decay"), seed: int = 0) -> None:
        self.n_startup = n_startup
        self.seed = seed
        self._names = param_names
        self._dims = {name: i for i, name in enumerate(param_names)}
        rows = max(1, n_startup)
        sobol = scipy.stats.qmc.Sobol(d=len(param_names), scramble=True, seed=seed)
        self._table = sobol.random_base2(max(0, math.ceil(math.log2(rows))))[:rows]
        self._tpe = self._tpe_for(0, 0)  # only for the search space (deterministic) and the trial hooks (stateless)
        self._drawing: dict[tuple[int, int], TPESampler] = {}

    def _tpe_for(self, number: int, attempt: int) -> TPESampler:
        return TPESampler(n_startup_trials=0, seed=_derived_seed(self.seed, number, attempt), multivariate=True, constant_liar=True)

    def _trial_tpe(self, number: int, attempt: int = 0) -> TPESampler:
        if (number, attempt) not in self._drawing:
            self._drawing = {key: s for key, s in self._drawing.items() if key[0] == number}  # keep the current trial's only
            self._drawing[(number, attempt)] = self._tpe_for(number, attempt)
        return self._drawing[(number, attempt)]

    def _startup(self, trial: FrozenTrial) -> bool:
        return trial.number < self.n_startup

    def infer_relative_search_space(self, study, trial):
        return {} if self._startup(trial) else self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self._startup(trial) or not search_space:
            return {}
        names = sorted(search_space)
        taken = {_setting(t.params, names) for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params}
        params = {}
        for attempt in range(MAX_REDRAWS):
            params = self._trial_tpe(trial.number, attempt).sample_relative(study, trial, search_space)
            if _setting(params, names) not in taken:
                break
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        if not self._startup(trial) or param_name not in self._dims:
            return self._trial_tpe(trial.number).sample_independent(study, trial, param_name, param_distribution)
        u = float(self._table[trial.number, self._dims[param_name]])
        low, high = param_distribution.low, param_distribution.high
        if getattr(param_distribution, "log", False):
            return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return low + u * (high - low)

    def before_trial(self, study, trial):
        self._tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


@contextlib.contextmanager
def optuna_quietly():
    """Optuna at WARNING verbosity, its ExperimentalWarning (heartbeats) silenced, for the duration only.

    We rely on heartbeats' current behaviour (tested) and keep them ourselves outside `Study.optimize` (whose
    warning about that is silenced too); a user's own Optuna settings are restored on exit.
    """
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def default_storage(folder: str | Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'optuna.db'}"


def open_study(config: SweepConfig, storage: str, study_name: str, db_retry_seconds: float = DB_RETRY_SECONDS,
               log: Callable[[str], None] | None = None) -> optuna.Study:
    """Create or join the study `study_name` in `storage` (its settings must match an existing one's; a larger
    `trials` extends it). The study's storage retries through database outages for `db_retry_seconds`."""
    with optuna_quietly():
        return _open_study(config, storage, study_name, db_retry_seconds, log)[0]


def _open_study(config: SweepConfig, storage: str, study_name: str, db_retry_seconds: float = DB_RETRY_SECONDS,
                log: Callable[[str], None] | None = None) -> tuple[optuna.Study, SweepConfig]:
    """The study and the settings it runs with: `config` with the study's saved startup_trials (fixed at creation,
    so that extending the budget keeps the Sobol phase) and a larger budget saved when `config` extends it."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
    retrying = RetryingStorage(None, storage, db_retry_seconds, log)  # type: ignore[arg-type]
    for attempt in range(6):
        # workers started together on a fresh database race to create Optuna's tables and the study:
        # the losers see "already exists" errors and simply try again
        try:
            rdb = retrying.retry(lambda: optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=config.heartbeat_seconds,
                                                                    grace_period=config.grace_seconds))
            retrying.inner = optuna.storages._CachedStorage(rdb)
            study = optuna.create_study(study_name=study_name, storage=retrying, direction="maximize", load_if_exists=True,
                                        sampler=SobolThenTPE(config.n_startup(), seed=config.sampler_seed), pruner=config.make_pruner())
            break
        except SQLAlchemyError as exc:
            if attempt == 5:
                raise ValueError(f"study {study_name!r} in {redact(storage)}: {redact_in(str(exc).splitlines()[0], storage)}") from None
            time.sleep(0.5 * (attempt + 1))
    saved = study.user_attrs.get("sweep_config")
    mine = _resolved(config)
    if saved is None:
        study.set_user_attr("sweep_config", mine.model_dump(mode="json"))
        study.set_user_attr("pruner", mine.pruner_settings())
        return study, mine
    stored = _resolved(SweepConfig(**{k: v for k, v in saved.items() if k not in WORKER_SETTINGS}))
    wanted = mine if config.startup_trials is not None else mine.model_copy(update={"startup_trials": stored.startup_trials})
    if _search_settings(stored) != _search_settings(wanted):
        changed = sorted(k for k, v in _search_settings(wanted).items() if _search_settings(stored).get(k) != v)
        raise ValueError(f"study {study_name!r} in {redact(storage)} was started with other settings ({', '.join(changed)} differ; "
                         f"saved: {_search_settings(stored)}); use the same settings or another --study-name")
    if wanted.trials < stored.trials:
        raise ValueError(f"study {study_name!r} in {redact(storage)} has a budget of {stored.trials} trials; --trials {wanted.trials} "
                         f"cannot shrink it: use --trials {stored.trials} (or more, to extend it)")
    if wanted.trials > stored.trials:
        study.set_user_attr("sweep_config", wanted.model_dump(mode="json"))  # the extended budget, for every worker
        if log:
            log(f"study {study_name!r}: budget extended from {stored.trials} to {wanted.trials} trials (finished trials kept)")
    study.sampler = SobolThenTPE(wanted.n_startup(), seed=wanted.sampler_seed)
    return study, wanted


def _resolved(config: SweepConfig) -> SweepConfig:
    """`config` with its defaults that depend on other settings written out (startup trials, report interval)."""
    return config.model_copy(update={"startup_trials": config.n_startup(), "report_every": config.report_interval()})


def _search_settings(config: SweepConfig) -> dict:
    """The settings that define a study, bar its budget; how a worker runs (heartbeat, device) may differ between workers."""
    return {k: v for k, v in config.model_dump(mode="json").items() if k not in (*WORKER_SETTINGS, "trials")}


def _count_live(study: optuna.Study, below: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=LIVE)
    return sum(1 for t in trials if below is None or t.number < below)


class _Duplicate(Exception):
    """Raised inside a trial whose setting another live trial of the study already has."""

    def __init__(self, number: int) -> None:
        super().__init__(f"same setting as trial {number}")
        self.number = number


class _Held:
    """A trial this worker holds during a pass: its heartbeat (running from just after the ask until it is told), and its
    share of the pass's wall-clock time so far."""

    def __init__(self, trial: optuna.Trial, heartbeat: Heartbeat) -> None:
        self.trial, self.heartbeat = trial, heartbeat
        self.seconds = 0.0
        self.told = False
        self._beating = True

    def tell(self, study: optuna.Study, state: TrialState, value: float | None, log: Callable[[str], None]) -> None:
        _tell(study, self.trial, state, value, log)
        self.told = True
        self.stop()

    def stop(self) -> None:
        if self._beating:
            self._beating = False
            self.heartbeat.__exit__(None, None, None)


class _TrialTrainer:
    """Trains the trials of one pass on `bank`: their settings as one `train_probes` call (the vectorised trainer stacks
    them), each trial's validation score reported to that trial every `report_every` epochs, the ones its pruner prunes
    stopped there and told PRUNED at once, the others told COMPLETE at the end with their own score."""

    def __init__(self, config: SweepConfig, bank: LoadedBank) -> None:
        self.config = config
        self.train_split, self.valid = bank.train, bank["valid"]
        self.multilabel = bank.multilabel
        self.metric = primary_metric(self.multilabel)
        self.loss_fn = LOSSES[loss_name(TrainConfig(probe=config.probe), self.multilabel)]
        self.labels = self.valid.labels.cpu()

    def score(self, probe) -> tuple[float, float, dict]:
        """(the search's score, 0.0 when not finite; the valid loss; every valid metric) of a probe on the valid split."""
        logits = predict(probe, self.valid)
        metrics = evaluate_scores(self.labels.numpy(), logits, self.multilabel, self.valid.meta.metrics or None)
        value = metrics[self.metric]
        return (value if math.isfinite(value) else 0.0), self.loss(logits), metrics

    def report_score(self, probe) -> tuple[float, np.ndarray]:
        """The search's score alone (what the pruner is told after an epoch; the same number as `score`'s), and the
        logits (N, C) it came from."""
        logits = predict(probe, self.valid)
        value = compute_metrics(self.labels.numpy(), logits, [self.metric])[self.metric]
        return (value if math.isfinite(value) else 0.0), logits

    def loss(self, logits: np.ndarray) -> float:
        """The training loss on the valid split, from its logits (N, C)."""
        return float(self.loss_fn(torch.from_numpy(logits), self.labels))

    def setting(self, trial: optuna.Trial) -> TrainConfig:
        """The trial's training run, from its sampled lr and weight decay; _Duplicate when another live trial has them."""
        config = self.config
        lr = trial.suggest_float("lr", *config.lr_bounds(), log=True)
        weight_decay = trial.suggest_float("weight_decay", *config.weight_decay_range, log=True)
        names = ("lr", "weight_decay")
        mine = _setting(trial.params, names)
        # the sampler avoids settings it can see; this catches a worker (or a trial of this pass) that set the same one
        # a moment ago
        for other in trial.study.get_trials(deepcopy=False, states=LIVE):
            if other.number != trial.number and _setting(other.params, names) == mine:
                raise _Duplicate(other.number)
        return TrainConfig(probe=config.probe, probe_args=config.probe_args, epochs=config.epochs, batch_size=config.batch_size,
                           lr=lr, weight_decay=weight_decay, seed=0, device=config.device)

    def train(self, study: optuna.Study, runs: list[tuple[_Held, TrainConfig]], log: Callable[[str], None]) -> None:
        """Train `runs` (held trials and their settings) in one pass and tell every trial its result.

        Each trial is charged its share of the pass: the time between reports split over the trials still training,
        plus its own scoring. A trial another worker reclaimed meanwhile (this one could not write its heartbeat for
        longer than the grace period) is stopped and its result dropped, with a notice.
        """
        config, report_every = self.config, self.config.report_interval()
        running = list(range(len(runs)))  # indices into runs still training, in trial-number order
        clock = time.perf_counter()

        def charge() -> None:
            nonlocal clock
            now = time.perf_counter()
            for index in running:
                runs[index][0].seconds += (now - clock) / len(running)
            clock = now

        def on_epoch(epoch: int, probes) -> list[int] | None:
            nonlocal clock, running
            charge()
            if not (config.prune and epoch % report_every == 0 and epoch < config.epochs):
                return None
            stop = []
            for index in running:  # lower trial numbers first, as if each were a worker reporting in turn
                held = runs[index][0]
                tick = time.perf_counter()
                value, logits = self.report_score(probes[index])
                try:
                    held.trial.report(value, epoch)
                    pruned = held.trial.should_prune()
                except optuna.exceptions.UpdateFinishedTrialError:
                    log(f"trial {held.trial.number}: reclaimed by another worker while this one could not reach the database; "
                        "it stops here and a fresh trial takes its place")
                    held.told = True
                    held.stop()
                    stop.append(index)
                    continue
                held.seconds += time.perf_counter() - tick
                if pruned:
                    held.trial.set_user_attr("valid_loss", self.loss(logits))
                    held.trial.set_user_attr("pruned_at_epoch", epoch)
                    held.trial.set_user_attr("seconds", round(held.seconds, 2))  # a pruned trial's time counts in the search's cost too
                    held.tell(study, TrialState.PRUNED, None, log)
                    stop.append(index)
            running = [index for index in running if index not in stop]
            clock = time.perf_counter()
            return stop

        results = train_probes(self.train_split, [run for _, run in runs], progress=False, on_epoch=on_epoch)
        charge()
        for index in running:
            held, result = runs[index][0], results[index]
            held.trial.set_user_attr("seconds", round(held.seconds, 2))
            held.trial.set_user_attr("num_parameters", result.probe.num_parameters())
            if result.diverged:
                held.trial.set_user_attr("diverged", result.diverged)
                held.tell(study, TrialState.COMPLETE, 0.0, log)
                continue
            value, loss, metrics = self.score(result.probe)
            held.trial.set_user_attr("valid_loss", loss)
            held.trial.set_user_attr("valid", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            held.tell(study, TrialState.COMPLETE, value, log)


def _objective_factory(config: SweepConfig, bank: LoadedBank) -> _TrialTrainer:
    """What trains a study's trials on `bank` (for `_run_pass` and `_run_one`)."""
    return _TrialTrainer(config, bank)


def _fail_orphans(study: optuna.Study, grace_seconds: float) -> list[int]:
    """Fail RUNNING trials whose worker died between creating them and their first heartbeat; returns their numbers.

    Optuna only fails stale trials that have a heartbeat on record, so a worker killed in that window
    leaves a trial RUNNING forever, holding a place in the budget. Our trials mark themselves
    `started` within milliseconds, once the heartbeat runs; one still unmarked after the grace period
    has no worker.
    """
    now = datetime.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.user_attrs.get("started") and trial.datetime_start is not None and (
                now - trial.datetime_start).total_seconds() > grace_seconds:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                study.tell(trial.number, state=TrialState.FAIL)
                failed.append(trial.number)
    return failed


def _reclaim(study: optuna.Study, config: SweepConfig, storage: RetryingStorage) -> list[int]:
    """Fail the trials whose worker has been silent for the grace period (they free their place in the budget);
    returns their numbers. Skipped just after this worker's own database outage, until live workers' heartbeats,
    which could not be written during it either, have caught up."""
    if storage.reachable_for() < config.heartbeat_seconds + 2:
        return []
    reclaimed = []
    numbers = {t._trial_id: t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker reclaimed it first
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                reclaimed.append(numbers.get(trial_id, trial_id))
    return reclaimed + _fail_orphans(study, config.grace_seconds)


def _describe_held(study: optuna.Study, config: SweepConfig, storage: RetryingStorage) -> tuple[tuple, str]:
    """What the RUNNING trials of other workers are waiting on: (a key that changes when the situation does, one line)."""
    ages = storage.heartbeat_ages(study._study_id)
    now = datetime.datetime.now()
    key, parts = [], []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = ages.get(trial._trial_id)
        if age is None:  # no heartbeat yet: a worker starting it, or one killed before its first (see _fail_orphans)
            age = (now - trial.datetime_start).total_seconds() if trial.datetime_start else 0.0
            silent = age > 2 * config.heartbeat_seconds
        else:
            silent = age > 2 * config.heartbeat_seconds
        key.append((trial.number, silent))
        if silent:
            parts.append(f"trial {trial.number} is held by a silent worker (no heartbeat for {age:.0f} s): reclaimed once silent "
                         f"for {config.grace_seconds} s (--grace-seconds), in about {max(0.0, config.grace_seconds - age):.0f} s")
        else:
            parts.append(f"trial {trial.number} is running on a live worker (heartbeat {age:.0f} s ago)")
    return tuple(key), "; ".join(parts)


def search(study: optuna.Study, config: SweepConfig, bank: LoadedBank, on_trial: Callable | None = None,
           wait_seconds: float | None = None, log: Callable[[str], None] | None = None) -> int:
    """Run trials in this process until the study holds `config.trials` live trials; returns how many ran here.

    Trials run in passes of up to `config.trials_per_pass`, trained together (`_run_pass`); each trial keeps its own
    heartbeat while it runs (`storage.Heartbeat`) and gets its own reports, pruning decision and result. When every place left in the budget is held by
    other workers: with `wait_seconds` None, return at once; otherwise wait for them, reclaiming trials whose worker
    went silent (and running them here), for up to `wait_seconds` (math.inf: no limit), then SweepIncompleteError.
    """
    with optuna_quietly():
        return _search(study, config, bank, on_trial, wait_seconds, log or (lambda message: None))


def _search(study: optuna.Study, config: SweepConfig, bank: LoadedBank, on_trial: Callable | None, wait_seconds: float | None,
            log: Callable[[str], None]) -> int:
    storage = study._storage
    if not isinstance(storage, RetryingStorage):
        raise TypeError("search() needs a study from open_study() (its storage keeps heartbeats and retries)")
    trainer = _objective_factory(config, bank)
    poll = max(1.0, min(float(config.heartbeat_seconds), 10.0))
    ran, waited, duplicates, notice = 0, 0.0, 0, None
    while True:
        for number in _reclaim(study, config, storage):
            log(f"trial {number}: its worker went silent for {config.grace_seconds} s; reclaimed (marked failed, its place "
                "in the budget freed)")
        if _has_place(study, config):
            outcomes = _run_pass(study, config, trainer, storage, log, _pass_size(study, config))
            duplicates = duplicates + len(outcomes) if all(o == "duplicate" for o in outcomes) else 0
            if duplicates > MAX_REDRAWS:
                raise ValueError(f"study {study.study_name!r}: {MAX_REDRAWS} draws in a row repeated settings of other trials; "
                                 "the search range is too narrow for the budget (--lr-range)")
            for _ in range(outcomes.count("ran")):
                ran += 1
                if on_trial is not None:
                    on_trial()
            continue
        live = study.get_trials(deepcopy=False, states=LIVE)
        if not any(t.state == TrialState.RUNNING for t in live) or wait_seconds is None:
            return ran
        key, text = _describe_held(study, config, storage)
        if key != notice:  # say it when the situation changes, not every poll
            log(f"waiting for other workers: {text}")
            notice = key
        if waited >= wait_seconds:
            raise SweepIncompleteError(f"study {study.study_name!r}: gave up after waiting {waited:.0f} s (--wait-seconds) with "
                                       f"{_count_live(study)} of {config.trials} trials started: {text}. Finished trials are kept; "
                                       "rerun the same command to continue")
        pause = min(poll, wait_seconds - waited)
        time.sleep(pause)
        waited += pause


def _pass_size(study: optuna.Study, config: SweepConfig) -> int:
    """How many trials the next pass may ask for: `trials_per_pass`, but one while the pruner waits for a completed
    trial (min_resource "auto" prunes nothing before one exists: the trials of a first pass of K would all run to the
    end, where one at a time the second is already pruned)."""
    if config.prune and config.prune_min_resource == "auto" and config.epochs > config.report_interval():
        if not any(t.last_step is not None for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
            return 1
    return config.trials_per_pass


def _next_number(study: optuna.Study) -> int:
    """The number the next `ask` will most likely get (another worker may take it first): an enqueued trial's, else a new one."""
    trials = study.get_trials(deepcopy=False)
    waiting = [t.number for t in trials if t.state == TrialState.WAITING]
    return min(waiting) if waiting else len(trials)


def _has_place(study: optuna.Study, config: SweepConfig) -> bool:
    """True when the study has room for another trial: fewer live trials than the budget, or an enqueued one waiting."""
    live = study.get_trials(deepcopy=False, states=LIVE)
    return len(live) < config.trials or any(t.state == TrialState.WAITING for t in live)


def _run_pass(study: optuna.Study, config: SweepConfig, trainer: _TrialTrainer, storage: RetryingStorage,
              log: Callable[[str], None], size: int) -> list[str]:
    """Ask the storage for up to `size` trials, each under its own heartbeat from the moment it exists, and train those
    that may run in one pass. Returns one outcome per trial asked: "ran", "over_budget" or "duplicate".

    The first trial is asked for whatever the study holds (the caller saw a free place; a worker that filled it meanwhile
    makes this one over budget); later ones only while a place is free, and not past the last Sobol trial when the pass
    holds one (a TPE trial drawn next to running Sobol trials would not learn from their results). Asking stops at the
    first over-budget trial; a duplicate is replaced by another ask (up to MAX_REDRAWS in one pass).
    """
    outcomes: list[str] = []
    held: list[_Held] = []
    runs: list[tuple[_Held, TrainConfig]] = []
    try:
        while len(runs) < size and outcomes.count("duplicate") <= MAX_REDRAWS:
            if held and not _has_place(study, config):
                break
            if any(slot.trial.number < config.n_startup() for slot in held) and _next_number(study) >= config.n_startup():
                break  # the next trial would be a TPE draw
            trial = study.ask()
            heartbeat = Heartbeat(storage, trial._trial_id, config.heartbeat_seconds).__enter__()
            slot = _Held(trial, heartbeat)
            held.append(slot)
            trial.set_user_attr("started", True)  # after the first heartbeat: see _fail_orphans
            if _count_live(study, below=trial.number) >= config.trials:  # other workers filled the budget meanwhile
                trial.set_user_attr("over_budget", True)
                slot.tell(study, TrialState.FAIL, None, log)
                outcomes.append("over_budget")
                break
            try:
                runs.append((slot, trainer.setting(trial)))
            except _Duplicate as duplicate:
                trial.set_user_attr("duplicate_of", duplicate.number)
                slot.tell(study, TrialState.FAIL, None, log)
                outcomes.append("duplicate")
        if runs:
            trainer.train(study, sorted(runs, key=lambda run: run[0].trial.number), log)
            outcomes += ["ran"] * len(runs)
    except BaseException:
        for slot in held:
            if not slot.told:  # the database may be what failed; the heartbeat stops, so the trial is reclaimed later
                with contextlib.suppress(Exception):
                    storage.inner.set_trial_state_values(slot.trial._trial_id, state=TrialState.FAIL)
        raise
    finally:
        for slot in held:
            slot.stop()
    return outcomes


def _run_one(study: optuna.Study, config: SweepConfig, trainer: _TrialTrainer, storage: RetryingStorage,
             log: Callable[[str], None]) -> str:
    """A pass of one trial (`_run_pass` with size 1): the first trial's outcome, "ran", "over_budget" or "duplicate"."""
    return _run_pass(study, config, trainer, storage, log, size=1)[0]


def _tell(study: optuna.Study, trial: optuna.Trial, state: TrialState, value: float | None, log: Callable[[str], None]) -> None:
    """Finish a trial; a trial another worker has meanwhile reclaimed (its heartbeat could not be written for longer than
    the grace period) keeps the state that worker gave it, and this result is dropped with a notice."""
    try:
        study.tell(trial, value, state=state) if state == TrialState.COMPLETE else study.tell(trial, state=state)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError) as exc:
        current = study._storage.get_trial(trial._trial_id).state
        if current == state:  # our own write went through before a retry: done
            return
        if current.is_finished():
            log(f"trial {trial.number}: reclaimed by another worker while this one could not reach the database; "
                f"its result ({state.name.lower()}) is dropped and a fresh trial takes its place")
            return
        raise exc


def run_sweep(bank: str | Path | LoadedBank, config: SweepConfig, out: str | Path, storage: str | None = None,
              study_name: str | None = None, progress: bool = True, wait_seconds: float | None = None,
              db_retry_seconds: float = DB_RETRY_SECONDS, log: Callable[[str], None] | None = None) -> dict | None:
    """Search, then (once every trial of the study has finished) retrain the best setting with `config.seeds`
    seeds and write `summary.json` and `trials.csv` in `out`. Safe to run in several processes at once and to rerun;
    a larger `config.trials` extends a finished study (its trials are kept) and finalises it again.

    Args:
        bank: the bank folder or LoadedBank (its train and valid splits drive the search; test is only used by the
            final runs).
        out: this search's folder (final runs under `final/seed=<s>`; the default SQLite storage too).
        storage: Optuna storage URL; default `sqlite:///<out>/optuna.db`.
        study_name: default "<bank folder name>/<probe>".
        wait_seconds: when the trials left are held by other workers: None returns None at once (a caller that polls,
            like `bench run`); a number waits for them (math.inf: as long as it takes), reclaiming those whose worker
            went silent, then raises SweepIncompleteError.
        db_retry_seconds: how long each storage call waits out a database outage before StorageUnavailableError.
        log: one-line notices (waiting, reclaimed trials, outages, an extended budget); default: none.
    Returns:
        the summary, or None when other workers still run trials (the last one to finish writes it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bank = LoadedBank.coerce(bank, device=config.device)
    bank.require("valid", purpose="the search (or carve a valid split with the dataset's valid_fraction)")
    storage = storage or default_storage(out)
    study_name = study_name or f"{bank.root.resolve().name}/{config.probe}"
    with optuna_quietly():
        study, config = _open_study(config, storage, study_name, db_retry_seconds, log)  # refuses other settings first
    # written after the check: a worker refused for other settings leaves the study's record alone
    write_json(out / "sweep.json", {"config": config.model_dump(mode="json"), "pruner": config.pruner_settings(),
                                    "storage": redact(storage), "study_name": study_name, "bank": str(bank.root.resolve())})
    bar = None
    if progress:
        from .._progress import ProgressBar

        bar = ProgressBar(True, f"sweep {config.probe}", total=config.trials, completed=_count_live(study))
    try:
        search(study, config, bank, on_trial=bar.advance if bar else None, wait_seconds=wait_seconds, log=log)
    finally:
        if bar:
            bar.close()
    with optuna_quietly():
        if not sweep_finished(study, config.trials):
            return None
        return finalize(bank, study, config, out, progress)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the highest validation score; ties go to the lower validation loss."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if not t.user_attrs.get("diverged")]
    if not done:
        return None
    return max(done, key=lambda t: (t.value, -t.user_attrs.get("valid_loss", math.inf), -t.number))


def edge_flags(value: float, bounds: tuple[float, float]) -> str | None:
    """"low"/"high" when `value` lies within 10 % (of the log-range) of a bound, else None."""
    low, high = math.log(bounds[0]), math.log(bounds[1])
    position = (math.log(value) - low) / (high - low)
    return "low" if position < EDGE_FRACTION else "high" if position > 1 - EDGE_FRACTION else None


def sweep_finished(study: optuna.Study, trials: int) -> bool:
    states = [t.state for t in study.get_trials(deepcopy=False, states=LIVE)]
    return len(states) >= trials and TrialState.RUNNING not in states and TrialState.WAITING not in states


def finalize(bank: LoadedBank, study: optuna.Study, config: SweepConfig, out: Path, progress: bool = True) -> dict:
    """Retrain the best setting with `config.seeds` seeds (reusing finished runs) and write summary.json and trials.csv.

    Seed s sets both the initialisation and the data order (`seed` and `data_seed`), so the spread over seeds covers both.
    """
    best = best_trial(study)
    if best is None:
        raise ValueError(f"study {study.study_name}: no completed, non-diverged trial to retrain")
    runs = []
    for seed in range(config.seeds):
        run = TrainConfig(probe=config.probe, probe_args=config.probe_args, epochs=config.epochs, batch_size=config.batch_size,
                          lr=best.params["lr"], weight_decay=best.params["weight_decay"], seed=seed, data_seed=seed,
                          device=config.device)
        runs.append((run, out / "final" / f"seed={seed}"))
    # finished seed runs of this setting are reused; a stale one (another setting or bank) is retrained
    # two workers finishing the last trials together both get here: the second waits for the first's runs
    fit(bank, [run for run, _ in runs], [folder for _, folder in runs], progress=progress, overwrite=True,
        wait_seconds=WAIT_FOR_OTHER_WRITERS)
    finals = [Run(folder).metrics for _, folder in runs]
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if not (t.user_attrs.get("over_budget") or "duplicate_of" in t.user_attrs)]
    summary = {
        "probe": config.probe,
        "study": study.study_name,
        "best": {"lr": best.params["lr"], "weight_decay": best.params["weight_decay"], "trial": best.number,
                 "valid": best.value, "valid_loss": best.user_attrs.get("valid_loss")},
        "edge": {"lr": edge_flags(best.params["lr"], config.lr_bounds()),
                 "weight_decay": edge_flags(best.params["weight_decay"], config.weight_decay_range)},
        "ranges": {"lr": list(config.lr_bounds()), "weight_decay": list(config.weight_decay_range)},
        "trials": {state.name.lower(): sum(t.state == state for t in counted) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
        "search_seconds": round(sum(t.user_attrs.get("seconds", 0.0) for t in counted), 1),
        "num_parameters": finals[0].num_parameters,
        "seeds": list(range(config.seeds)),
        "test": _mean_sd([f.split("test") for f in finals if not f.diverged and f.split("test")]),
        "valid": _mean_sd([f.split("valid") for f in finals if not f.diverged and f.split("valid")]),
        "train_seconds": [f.train_seconds for f in finals],
        "pruner": config.pruner_settings(),
    }
    write_trials_table(study, out / "trials.csv", best.number)
    write_json(out / "summary.json", summary)
    return summary


TRIAL_COLUMNS = ("trial", "state", "lr", "weight_decay", "valid", "valid_loss", "pruned_at_epoch", "seconds", "note")


def trial_rows(study: optuna.Study, best: int | None = None) -> list[dict]:
    """One row per trial of the study (columns TRIAL_COLUMNS); `note` says best, over budget, duplicate, diverged or
    reclaimed (a failed trial whose worker went silent)."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = t.user_attrs
        note = ("best" if t.number == best else "over budget (not run)" if attrs.get("over_budget")
                else f"same setting as trial {attrs['duplicate_of']} (not run)" if "duplicate_of" in attrs
                else f"diverged ({attrs['diverged']})" if attrs.get("diverged")
                else "worker lost (reclaimed)" if t.state == TrialState.FAIL else "")
        rows.append({"trial": t.number, "state": t.state.name.lower(), "lr": t.params.get("lr"),
                     "weight_decay": t.params.get("weight_decay"), "valid": t.value, "valid_loss": attrs.get("valid_loss"),
                     "pruned_at_epoch": attrs.get("pruned_at_epoch"), "seconds": attrs.get("seconds"), "note": note})
    return rows


def write_trials_table(study: optuna.Study, path: Path, best: int | None = None) -> None:
    """`trial_rows` as a CSV file (written atomically)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=TRIAL_COLUMNS)
            writer.writeheader()
            writer.writerows(trial_rows(study, best))

    atomic_write_with(path, write)


def _mean_sd(rows: list[dict]) -> dict:
    keys = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], float)]
    out = {}
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), float) and np.isfinite(row[key])]
        if values:
            out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}
    return out
