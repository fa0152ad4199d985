"""The paper's protocol as grid data: per-dataset probe arguments, k-shot draws aggregated as mean ± sd,
BirdSet mixup variants; job identity (a changed entry is refused, never reused); safe names; `bench plan`."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from patchprobe.bench import Grid, run_grid, summarize_results
from patchprobe.bench_plan import plan_grid
from patchprobe.cli import app
from patchprobe.errors import BankError

from . import hub_fixtures

runner = CliRunner()
PAPER_GRID = Path(__file__).resolve().parents[1] / "examples" / "paper-grid.yaml"


def _birdset_grid(tmp_path, **changes):
    pytest.importorskip("datasets")
    if not (tmp_path / "hsn-files").exists():
        hub_fixtures.birdset_data_branch(tmp_path / "hsn-files", recordings_per_class=4)
    grid = {
        "name": "kshot", "trials": 2, "startup_trials": 2, "epochs": 1, "seeds": 2, "probes": ["linear", "protobin"],
        "encoders": [{"name": "toy-vit", "args": {"width": 16, "depth": 1, "heads": 2}}],
        "datasets": [{"name": "hsn", "dataset": "hsn", "options": {"data_dir": "hsn-files", "k": 2, "valid_fraction": 0.3},
                      "draws": [1, 2], "augment_variants": 1, "augment_p": 1.0,
                      "probe_args": {"prototype": {"prototypes_per_class": 2}}}],
        **changes,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_kshot_draws_probe_args_and_mixup_run_end_to_end(tmp_path):
    path = _birdset_grid(tmp_path)
    grid = Grid(path)
    assert list(grid.cells) == ["hsn-draw1", "hsn-draw2"]
    assert grid.sweep_config("protobin", "hsn-draw1").probe_args == {"prototypes_per_class": 2}
    assert grid.sweep_config("linear", "hsn-draw1").probe_args == {}
    table = run_grid(path, progress=False, log=lambda *_: None)
    assert set(table["dataset"]) == {"hsn"} and set(table["draw"]) == {1, 2} and set(table["seed"]) == {0, 1}
    banks = tmp_path / "banks" / "toy-vit"
    first = json.loads((banks / "hsn-draw1" / "bank.json").read_text())["source"]
    assert first["options"]["seed"] == 1 and first["augmentation"]["mixup"]["variants"] == 1
    assert json.loads((banks / "hsn-draw2" / "bank.json").read_text())["source"]["options"]["seed"] == 2
    run = tmp_path / "runs" / "toy-vit" / "hsn-draw1" / "protobin" / "final" / "seed=0" / "config.json"
    assert json.loads(run.read_text())["train"]["probe_args"] == {"prototypes_per_class": 2}
    cells = pd.read_csv(tmp_path / "results" / "cells.csv")
    row = cells[(cells.probe == "protobin") & (cells.split == "test") & (cells.metric == "map")].iloc[0]
    values = table[(table.probe == "protobin") & (table.split == "test") & (table.metric == "map")]
    per_draw = values.groupby("draw")["value"].mean()
    assert row["n"] == 2 and row["seeds"] == 2
    assert row["mean"] == pytest.approx(per_draw.mean()) and row["sd"] == pytest.approx(per_draw.std(ddof=1))


def test_summary_without_draws_is_over_seeds():
    table = pd.DataFrame({"encoder": "e", "dataset": "d", "draw": None, "probe": "p", "seed": [0, 1, 2], "split": "test",
                          "metric": "map", "value": [0.5, 0.6, 0.7]})
    row = summarize_results(table).iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.6) and row["sd"] == pytest.approx(0.1)


def test_a_changed_grid_entry_is_refused_not_reused(tmp_path):
    path = _birdset_grid(tmp_path, probes=["linear"], seeds=1)
    run_grid(path, progress=False, log=lambda *_: None)
    _birdset_grid(tmp_path, probes=["linear"], seeds=1,
                  encoders=[{"name": "toy-vit", "args": {"width": 16, "depth": 2, "heads": 2}}])  # same key, new args
    with pytest.raises(BankError, match="another setting.*encoder changed"):
        run_grid(path, progress=False, log=lambda *_: None)
    _birdset_grid(tmp_path, probes=["linear"], seeds=1, trials=3)  # a new budget is a new search, not a done one
    with pytest.raises(BankError, match="search changed"):
        run_grid(path, progress=False, log=lambda *_: None)


@pytest.mark.parametrize("entry", [{"encoders": [{"name": "toy-vit", "key": "../../escape"}]},
                                   {"datasets": [{"name": "../up", "dataset": "synthetic"}]},
                                   {"datasets": [{"name": ".hidden", "dataset": "synthetic"}]},
                                   {"encoders": [{"name": "/abs"}]}])
def test_grid_names_cannot_leave_their_folder(tmp_path, entry):
    grid = {"name": "x", "probes": ["linear"], "encoders": [{"name": "toy-vit"}],
            "datasets": [{"name": "ok", "dataset": "synthetic"}], **entry}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    result = runner.invoke(app, ["bench", "run", str(tmp_path / "grid.yaml"), "--quiet"], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "use letters, digits" in result.output and "Traceback" not in result.output
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "banks").exists()


def test_the_paper_grid_plans_every_job_with_estimates():
    plan = plan_grid(PAPER_GRID)
    kinds = [job["kind"] for job in plan["jobs"]]
    # 9 encoders x (7 BirdSet sets x 3 draws + 7 other sets) cells, 13 probes each
    assert kinds.count("extract") == 9 * 28 and kinds.count("sweep") == 9 * 28 * 13
    assert plan["trials"] == 50 and plan["epochs"] == 30 and plan["seeds"] == 3 and not plan["unknown"]
    jobs = {job["job"]: job for job in plan["jobs"]}
    as20k = jobs["extract/eat-base/as20k"]
    # 35,824 clips x 64 x 8 tokens x 768 x 2 bytes
    assert as20k["bank_gb"] == pytest.approx(35824 * 512 * 768 * 2 / 1e9)
    assert as20k["hours"]["cpu"] > 100 * as20k["hours"]["cuda"]
    protobin = jobs["sweep/eat-base/as20k/protobin"]["hours"]["cpu"]
    assert protobin > jobs["sweep/eat-base/as20k/linear"]["hours"]["cpu"]  # J x C prototypes cost more than pooling
    grid = Grid(PAPER_GRID)
    assert grid.sweep_config("protobin", "as20k").probe_args == {"prototypes_per_class": 10}
    assert grid.sweep_config("protobin", "fsd50k").probe_args == {}
    assert grid.cells["nes-draw3"][0].augment_variants == 5 and grid.cells["esc50"][0].options == {"protocol": "random"}
    result = runner.invoke(app, ["bench", "plan", str(PAPER_GRID), "--totals"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "252 extractions, 3276 searches of 50 trials x 30 epochs" in result.output
    # every rate is named: measured extraction devices, the training benchmark, and GPU training as derived
    assert "NVIDIA H100 80GB HBM3, float16" in result.output and "GPU training not measured" in result.output
    assert plan["totals"]["hours"]["cuda-fp16"] < plan["totals"]["hours"]["cuda"] < plan["totals"]["hours"]["cpu"] / 100
