"""The Optuna search: a small sweep on SQLite (extended, refused, its protocol saved), two concurrent workers on a
real PostgreSQL 15 cluster, and a worker killed mid-sweep that loses no finished trial. Faults (killed workers,
database outages, duplicates) are in test_sweep_faults.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from patchprobe.bank import extract_bank
from patchprobe.datasets import ManifestDataset, SyntheticConfig, write_synthetic_dataset
from patchprobe.encoders import create_encoder
from patchprobe.sweep import SweepConfig, edge_flags, run_sweep
from patchprobe.sweep.search import LIVE, open_study
from patchprobe.train import Run


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    config = SyntheticConfig(sizes={"train": 48, "valid": 16, "test": 16}, clip_seconds=1.5)
    manifest = write_synthetic_dataset(root / "data", config)
    extract_bank(ManifestDataset(manifest), create_encoder("toy-vit", width=32, depth=1, heads=2), root / "bank", progress=False)
    return root / "bank"


def _live(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state in LIVE]


def test_sqlite_sweep_runs_the_budget_then_three_seeds_and_reruns_idempotently(bank, tmp_path):
    config = SweepConfig(probe="linear", trials=6, epochs=4)
    summary = run_sweep(bank, config, tmp_path / "sweep", progress=False)
    study = optuna.load_study(study_name="bank/linear", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    trials = _live(study)
    assert len(trials) == 6 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert 1e-5 <= summary["best"]["weight_decay"] <= 5e-4 and 1e-3 <= summary["best"]["lr"] <= 1.0
    assert len(summary["test"]["map"]["values"]) == 3 and summary["num_parameters"] > 0
    assert all((tmp_path / "sweep" / "final" / f"seed={s}" / "metrics.json").exists() for s in range(3))
    stamp = (tmp_path / "sweep" / "final" / "seed=0" / "metrics.json").stat().st_mtime_ns
    again = run_sweep(bank, config, tmp_path / "sweep", progress=False)  # nothing left to do
    assert len(_live(study)) == 6 and again["best"] == summary["best"] and again["test"] == summary["test"]
    assert (tmp_path / "sweep" / "final" / "seed=0" / "metrics.json").stat().st_mtime_ns == stamp
    # the protocol is saved with the study, its folder and its summary; seed s also sets the data order
    pruner = {"pruner": "successive_halving", "reduction_factor": 4, "min_resource": "auto", "min_early_stopping_rate": 0,
              "report_every_epochs": 1}
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert study.user_attrs["pruner"] == saved["pruner"] == summary["pruner"] == pruner
    assert study.user_attrs["sweep_config"]["startup_trials"] == 3 and study.user_attrs["sweep_config"]["report_every"] == 1
    assert [Run(tmp_path / "sweep" / "final" / f"seed={s}").config.data_seed for s in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(bank, SweepConfig(probe="linear", trials=6, epochs=5), tmp_path / "sweep", progress=False)
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text()) == saved  # the refused worker left it alone


def test_a_finished_study_is_extended_keeping_its_trials(bank, tmp_path):
    config = SweepConfig(probe="linear", trials=4, epochs=2)
    run_sweep(bank, config, tmp_path / "sweep", progress=False)
    study = optuna.load_study(study_name="bank/linear", storage=f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")
    before = {t.number: (t.state, t.value, t.params) for t in _live(study)}
    summary = run_sweep(bank, config.model_copy(update={"trials": 6}), tmp_path / "sweep", progress=False)
    after = {t.number: (t.state, t.value, t.params) for t in _live(study)}
    assert len(after) == 6 and all(after[n] == before[n] for n in before)  # the 4 finished trials untouched
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 6
    assert study.user_attrs["sweep_config"]["trials"] == 6 and study.user_attrs["sweep_config"]["startup_trials"] == 2
    rows = (tmp_path / "sweep" / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,lr") and len(rows) == 7 and sum(",best" in row for row in rows) == 1
    with pytest.raises(ValueError, match="cannot shrink"):
        run_sweep(bank, config, tmp_path / "sweep", progress=False)


def test_first_half_is_sobol_and_edges_are_flagged():
    from patchprobe.sweep import SobolThenTPE

    sampler = SobolThenTPE(4, seed=0)
    study = optuna.create_study(sampler=SobolThenTPE(4, seed=0), direction="maximize")
    for number in range(4):  # startup trial k is Sobol row k, whoever asks for it
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        u = (np.log(lr) - np.log(1e-3)) / (np.log(1.0) - np.log(1e-3))
        assert trial.number == number and u == pytest.approx(sampler._table[number, 0])
        study.tell(trial, 0.0)
    assert edge_flags(1.05e-3, (1e-3, 1.0)) == "low" and edge_flags(0.95, (1e-3, 1.0)) == "high"
    assert edge_flags(3e-2, (1e-3, 1.0)) is None
    assert SweepConfig(probe="linear").n_startup() == 25 and SweepConfig(probe="linear", trials=50).lr_bounds() == (1e-3, 1.0)


def _worker(bank, out, storage, trials, extra=""):
    code = (f"from patchprobe.sweep import SweepConfig, run_sweep\n"
            f"run_sweep({str(bank)!r}, SweepConfig(probe='linear', trials={trials}, epochs=4{extra}), {str(out)!r}, "
            f"storage={storage!r}, study_name='shared', progress=False)\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL 15 cluster in a temporary folder on a free loopback port (initdb/pg_ctl), trust authentication
    (any password is accepted, so tests can put one in the URL and check it is never shown)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="patchprobe-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres account
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        self.data = self.root / "data"
        subprocess.run([*self.as_user, "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                       capture_output=True)
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=60"
        subprocess.run([*self.as_user, "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.as_user, "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"], capture_output=True)

    def database(self, name: str, password: str | None = None) -> str:
        """Create database `name`; its URL (with `password` in it when given)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        user = f"postgres:{password}" if password else "postgres"
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_cluster():
    """Skip unless the server binaries and psycopg are here; else a ThrowawayPostgres (close it after)."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not on PATH")
    pytest.importorskip("psycopg")
    return ThrowawayPostgres()


@pytest.fixture
def postgres():
    cluster = postgres_cluster()
    try:
        yield cluster.database("optuna")
    finally:
        cluster.close()


@pytest.mark.slow
def test_two_workers_share_one_postgres_study_without_duplicates(bank, tmp_path, postgres):
    # in passes of up to 4 trials: racing passes keep the budget exact and settings distinct too
    workers = [_worker(bank, tmp_path / "out", postgres, trials=10, extra=", trials_per_pass=4") for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    live = _live(study)
    assert len(live) == 10 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in live)
    params = [(t.params["lr"], t.params["weight_decay"]) for t in live]
    assert len(set(params)) == 10  # every trial its own setting: none run twice
    surplus = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("over_budget") for t in surplus)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 10


@pytest.mark.slow
def test_a_killed_worker_loses_no_finished_trial(bank, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    fast_heartbeat = ", heartbeat_seconds=1, grace_seconds=2, prune=False, trials_per_pass=4"  # killed mid-pass: 4 trials held
    worker = _worker(bank, tmp_path / "out", storage, trials=8, extra=fast_heartbeat)
    deadline = time.time() + 120
    finished = []
    while time.time() < deadline and worker.poll() is None:
        try:
            study = optuna.load_study(study_name="shared", storage=storage)
            finished = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        except Exception:  # the study is created by the worker; it may not exist yet
            finished = []
        if len(finished) >= 3:
            break
        time.sleep(0.05)
    assert worker.poll() is None, "the worker finished before it could be killed"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    before = {t.number: t.value for t in optuna.load_study(study_name="shared", storage=storage).get_trials(
        deepcopy=False, states=(TrialState.COMPLETE,))}
    assert len(before) >= 3
    time.sleep(3)  # past the grace period: the killed worker's running trial is now stale
    restarted = _worker(bank, tmp_path / "out", storage, trials=8, extra=fast_heartbeat)
    _, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err.decode()[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    after = {t.number: t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    assert all(after[number] == value for number, value in before.items())  # finished trials kept as they were
    assert len(after) == 8 and (tmp_path / "out" / "summary.json").exists()


def test_config_mismatch_is_refused_with_the_saved_settings(tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    open_study(SweepConfig(probe="mhca", trials=4), storage, "s")
    with pytest.raises(ValueError, match="was started with other settings"):
        open_study(SweepConfig(probe="mhca", trials=4, epochs=3), storage, "s")


def test_a_trial_orphaned_before_its_first_heartbeat_is_failed(tmp_path):
    """A worker killed between creating a trial and its first heartbeat: Optuna never sees it as stale."""
    from patchprobe.sweep.search import _fail_orphans

    study = open_study(SweepConfig(probe="linear", trials=2, heartbeat_seconds=1, grace_seconds=2), f"sqlite:///{tmp_path / 's.db'}", "o")
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): no heartbeat, as in the window
        orphan = study.ask()  # RUNNING, never marked started
    _fail_orphans(study, 1)
    assert study.trials[orphan.number].state == TrialState.RUNNING  # young: its worker may still be starting
    time.sleep(1.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[orphan.number].state == TrialState.RUNNING  # Optuna's own check misses it
    _fail_orphans(study, 1)
    assert study.trials[orphan.number].state == TrialState.FAIL
