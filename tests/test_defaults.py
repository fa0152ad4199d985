"""Defaults that work and honest training output: lr "auto", the loss-rise and few-steps checks, the valid
curve, per-class metrics, per-clip scores and decision thresholds in the run, ASL settings, plot grouping."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from patchprobe.bank import LoadedBank
from patchprobe.cli import app
from patchprobe.train import Run, TrainConfig, fit, train_probes
from patchprobe.train.losses import asymmetric_loss
from patchprobe.train.metrics import average_precision, f1_optimal_thresholds, per_class_metrics, roc_auc
from patchprobe.train.trainer import carve_split, loss_rise

GRID = (1e-3, 1e-2, 1e-1)


@pytest.fixture
def loaded(tiny_bank):
    return LoadedBank.load(tiny_bank)


def _base(**update) -> TrainConfig:
    return TrainConfig(probe="linear", epochs=3, batch_size=4, **update)


def test_auto_picks_the_grid_rate_best_on_valid_and_equals_training_it_alone(loaded):
    auto = train_probes(loaded.train, [_base(lr="auto", lr_grid=GRID)], loaded.evaluation_splits, progress=False)[0]
    alone = train_probes(loaded.train, [_base(lr=lr) for lr in GRID], loaded.evaluation_splits, progress=False)
    valid = [r.metrics["valid"]["map"] for r in alone]
    best = max(range(len(GRID)), key=lambda i: (valid[i], -GRID[i]))  # ties go to the lower rate
    selection = auto.lr_selection
    assert selection.grid == GRID and selection.chosen == GRID[best] == auto.config.lr
    assert selection.scores == pytest.approx(valid) and selection.chosen_on == "valid" and selection.metric == "map"
    assert selection.edge == {0: "low", len(GRID) - 1: "high"}.get(best)
    for key, value in alone[best].probe.state_dict().items():
        torch.testing.assert_close(auto.probe.state_dict()[key], value, rtol=0, atol=0)
    assert auto.metrics["test"] == alone[best].metrics["test"]


def test_auto_uses_the_probe_registered_grid_by_default(loaded):
    from patchprobe.probes import PROBES

    result = train_probes(loaded.train, [TrainConfig(probe="linear", epochs=1, batch_size=4)], loaded.evaluation_splits, progress=False)[0]
    assert result.lr_selection.grid == tuple(sorted(PROBES.spec("linear").lr_grid))


def test_auto_without_a_valid_split_chooses_on_a_seeded_carve_and_says_so(loaded):
    said = []
    result = train_probes(loaded.train, [_base(lr_grid=GRID)], {"test": loaded["test"]}, progress=False, log=said.append)[0]
    assert "carve of train" in result.lr_selection.chosen_on and said and "no valid split" in said[0]
    # the chosen rate is then trained on all of train: the same probe as asking for that rate
    alone = train_probes(loaded.train, [_base(lr=result.config.lr)], {"test": loaded["test"]}, progress=False)[0]
    assert result.metrics["test"] == alone.metrics["test"]
    rest, carve = carve_split(loaded.train, 0.2, seed=0)
    again_rest, again_carve = carve_split(loaded.train, 0.2, seed=0)
    assert len(rest) + len(carve) == len(loaded.train) and carve.meta.clip_ids == again_carve.meta.clip_ids
    assert not set(rest.meta.clip_ids) & set(carve.meta.clip_ids)


def test_run_saves_the_choice_and_is_reused_for_the_same_auto_setting(loaded, tmp_path):
    config = _base(lr_grid=GRID)
    first = fit(loaded, [config], [tmp_path / "run"], progress=False)[0]
    run = Run(tmp_path / "run")
    assert run.lr_selection == first.lr_selection and run.config.lr == first.lr_selection.chosen
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["lr_selection"]["grid"] == list(GRID) and isinstance(saved["train"]["lr"], float)
    assert fit(loaded, [config], [tmp_path / "run"], progress=False)[0].reused
    assert not run.matches(_base(lr_grid=(1e-3, 1e-2)))


def test_lr_option_is_auto_or_a_positive_rate():
    assert TrainConfig().lr == "auto" and TrainConfig(lr="0.01").lr == 0.01
    for bad in ("fast", 0, -1.0, math.inf):
        with pytest.raises(ValueError, match="lr must be 'auto' or a finite number greater than 0"):
            TrainConfig(lr=bad)
    with pytest.raises(ValueError, match="lr_grid"):
        TrainConfig(lr_grid=(0.1, -1.0))


def test_loss_rise_flags_a_loss_ending_far_above_its_start_or_rising_late():
    curve = lambda values: [{"epoch": i + 1, "loss": v} for i, v in enumerate(values)]  # noqa: E731
    assert "ended at 9.5" in loss_rise(curve([0.87, 5.86, 11.4, 9.5]))  # the mhca run
    assert "rose over the last" in loss_rise(curve([1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.3, 0.4, 0.5]))
    assert loss_rise(curve([1.0, 0.7, 0.5, 0.4, 0.35, 0.3, 0.31, 0.29, 0.28])) is None
    assert loss_rise(curve([1.0])) is None


def test_rising_loss_is_reported_in_the_run_with_few_steps_valid_curve_and_peak(loaded, tmp_path):
    # lr 1 on the tiny bank: mhca's loss stays finite but ends far above where it started (2.65 -> 22.9)
    result = fit(loaded, [TrainConfig(probe="mhca", epochs=6, batch_size=4, lr=1.0)], [tmp_path / "run"], progress=False)[0]
    metrics = Run(tmp_path / "run").metrics
    assert result.diverged is None and metrics.unstable and "lower the learning rate" in metrics.unstable
    assert any("only 18 optimiser steps" in w for w in metrics.warnings) and metrics.optimizer_steps == 18
    history = Run(tmp_path / "run").history
    assert len(history) == 6 and all("valid_map" in entry for entry in history)
    curve = [entry["valid_map"] for entry in history]
    assert metrics.peak_epoch == int(np.argmax(curve)) + 1


def test_per_class_metrics_scores_and_thresholds_are_saved(loaded, tmp_path):
    fit(loaded, [_base(lr=1e-2)], [tmp_path / "run"], progress=False)
    run = Run(tmp_path / "run")
    for split in ("valid", "test"):
        ids, labels, scores = run.scores(split)
        assert list(ids) == loaded[split].meta.clip_ids and scores.shape == labels.shape == (4, 3) and scores.dtype == np.float32
        np.testing.assert_array_equal(labels, loaded[split].labels.numpy().astype(np.uint8))
        assert ((scores >= 0) & (scores <= 1)).all()
        table = run.class_metrics(split)
        assert table.classes == loaded.identity.classes and table.support == labels.sum(axis=0).tolist()
        # the macro mAP in metrics.json is the mean of the per-class APs (float16 scores keep the ranking here)
        assert np.mean([ap for ap in table.ap if ap is not None]) == pytest.approx(run.metrics.split(split)["map"])
    thresholds = run.thresholds
    assert thresholds.rule == "f1" and thresholds.chosen_on == "valid" and len(thresholds.values) == 3
    _, labels, scores = run.scores("valid")
    expected, _ = f1_optimal_thresholds(labels, scores.astype(np.float64))
    assert thresholds.values == pytest.approx(expected, abs=1e-3)
    with pytest.raises(Exception, match="no split 'train'"):
        run.scores("train")


def test_f1_thresholds_match_a_brute_force_search():
    rng = np.random.default_rng(1)
    labels = rng.random((40, 4)) < 0.3
    labels[0] = True
    scores = np.round(rng.random((40, 4)) + 0.4 * labels, 2)  # rounded: tie groups
    values, f1 = f1_optimal_thresholds(labels, scores)
    for c in range(4):
        def f1_at(t):
            predicted = scores[:, c] >= t
            tp = (predicted & labels[:, c]).sum()
            return 2 * tp / (predicted.sum() + labels[:, c].sum())
        best = max(f1_at(t) for t in np.unique(scores[:, c]))
        assert f1[c] == pytest.approx(best) and f1_at(values[c]) == pytest.approx(best)
    assert f1_optimal_thresholds(np.zeros((3, 1)), np.ones((3, 1))) == ([0.5], [None])


def test_per_class_metrics_and_confusion_matrix():
    labels = np.eye(3)[[0, 0, 1, 2, 2, 2]]
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0, 0.1, 0.9], [0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    out = per_class_metrics(labels, scores, multilabel=False)
    assert out["support"] == [2, 1, 3] and out["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert out["ap"][1] == pytest.approx(average_precision(labels[:, 1], scores[:, 1]))
    assert out["auroc"][2] == pytest.approx(roc_auc(labels[:, 2], scores[:, 2]))
    assert per_class_metrics(np.zeros((2, 1)), np.ones((2, 1)), True)["ap"] == [None]


def test_asl_settings_are_explicit_default_to_bird_mae_and_are_used(loaded, tmp_path):
    config = TrainConfig()
    assert (config.asl_gamma_neg, config.asl_gamma_pos, config.asl_clip) == (4.0, 1.0, 0.05)
    fit(loaded, [_base(lr=1e-2, asl_gamma_pos=0.0)], [tmp_path / "run"], progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["asl_gamma_neg"], saved["asl_gamma_pos"], saved["asl_clip"]) == (4.0, 0.0, 0.05)
    # gamma_pos weighs each positive's log-likelihood by (1 - p)^gamma_pos
    logits, targets = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    p = torch.sigmoid(logits)
    assert asymmetric_loss(logits, targets) == pytest.approx(float(-(1 - p) * torch.log(p)))
    assert asymmetric_loss(logits, targets, gamma_pos=0.0) == pytest.approx(float(-torch.log(p)))
    gentle = train_probes(loaded.train, [_base(lr=1e-2, asl_gamma_pos=0.0), _base(lr=1e-2)], progress=False)
    assert gentle[0].history[0]["loss"] != gentle[1].history[0]["loss"]


def test_cli_train_prints_the_choice_and_version(tiny_bank, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--bank", str(tiny_bank), "--probe", "linear", "--out", str(tmp_path / "run"),
                                 "--epochs", "2", "--batch-size", "4", "--quiet"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "lr auto: map on valid for 0.003:" in flat and "optimiser steps" in flat and "peaked at epoch" in flat
    result = runner.invoke(app, ["train", "--bank", str(tiny_bank), "--probe", "linear", "--out", str(tmp_path / "r2"), "--lr", "fast"])
    assert result.exit_code == 2 and "--lr" in result.output and "auto" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("patchprobe ")


def test_plot_groups_runs_by_every_setting_but_the_seed(tmp_path):
    import pandas as pd

    from patchprobe.report.figures import sweep_plot

    rows = []
    for seed in (0, 1):
        for multilabel, value in ((True, 0.8), (False, 0.4)):
            rows.append({"run": f"r{seed}{multilabel}", "probe": "protobin", "multilabel": multilabel, "solver": "adamw", "lr": 0.1 + seed,
                         "lr_setting": "auto", "prototypes_per_class": 5, "seed": seed, "split": "test", "metric": "map",
                         "value": value + 0.01 * seed})
        rows.append({"run": f"l{seed}", "probe": "linear", "multilabel": True, "solver": "lbfgs", "lr": None, "lr_setting": "-",
                     "seed": seed, "split": "test", "metric": "map", "value": 0.5})
    frame = pd.DataFrame(rows)
    table = sweep_plot(frame, "prototypes_per_class", tmp_path / "j.png")
    # the multi-label and single-label runs are two lines, each pooling its two seeds (different chosen rates)
    assert sorted(table["line"]) == ["protobin, multilabel=False", "protobin, multilabel=True"]
    assert table["seeds"].tolist() == [2, 2] and sorted(table["mean"].round(3)) == [0.405, 0.805]
    by_lr = sweep_plot(frame, "lr", tmp_path / "lr.png")
    assert "linear" not in set(by_lr["probe"])  # L-BFGS runs have no learning rate to plot at


def test_the_demo_rates_come_from_the_registered_grids(monkeypatch):
    """One source of learning rates: the full demo trains each probe's registered grid, --quick one member of it."""
    from patchprobe import demo
    from patchprobe.probes import PROBES

    full, quick = demo.DemoConfig().lr_grid, demo.DemoConfig.quick_mode().lr_grid
    for name in PROBES.names():
        assert full[name] == list(PROBES.spec(name).lr_grid)
        assert len(quick[name]) == 1 and quick[name][0] in PROBES.spec(name).lr_grid, name
    monkeypatch.setitem(demo.QUICK_PICKS, "linear", 0.5)  # a pick the registration no longer offers is refused
    with pytest.raises(ValueError, match="linear's pick 0.5 is not in its registered lr_grid"):
        demo.DemoConfig.quick_mode()
