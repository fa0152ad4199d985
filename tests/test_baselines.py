"""Fair baselines: training-split standardisation, the converged L-BFGS linear probe, and edge flags."""

import numpy as np
import optuna
import pytest
import torch

from patchprobe._io import write_json
from patchprobe.bank.store import SplitMeta, SplitWriter
from patchprobe.sweep import SweepConfig, run_sweep
from patchprobe.bank import LoadedBank
from patchprobe.train import TrainConfig, fit, fit_lbfgs, load_probe, search_l2, train_probes


def separable_bank(root, classes=3, dim=8, seed=0):
    """Tokens whose clip mean is a class centre (far apart, offset from 0, unequal scales) plus small noise:
    a linear probe on the mean can score 100 %."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 3.0 + 5.0
    scales = np.linspace(0.5, 20.0, dim)  # unequal feature scales: what standardisation is for
    write_json(root / "bank.json", {"encoder": "synthetic", "dataset": "separable", "classes": [f"c{i}" for i in range(classes)]})
    for split, count in (("train", 60), ("valid", 30), ("test", 60)):
        meta = SplitMeta(split=split, clip_ids=[f"{split}{i}" for i in range(count)], classes=[f"c{i}" for i in range(classes)],
                         multilabel=False, encoder="synthetic", encoder_config={}, encoder_config_hash="x", sample_rate=16000,
                         token_dim=dim, global_dim=0, global_source="none", dtype="float32", dataset="separable",
                         dataset_fingerprint=split)
        writer = SplitWriter(root / split, meta)
        targets = np.arange(count) % classes
        labels = np.eye(classes, dtype=np.float32)[targets]
        writer.write_labels(labels)
        tokens = [((centres[t] + 0.3 * rng.standard_normal((4, 1, dim))) * scales).astype(np.float32) for t in targets]
        writer.append(meta.clip_ids, tokens, [np.ones((4, 1), bool)] * count, None)
        writer.finish()
    return root


@pytest.fixture
def bank(tmp_path):
    return separable_bank(tmp_path / "bank")


def test_lbfgs_reaches_the_optimum_and_searched_sgd_comes_within_a_point(bank):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    chosen, scores, edge = search_l2(splits["train"], splits["valid"], TrainConfig(probe="linear"))
    result = fit(loaded, [chosen], [bank.parent / "lbfgs"], progress=False)[0]
    assert result.metrics["test"]["accuracy"] == 1.0 and result.history[0]["lbfgs_iterations"] > 0
    # converged: the gradient of the regularised loss vanishes at the solution
    probe = result.probe
    features = probe.features(splits["train"].tokens.float(), splits["train"].mask)
    logits = probe.head(features)
    loss = torch.nn.functional.cross_entropy(logits, splits["train"].labels.argmax(1)) + 0.5 * chosen.weight_decay * probe.head.weight.pow(2).sum()
    gradient = torch.autograd.grad(loss, probe.head.weight)[0]
    assert float(gradient.abs().max()) < 1e-4
    # the 30-epoch AdamW protocol with its learning rate searched on valid lands within 1 point of it
    grid = [1e-3, 1e-2, 1e-1, 1.0]
    runs = train_probes(splits["train"], [TrainConfig(probe="linear", lr=lr) for lr in grid], {"valid": splits["valid"], "test": splits["test"]},
                        progress=False)
    best = max(runs, key=lambda r: (r.metrics["valid"]["accuracy"], -r.history[-1]["loss"]))
    assert best.metrics["test"]["accuracy"] >= result.metrics["test"]["accuracy"] - 0.01


def test_standardisation_uses_training_statistics_and_survives_save_load_and_export(bank, tmp_path):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    result = fit(loaded, [TrainConfig(probe="linear", lr=0.1, epochs=3)], [tmp_path / "run"], progress=False)[0]
    pooled = splits["train"].tokens.float().mean(dim=(1, 2)).double()
    torch.testing.assert_close(result.probe.norm.mean.double(), pooled.mean(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(result.probe.norm.std.double(), torch.sqrt(pooled.var(0, unbiased=False) + 1e-5), rtol=1e-5, atol=1e-4)
    loaded = load_probe(tmp_path / "run")
    torch.testing.assert_close(loaded.norm.mean, result.probe.norm.mean, rtol=0, atol=0)
    tokens, mask = splits["test"].tokens[:5].float(), splits["test"].mask[:5]
    torch.testing.assert_close(loaded(tokens, mask), result.probe(tokens, mask), rtol=0, atol=0)
    pytest.importorskip("onnxruntime")
    from patchprobe.export import export_onnx

    report = export_onnx(loaded, tmp_path / "linear.onnx")  # checked against PyTorch on raw, unstandardised inputs
    assert report["max_abs_diff"] < 1e-3
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "linear.onnx"))
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, [tokens.numpy(), mask.numpy()])))[0]
    np.testing.assert_allclose(got, loaded(tokens, mask).detach().numpy(), rtol=1e-4, atol=1e-3)


def test_lbfgs_refuses_probes_that_learn_their_pooling(bank):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    with pytest.raises(ValueError, match="learns its pooling"):
        fit_lbfgs(splits["train"], TrainConfig(probe="mhca", solver="lbfgs"))


def test_edge_flags_when_the_optimum_sits_at_a_bound(bank, tmp_path):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    _, scores, edge = search_l2(splits["train"], splits["valid"], TrainConfig(probe="linear"), grid=(1e-3, 1e5))
    assert edge == "low" and scores[1e-3] > scores[1e5]  # 1e5 crushes the weights: the weakest strength wins
    config = SweepConfig(probe="linear", trials=1, epochs=2, seeds=1)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="edge", storage=storage, direction="maximize")
    study.enqueue_trial({"lr": 0.99, "weight_decay": 1e-4})  # within 10 % of the top of 1e-3 .. 1 (log scale)
    summary = run_sweep(bank, config, tmp_path / "sweep", storage=storage, study_name="edge", progress=False)
    assert summary["edge"] == {"lr": "high", "weight_decay": None}
