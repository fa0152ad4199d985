"""The paper's search for one (bank, probe): Sobol then TPE over learning rate and weight decay, a
successive-halving pruner on the validation score, then the best setting retrained with several seeds.

Optuna is the engine and its storage the coordination: a SQLite file by default, or a PostgreSQL URL
that any number of worker processes on any number of machines join (`patchprobe sweep ...` again,
anywhere). Each worker asks for trials until the study holds `trials` live ones; trial numbers are
handed out by the storage, so the budget is exact however many workers race. A worker that dies
leaves a RUNNING trial whose heartbeat stops; the next worker marks it failed and runs a fresh one,
so finished trials are never lost and the budget still completes.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import torch
import scipy.stats
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field

from .._io import write_json
from ..bank import LoadedBank
from ..probes import PROBES
from ..train import LOSSES, Run, TrainConfig, evaluate_scores, fit, loss_name, predict, primary_metric, train_probes
from .grid import WAIT_FOR_OTHER_WRITERS

# Learning-rate ranges (log-uniform) per probe, declared where each probe is registered (`lr_range`):
# a decade or more around the best rates measured on the demo data. Weight decay: the paper's range.
# (`SweepConfig.lr_bounds` asks the registry, so probes registered later get theirs too.)
LR_RANGES: dict[str, tuple[float, float]] = {name: PROBES.spec(name).lr_range for name in PROBES.names()}
WEIGHT_DECAY_RANGE = (1e-5, 5e-4)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
EDGE_FRACTION = 0.1  # of the log-range: a best value this close to a bound is flagged


class SweepConfig(BaseModel):
    """One search: saved as `sweep.json` in its folder and in the study's attributes."""

    model_config = ConfigDict(extra="forbid")

    probe: str
    probe_args: dict = Field(default_factory=dict)
    trials: int = 50
    startup_trials: int | None = None  # Sobol trials before TPE; default: half of `trials`
    epochs: int = 30
    batch_size: int = 128
    seeds: int = 3  # final retraining of the best setting
    lr_range: tuple[float, float] | None = None  # default: the probe's registered lr_range
    weight_decay_range: tuple[float, float] = WEIGHT_DECAY_RANGE
    prune: bool = True
    sampler_seed: int = 0
    heartbeat_seconds: int = 30  # a worker silent for `grace_seconds` is taken for dead
    grace_seconds: int = 120
    device: str = "cpu"

    def lr_bounds(self) -> tuple[float, float]:
        if self.lr_range:
            return tuple(self.lr_range)  # type: ignore[return-value]
        return PROBES.spec(self.probe).lr_range

    def n_startup(self) -> int:
        return self.trials // 2 if self.startup_trials is None else self.startup_trials


