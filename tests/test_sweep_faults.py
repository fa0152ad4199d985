"""Sweeps under faults: workers killed mid-trial (a fresh `sweep` waits for their trials, reclaims them and
finishes with a summary), a PostgreSQL server stopped mid-sweep (workers wait and finish, no result lost), an
unreachable database (one line, no traceback, no password), equal settings never trained twice, over-budget
trials without warnings, and the grid's job log.

The PostgreSQL tests share one throw-away cluster (tests/test_sweep.py), a database each; they are marked `slow`.
"""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from patchprobe.bank import LoadedBank
from patchprobe.cli import app
from patchprobe.sweep import SobolThenTPE, SweepConfig, run_sweep
from patchprobe.sweep.search import LIVE, _objective_factory, _open_study, _run_one, optuna_quietly, search

from .test_sweep import _free_port, bank, postgres_cluster  # noqa: F401 - `bank` is a fixture

runner = CliRunner()
FAST = ["--heartbeat-seconds", "1", "--no-prune", "--seeds", "1", "--quiet"]


_READERS: dict[str, optuna.storages.RDBStorage] = {}


def _trials(storage: str, name: str = "shared", states=None):
    """The study's trials, read through one storage per URL (a new one per look would use up the server's connections)."""
    if storage not in _READERS:
        _READERS[storage] = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True, "pool_size": 1})
    try:
        return optuna.load_study(study_name=name, storage=_READERS[storage]).get_trials(deepcopy=False, states=states)
    except KeyError:  # the workers have not created the study yet
        return []


@pytest.fixture(scope="module")
def cluster():
    """One throw-away PostgreSQL cluster for this file's tests (a database each)."""
    server = postgres_cluster()
    yield server
    _READERS.clear()
    server.close()


def _settings(trials) -> list[tuple]:
    return [(t.params["lr"], t.params["weight_decay"]) for t in trials]


