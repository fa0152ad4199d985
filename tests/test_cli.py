import json

from typer.testing import CliRunner

from patchprobe.cli import app
from patchprobe.demo import DemoConfig, run_demo

runner = CliRunner()


def test_extract_train_info_commands(tiny_dataset, tmp_path):
    bank, out = tmp_path / "bank", tmp_path / "run"
    result = runner.invoke(app, ["extract", "--manifest", str(tiny_dataset), "--encoder", "toy-vit", "--bank", str(bank), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--bank", str(bank), "--probe", "protobin", "--out", str(out), "--epochs", "2",
                                 "--prototypes-per-class", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["map"] <= 1.0
    assert json.loads((out / "config.json").read_text())["train"]["probe_args"] == {"prototypes_per_class": 3}
    result = runner.invoke(app, ["info", str(bank)])
    assert result.exit_code == 0 and "toy-vit" in result.output and "train" in result.output


def test_cli_errors_are_clear_not_tracebacks(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2 and "not a bank" in result.output
    result = runner.invoke(app, ["extract", "--manifest", str(tmp_path / "missing.csv"), "--encoder", "toy-vit", "--bank", str(tmp_path / "b")])
    assert result.exit_code == 2 and "manifest not found" in result.output


def test_demo_writes_summary_table_and_figure(tmp_path):
    config = DemoConfig(encoder="toy-vit", out=tmp_path / "demo", sizes={"train": 24, "valid": 8, "test": 12}, clip_seconds=2.0,
                        epochs=2, lr_grid={"linear": [1e-2, 1e-3], "mhca": [1e-3], "protobin": [3e-3]}, prototypes_per_class=2)
    summary = run_demo(config, progress=False)
    assert set(summary["datasets"]) == {"multilabel", "singlelabel"}
    assert summary["datasets"]["multilabel"]["metric"] == "map" and summary["datasets"]["singlelabel"]["metric"] == "accuracy"
    for name in ("summary.json", "results.md", "demo_results.png", "demo_config.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    linear = summary["datasets"]["multilabel"]["probes"]["linear"]
    candidates = linear["lr_candidates"]
    assert set(candidates) == {"0.01", "0.001"} and candidates[str(linear["lr"])] == max(candidates.values())
    again = run_demo(config, progress=False)  # everything reused
    assert again["datasets"]["multilabel"]["probes"] == summary["datasets"]["multilabel"]["probes"]