class SobolThenTPE(BaseSampler):
    """The paper's sampler: scrambled Sobol points for the first `n_startup` trials, then TPE.

    Startup trial k takes row k of one seeded, scrambled Sobol table (dimension i = `param_names[i]`,
    mapped onto the parameter's range, in log space for log ranges). The point depends only on the trial
    number the storage hands out, so concurrent workers never draw the same point, and the first trial
    is a Sobol point too.
    """

    def __init__(self, n_startup: int, param_names: tuple[str, ...] = ("lr", "weight_decay"), seed: int = 0) -> None:
        self.n_startup = n_startup
        self._dims = {name: i for i, name in enumerate(param_names)}
        rows = max(1, n_startup)
        sobol = scipy.stats.qmc.Sobol(d=len(param_names), scramble=True, seed=seed)
        self._table = sobol.random_base2(max(0, math.ceil(math.log2(rows))))[:rows]
        self._tpe = TPESampler(n_startup_trials=0, seed=seed, multivariate=True, constant_liar=True)

    def _startup(self, trial: FrozenTrial) -> bool:
        return trial.number < self.n_startup

    def infer_relative_search_space(self, study, trial):
        return {} if self._startup(trial) else self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if self._startup(trial) else self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if not self._startup(trial) or param_name not in self._dims:
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)
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

    We rely on heartbeats' current behaviour (tested); a user's own Optuna settings are restored on exit.
    """
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def default_storage(folder: str | Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'optuna.db'}"


def open_study(config: SweepConfig, storage: str, study_name: str) -> optuna.Study:
    """Create or join the study `study_name` in `storage` (its config must match an existing one)."""
    with optuna_quietly():
        return _open_study(config, storage, study_name)


def _open_study(config: SweepConfig, storage: str, study_name: str) -> optuna.Study:
    from sqlalchemy.exc import SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(6):
        # workers started together on a fresh database race to create Optuna's tables and the study:
        # the losers see "already exists" errors and simply try again
        try:
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=config.heartbeat_seconds,
                                             grace_period=config.grace_seconds)
            study = optuna.create_study(study_name=study_name, storage=rdb, direction="maximize", load_if_exists=True,
                                        sampler=SobolThenTPE(config.n_startup(), seed=config.sampler_seed),
                                        pruner=optuna.pruners.SuccessiveHalvingPruner() if config.prune else optuna.pruners.NopPruner())
            break
        except SQLAlchemyError:
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    saved = study.user_attrs.get("sweep_config")
    mine = config.model_dump(mode="json")
    if saved is None:
        study.set_user_attr("sweep_config", mine)
    elif _search_settings(saved) != _search_settings(mine):
        raise ValueError(f"study {study_name!r} in {storage} was started with other settings ({saved}); "
                         "use the same settings or another --study-name")
    return study


def _search_settings(dumped: dict) -> dict:
    """The settings that define a study; how a worker runs (heartbeat, device) may differ between workers."""
    return {k: v for k, v in dumped.items() if k not in ("heartbeat_seconds", "grace_seconds", "device")}


def _count_live(study: optuna.Study, below: int | None = None) -> int:
    trials = study.get_trials(deepcopy=False, states=LIVE)
    return sum(1 for t in trials if below is None or t.number < below)


def _objective_factory(config: SweepConfig, bank: LoadedBank) -> Callable[[optuna.Trial], float]:
    train, valid = bank.train, bank["valid"]
    multilabel = bank.multilabel
    metric = primary_metric(multilabel)
    loss_fn = LOSSES[loss_name(TrainConfig(probe=config.probe), multilabel)]
    labels = valid.labels.cpu()
    report_every = max(1, config.epochs // 10)

    def score(probe) -> tuple[float, float, dict]:
        logits = predict(probe, valid)
        metrics = evaluate_scores(labels.numpy(), logits, multilabel, valid.meta.metrics or None)
        loss = float(loss_fn(torch.from_numpy(logits), labels))
        value = metrics[metric]
        return (value if math.isfinite(value) else 0.0), loss, metrics

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *config.lr_bounds(), log=True)
        weight_decay = trial.suggest_float("weight_decay", *config.weight_decay_range, log=True)
        run = TrainConfig(probe=config.probe, probe_args=config.probe_args, epochs=config.epochs, batch_size=config.batch_size,
                          lr=lr, weight_decay=weight_decay, seed=0, device=config.device)

        def on_epoch(epoch: int, probes) -> None:
            if config.prune and (epoch % report_every == 0) and epoch < config.epochs:
                value, loss, _ = score(probes[0])
                trial.report(value, epoch)
                if trial.should_prune():
                    trial.set_user_attr("valid_loss", loss)
                    trial.set_user_attr("pruned_at_epoch", epoch)
                    raise optuna.TrialPruned()

        tick = time.perf_counter()
        result = train_probes(train, [run], progress=False, on_epoch=on_epoch)[0]
        trial.set_user_attr("seconds", round(time.perf_counter() - tick, 2))
        trial.set_user_attr("num_parameters", result.probe.num_parameters())
        if result.diverged:
            trial.set_user_attr("diverged", result.diverged)
            return 0.0
        value, loss, metrics = score(result.probe)
        trial.set_user_attr("valid_loss", loss)
        trial.set_user_attr("valid", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return value

    return objective


class _OverBudget(Exception):
    """Raised inside a trial that another worker's trials have already made surplus."""


def _fail_orphans(study: optuna.Study, grace_seconds: float) -> None:
    """Fail RUNNING trials whose worker died between creating them and their first heartbeat.

    Optuna only fails stale trials that have a heartbeat on record, so a worker killed in that window
    leaves a trial RUNNING forever, holding a place in the budget. Our trials mark themselves
    `started` within milliseconds, once the heartbeat runs; one still unmarked after the grace period
    has no worker.
    """
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.user_attrs.get("started") and trial.datetime_start is not None and (
                now - trial.datetime_start).total_seconds() > grace_seconds:
            study.tell(trial.number, state=TrialState.FAIL)


