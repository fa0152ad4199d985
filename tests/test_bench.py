"""The grid runner: jobs run once, a rerun skips them all, a bank is loaded once for all its searches, results land in
one tidy table, status reports progress."""

import json
import shutil
import weakref
from pathlib import Path

import pandas as pd
import yaml
from typer.testing import CliRunner

from patchprobe.bank import LoadedBank
from patchprobe.cli import app
from patchprobe.bench import BankInMemory, grid_status, run_grid

runner = CliRunner()


def _grid(tmp_path, probes=("linear", "mhca")):
    grid = {
        "name": "t", "trials": 3, "epochs": 2, "seeds": 2, "probes": list(probes),
        "encoders": [{"name": "toy-vit", "args": {"width": 32, "depth": 1, "heads": 2}}],
        "datasets": [{"name": "ml", "dataset": "synthetic",
                      "options": {"root": "data/ml", "sizes": {"train": 24, "valid": 8, "test": 8}, "clip_seconds": 1.5}}],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _count_bank_loads(monkeypatch) -> list[Path]:
    """Every LoadedBank.load from now on (the real loader, counted): the folders it read."""
    loads, load = [], LoadedBank.load

    def counted(cls, root, device="cpu"):
        loads.append(Path(root))
        return load(root, device=device)

    monkeypatch.setattr(LoadedBank, "load", classmethod(counted))
    return loads


def test_grid_runs_every_job_once_and_writes_a_tidy_table(tmp_path, monkeypatch):
    path = _grid(tmp_path)
    assert grid_status(path)["counts"]["pending"] == 1 and grid_status(path)["counts"]["waiting"] == 2
    loads = _count_bank_loads(monkeypatch)
    table = run_grid(path, progress=False, log=lambda *_: None)
    assert loads == [tmp_path / "banks" / "toy-vit" / "ml"]  # both searches (and their seed runs) on one loaded copy
    assert set(table["probe"]) == {"linear", "mhca"} and set(table["seed"]) == {0, 1}
    assert {"encoder", "dataset", "probe", "seed", "split", "metric", "value", "num_parameters", "train_seconds"} <= set(table.columns)
    assert len(table.drop_duplicates(["probe", "seed", "split", "metric"])) == len(table)  # one row per key
    on_disk = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert len(on_disk) == len(table) and (tmp_path / "results" / "results.csv").exists()
    jobs = (tmp_path / "runs" / "jobs.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["job"] for line in jobs) == ["extract/toy-vit/ml", "sweep/toy-vit/ml/linear", "sweep/toy-vit/ml/mhca"]
    run_grid(path, progress=False, log=lambda *_: None)  # rerun: everything is done
    assert len((tmp_path / "runs" / "jobs.jsonl").read_text().splitlines()) == 3
    status = grid_status(path)
    assert status["counts"]["done"] == 3 and status["eta_seconds"] == 0


def test_an_added_probe_runs_only_its_own_jobs(tmp_path):
    path = _grid(tmp_path, probes=("linear",))
    run_grid(path, progress=False, log=lambda *_: None)
    _grid(tmp_path, probes=("linear", "freqpool"))
    result = runner.invoke(app, ["bench", "status", str(path)], env={"COLUMNS": "160"})
    assert result.exit_code == 0 and "sweep/toy-vit/ml/freqpool" in result.output and "pending" in result.output
    result = runner.invoke(app, ["bench", "run", str(path), "--quiet"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    jobs = [json.loads(line)["job"] for line in (tmp_path / "runs" / "jobs.jsonl").read_text().splitlines()]
    assert jobs[-1] == "sweep/toy-vit/ml/freqpool" and len(jobs) == 3 and "freqpool" in result.output


def test_the_worker_holds_one_bank_at_a_time(tmp_path, monkeypatch):
    path = _grid(tmp_path, probes=("linear",))
    run_grid(path, progress=False, log=lambda *_: None)
    first = tmp_path / "banks" / "toy-vit" / "ml"
    second = tmp_path / "banks" / "copy"
    shutil.copytree(first, second)
    loads = _count_bank_loads(monkeypatch)
    held = BankInMemory("cpu")
    bank = held.get(first)
    assert held.get(first) is bank and loads == [first]
    gone = weakref.ref(bank)
    del bank
    other = held.get(second)
    assert loads == [first, second] and other.root == second
    assert gone() is None  # the first bank was let go before the second was read


def test_trials_per_pass_is_left_out_of_a_search_jobs_identity(tmp_path):
    """How a worker trains (trials per pass) does not define a search: a grid folder made without it is reused with it."""
    from patchprobe.bench import Grid

    path = _grid(tmp_path, probes=("linear",))
    before = Grid(path)
    job = before.jobs()[1]
    with_passes = yaml.safe_load(path.read_text()) | {"trials_per_pass": 2}
    path.write_text(yaml.safe_dump(with_passes))
    after = Grid(path)
    assert after.sweep_config("linear", "ml").trials_per_pass == 2
    assert after.job_identity(job) == before.job_identity(job)
    assert after.job_identity(job)["search"] == {"probe": "linear", "trials": 3, "epochs": 2, "seeds": 2}
