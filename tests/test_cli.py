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


def test_demo_zoo_mode_reports_mean_and_sd_over_seeds(tmp_path):
    from patchprobe.probes import PROBES

    config = DemoConfig(encoder="toy-vit", out=tmp_path / "zoo", sizes={"train": 24, "valid": 8, "test": 12}, clip_seconds=2.0,
                        epochs=2, probes=["all"], seeds=[0, 1], kinds=["multilabel"], prototypes_per_class=2,
                        lr_grid={name: [1e-2] for name in PROBES.names()} | {"linear": [1e-2, 1e-1]})
    summary = run_demo(config, progress=False)
    table = summary["datasets"]["multilabel"]["probes"]
    assert sorted(table) == sorted(PROBES.names() + ["linear (L-BFGS)"])
    converged = table.pop("linear (L-BFGS)")  # the fair baseline: solved to convergence, L2 chosen on valid
    assert converged["solver"] == "lbfgs" and len(converged["l2_candidates"]) == 13 and converged["l2"] > 0
    for cell in table.values():
        tests = list(cell["test_per_seed"].values())
        assert len(tests) == 2 and abs(cell["test"] - sum(tests) / 2) < 1e-12
    assert table["linear"]["lr_at_grid_edge"] and not table["mhca"]["lr_at_grid_edge"]
    assert "±" in (tmp_path / "zoo" / "results.md").read_text()
    assert (tmp_path / "zoo" / "demo_results.png").stat().st_size > 10_000


def test_probes_table_counts_parameters_for_given_sizes(monkeypatch):
    result = runner.invoke(app, ["probes", "--dim", "768", "--classes", "527"])
    assert result.exit_code == 0, result.output
    # mhca: 12 D^2 + 14 D + (D + 1) C; linear: (D + 1) C; protobin (J=20): M D + (M + 1) C with M = 20 C.
    d, c, m = 768, 527, 20 * 527
    for count in (12 * d * d + 14 * d + (d + 1) * c, (d + 1) * c, m * d + (m + 1) * c):
        assert f"{count:,}" in result.output
    from patchprobe import cli

    monkeypatch.setattr(cli.console, "_width", 250)  # wide enough that no cell folds: family, lr range, grid, arguments
    wide = runner.invoke(app, ["probes"])
    protobin = next(line for line in wide.output.splitlines() if " protobin " in line)
    for cell in ("prototype", "0.01-3", "0.01, 0.03, 0.1, 0.3", "prototypes_per_class=20, dropout=0.0"):
        assert cell in protobin, protobin


def test_every_command_reports_bad_input_in_one_line(tmp_path):
    for command in (["analyze", str(tmp_path)], ["export", str(tmp_path / "missing")], ["plot", str(tmp_path), "--x", "lr"],
                    ["train", "--bank", str(tmp_path), "--probe", "linear", "--out", str(tmp_path / "run")],
                    ["sweep", "--bank", str(tmp_path), "--probe", "nope", "--out", str(tmp_path / "s")],
                    ["bench", "status", str(tmp_path / "GRID.yaml")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and result.output.startswith("error:") and "Traceback" not in result.output, (command, result.output)


def test_export_analyze_and_plot_commands(tiny_bank, tmp_path):
    runs = tmp_path / "runs"
    for j in (1, 2):
        result = runner.invoke(app, ["train", "--bank", str(tiny_bank), "--probe", "protobin", "--out", str(runs / f"J={j}"),
                                     "--epochs", "2", "--prototypes-per-class", str(j), "--quiet"])
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", str(runs / "J=2"), "--format", "packed"])
    assert result.exit_code == 0 and "32x smaller" in result.output, result.output
    result = runner.invoke(app, ["export", str(runs / "J=2"), "--format", "onnx"])
    assert result.exit_code == 0 and "max |logit difference|" in result.output, result.output
    result = runner.invoke(app, ["analyze", str(runs / "J=2"), "--clips", "1"])
    assert result.exit_code == 0 and "dead prototypes" in result.output, result.output
    result = runner.invoke(app, ["plot", str(runs), "--x", "prototypes_per_class"])
    assert result.exit_code == 0 and (runs / "map_vs_prototypes_per_class.png").exists(), result.output
    result = runner.invoke(app, ["plot", str(runs), "--x", "nonsense"])
    assert result.exit_code == 2 and "no run sets 'nonsense'" in result.output


def test_encoders_table_lists_the_facts_of_every_encoder():
    from patchprobe.encoders import ENCODERS

    for name in ENCODERS.names():
        assert set(ENCODERS.facts(name)) == {"sample_rate", "front_end", "tokens_10s", "cls", "weights"}, name
    result = runner.invoke(app, ["encoders"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and all(name in result.output for name in ENCODERS.names())