def search(study: optuna.Study, config: SweepConfig, bank: LoadedBank, on_trial: Callable | None = None) -> int:
    """Run trials in this process until the study holds `config.trials` live trials; returns how many ran here.

    Each trial goes through `Study.optimize` (one at a time), which keeps its heartbeat while it runs.
    """
    with optuna_quietly():
        return _search(study, config, bank, on_trial)


def _search(study: optuna.Study, config: SweepConfig, bank: LoadedBank, on_trial: Callable | None) -> int:
    optuna.storages.fail_stale_trials(study)
    _fail_orphans(study, config.grace_seconds)
    objective = _objective_factory(config, bank)

    def guarded(trial: optuna.Trial) -> float:
        trial.set_user_attr("started", True)  # inside Optuna's heartbeat: see _fail_orphans
        if _count_live(study, below=trial.number) >= config.trials:
            trial.set_user_attr("over_budget", True)
            raise _OverBudget()
        return objective(trial)

    def waiting() -> bool:  # trials enqueued with `study.enqueue_trial` count in the budget and run first
        return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    ran = 0
    while _count_live(study) < config.trials or waiting():
        study.optimize(guarded, n_trials=1, catch=(_OverBudget,), gc_after_trial=False)
        ran += 1
        if on_trial is not None:
            on_trial()
    return ran


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


def run_sweep(bank: str | Path | LoadedBank, config: SweepConfig, out: str | Path, storage: str | None = None,
              study_name: str | None = None, progress: bool = True) -> dict | None:
    """Search, then (once every trial of the study has finished) retrain the best setting with `config.seeds`
    seeds and write `summary.json` in `out`. Safe to run in several processes at once and to rerun.

    Args:
        bank: the bank folder or LoadedBank (its train and valid splits drive the search; test is only used by the
            final runs).
        out: this search's folder (final runs under `final/seed=<s>`; the default SQLite storage too).
        storage: Optuna storage URL; default `sqlite:///<out>/optuna.db`.
        study_name: default "<bank folder name>/<probe>".
    Returns:
        the summary, or None when other workers still run trials (the last one to finish writes it).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bank = LoadedBank.coerce(bank, device=config.device)
    bank.require("valid", purpose="the search (or carve a valid split with the dataset's valid_fraction)")
    storage = storage or default_storage(out)
    study_name = study_name or f"{bank.root.resolve().name}/{config.probe}"
    write_json(out / "sweep.json", {"config": config.model_dump(mode="json"), "storage": _redact(storage), "study_name": study_name,
                                    "bank": str(bank.root.resolve())})
    study = open_study(config, storage, study_name)
    bar = None
    if progress:
        from .._progress import ProgressBar

        bar = ProgressBar(True, f"sweep {config.probe}", total=config.trials, completed=_count_live(study))
    try:
        search(study, config, bank, on_trial=bar.advance if bar else None)
    finally:
        if bar:
            bar.close()
    if not sweep_finished(study, config.trials):
        return None
    return finalize(bank, study, config, out, progress)


def _redact(url: str) -> str:
    """A storage URL without its password, for files."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


def finalize(bank: LoadedBank, study: optuna.Study, config: SweepConfig, out: Path, progress: bool = True) -> dict:
    """Retrain the best setting with `config.seeds` seeds (reusing finished runs) and write summary.json."""
    best = best_trial(study)
    if best is None:
        raise ValueError(f"study {study.study_name}: no completed, non-diverged trial to retrain")
    runs = []
    for seed in range(config.seeds):
        run = TrainConfig(probe=config.probe, probe_args=config.probe_args, epochs=config.epochs, batch_size=config.batch_size,
                          lr=best.params["lr"], weight_decay=best.params["weight_decay"], seed=seed, device=config.device)
        runs.append((run, out / "final" / f"seed={seed}"))
    # finished seed runs of this setting are reused; a stale one (another setting or bank) is retrained
    # two workers finishing the last trials together both get here: the second waits for the first's runs
    fit(bank, [run for run, _ in runs], [folder for _, folder in runs], progress=progress, overwrite=True,
        wait_seconds=WAIT_FOR_OTHER_WRITERS)
    finals = [Run(folder).metrics for _, folder in runs]
    trials = study.get_trials(deepcopy=False)
    counted = [t for t in trials if not t.user_attrs.get("over_budget")]
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
    }
    write_json(out / "summary.json", summary)
    return summary


def _mean_sd(rows: list[dict]) -> dict:
    keys = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], float)]
    out = {}
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), float) and np.isfinite(row[key])]
        if values:
            out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "values": values}
    return out