def _worker(bank, out, storage, trials, epochs, extra="", wait="None"):
    code = ("import math\nfrom patchprobe.sweep import SweepConfig, run_sweep\n"
            f"run_sweep({str(bank)!r}, SweepConfig(probe='linear', trials={trials}, epochs={epochs}, prune=False, seeds=1, "
            f"heartbeat_seconds=1{extra}), {str(out)!r}, storage={storage!r}, study_name='shared', progress=False, "
            f"wait_seconds={wait}, log=print)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_grace_must_outlast_the_heartbeat_and_options_are_named():
    result = runner.invoke(app, ["sweep", "--bank", "b", "--probe", "linear", "--out", "o", "--heartbeat-seconds", "5",
                                 "--grace-seconds", "5"])
    assert result.exit_code == 2 and "--grace-seconds" in result.output and "Traceback" not in result.output
    with pytest.raises(ValueError, match="grace_seconds"):
        SweepConfig(probe="linear", heartbeat_seconds=10, grace_seconds=10)


def test_an_unreachable_database_fails_in_one_line_without_the_password(bank, tmp_path):
    url = f"postgresql+psycopg://postgres:hunter2secret@127.0.0.1:{_free_port()}/optuna"  # nothing listens there
    tick = time.time()
    result = runner.invoke(app, ["sweep", "--bank", str(bank), "--probe", "linear", "--out", str(tmp_path / "out"),
                                 "--storage", url, "--db-retry-seconds", "2", *FAST])
    assert result.exit_code == 2, result.output
    assert "has not answered for 2 s" in result.output and "rerun the same command" in result.output
    assert "hunter2secret" not in result.output and "postgres:***@127.0.0.1" in result.output
    assert "Traceback" not in result.output and "UnboundLocalError" not in result.output
    assert 2 <= time.time() - tick < 60 and not (tmp_path / "out" / "sweep.json").exists()


def test_equal_settings_are_never_trained_twice(bank, tmp_path):
    """A setting already in the study (here enqueued on purpose, as a racing worker would draw it) is not trained:
    its trial is marked `duplicate_of`, does not count in the budget, and a fresh setting takes its place."""
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = SweepConfig(probe="linear", trials=3, epochs=1, prune=False, heartbeat_seconds=1, grace_seconds=3)
    with optuna_quietly():
        study, config = _open_study(config, storage, "dup")
    loaded = LoadedBank.load(bank)
    search(study, config.model_copy(update={"trials": 1}), loaded)  # trial 0, a Sobol point
    first = study.trials[0].params
    study.enqueue_trial(first)  # the same point again
    search(study, config, loaded)
    trials = study.get_trials(deepcopy=False)
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    live = [t for t in trials if t.state in LIVE]
    assert [(t.number, t.state, t.user_attrs["duplicate_of"]) for t in duplicates] == [(1, TrialState.FAIL, 0)]
    assert "seconds" not in duplicates[0].user_attrs  # never trained
    assert len(live) == 3 and len(set(_settings(live))) == 3


def test_tpe_draws_depend_on_the_trial_number_so_racing_workers_differ():
    """Workers sampling at the same moment see the same history; with one TPE seed for all (the old sampler) they drew
    the same point. Each trial number now has its own seed: different numbers draw different points from one
    history, and the same number draws the same point in any worker (reproducible)."""
    study = optuna.create_study(sampler=SobolThenTPE(2, seed=0), direction="maximize")
    for value in range(4):
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        trial.suggest_float("weight_decay", 1e-5, 5e-4, log=True)
        study.tell(trial, float(value % 3))
    pending = study._storage.get_trial(study._storage.create_new_trial(study._study_id))  # RUNNING, not sampled yet
    worker_a, worker_b = SobolThenTPE(2, seed=0), SobolThenTPE(2, seed=0)
    space = worker_a.infer_relative_search_space(study, pending)
    assert set(space) == {"lr", "weight_decay"}
    draws = [worker_a._trial_tpe(number).sample_relative(study, pending, space) for number in (4, 5, 6)]
    assert len({tuple(sorted(d.items())) for d in draws}) == 3
    assert worker_b._trial_tpe(4).sample_relative(study, pending, space) == draws[0]


def test_an_over_budget_trial_logs_nothing_and_is_not_trained(bank, tmp_path, caplog):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    config = SweepConfig(probe="linear", trials=1, epochs=1, heartbeat_seconds=1, grace_seconds=3)
    with optuna_quietly():
        study, config = _open_study(config, storage, "budget")
        with pytest.warns(UserWarning, match="Heartbeat"):
            study.ask()  # another worker's trial, holding the only place
        loaded = LoadedBank.load(bank)
        with caplog.at_level("DEBUG"):
            outcome = _run_one(study, config, _objective_factory(config, loaded), study._storage, print)
    assert outcome == "over_budget"
    surplus = study.trials[1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["over_budget"] and "seconds" not in surplus.user_attrs
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], [r.getMessage() for r in caplog.records]


def test_the_grid_logs_a_search_once_and_leaves_resumed_jobs_out_of_the_eta(tmp_path):
    from patchprobe.bench import Grid, _log_job, grid_status

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("name: g\nencoders: [{name: toy-vit}]\ndatasets: [{name: d, dataset: synthetic}]\nprobes: [linear]\n")
    grid = Grid(grid_file)
    extract, search_job = grid.jobs()
    _log_job(grid, search_job, 30.0)
    _log_job(grid, search_job, 31.0)  # a second worker finishing the same search
    _log_job(grid, extract, 2.0, resumed=True)
    lines = [json.loads(line) for line in (grid.runs / "jobs.jsonl").read_text().splitlines()]
    assert [(e["job"], e["seconds"]) for e in lines] == [(search_job.key, 30.0), (extract.key, 2.0)]
    status = grid_status(grid_file)
    assert status["eta_complete"] is False  # no extraction timed from start to end yet: the resumed one does not count


@pytest.mark.slow
def test_a_killed_workers_trial_is_waited_for_reclaimed_and_the_sweep_finishes(bank, tmp_path, cluster):
    storage = cluster.database("killed")
    worker = _worker(bank, tmp_path / "out", storage, trials=3, epochs=12, extra=", grace_seconds=60")

    def running_the_last_trial():  # no free place is left for a fresh worker: it can only wait
        states = [t.state for t in _trials(storage)]
        return len(states) >= 3 and states[2] == TrialState.RUNNING and states[:2].count(TrialState.COMPLETE) == 2

    _wait_until(running_the_last_trial, 240, "the worker to run the last trial")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    finished = {t.number: t.value for t in _trials(storage, states=(TrialState.COMPLETE,))}
    held = [t.number for t in _trials(storage, states=(TrialState.RUNNING,))]
    assert held == [2] and sorted(finished) == [0, 1]
    time.sleep(2.5)  # silent for more than two heartbeats
    command = ["sweep", "--bank", str(bank), "--probe", "linear", "--out", str(tmp_path / "out"), "--storage", storage,
               "--study-name", "shared", "--trials", "3", "--epochs", "12", *FAST]
    gave_up = runner.invoke(app, [*command, "--grace-seconds", "60", "--wait-seconds", "1"])
    assert gave_up.exit_code == 3, gave_up.output
    assert "trial 2 is held by a silent worker" in gave_up.output and "--grace-seconds" in gave_up.output
    assert "Traceback" not in gave_up.output
    done = runner.invoke(app, [*command, "--grace-seconds", "3"])
    assert done.exit_code == 0, done.output
    assert "trial 2: its worker went silent" in done.output and "trials" in done.output
    assert (tmp_path / "out" / "summary.json").exists()
    live = _trials(storage, states=LIVE)
    assert [t.state for t in live] == [TrialState.COMPLETE] * 3  # the exact budget
    assert len(set(_settings(live))) == 3
    assert all({t.number: t.value for t in live}[n] == v for n, v in finished.items())  # finished trials unchanged
    reclaimed = [t.number for t in _trials(storage, states=(TrialState.FAIL,)) if not t.user_attrs.get("over_budget")]
    assert reclaimed == [2]


@pytest.mark.slow
def test_workers_wait_out_a_database_outage_and_lose_no_trial(bank, tmp_path, cluster):
    storage = cluster.database("outage")
    workers = [_worker(bank, tmp_path / "out", storage, trials=4, epochs=12, extra=", grace_seconds=40", wait="math.inf")
               for _ in range(2)]

    def training():
        states = [t.state for t in _trials(storage)]
        return TrialState.COMPLETE in states and TrialState.RUNNING in states

    _wait_until(training, 240, "a finished trial and one in flight")
    finished = {t.number: t.value for t in _trials(storage, states=(TrialState.COMPLETE,))}
    cluster.stop()
    time.sleep(12)
    assert all(worker.poll() is None for worker in workers)  # still alive, waiting
    cluster.start()
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "UnboundLocalError" not in err
    assert any("not answering" in out for out, _ in outputs) and any("back after" in out for out, _ in outputs)
    trials = _trials(storage)
    live = [t for t in trials if t.state in LIVE]
    assert len(live) == 4 and all(t.state == TrialState.COMPLETE for t in live)
    assert not [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("over_budget")]  # none lost
    assert len(set(_settings(live))) == 4
    assert all({t.number: t.value for t in live}[n] == v for n, v in finished.items())
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["trials"]["complete"] == 4
