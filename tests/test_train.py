import json

import numpy as np
import pytest
import torch

from patchprobe.probes import PROBES
from patchprobe.bank import LoadedBank
from patchprobe.train import Run, TrainConfig, fit, load_probe, predict, train_probes


@pytest.fixture
def bank(tiny_bank):
    return tiny_bank


def test_shared_pass_equals_separate_training_and_is_deterministic(bank):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    configs = [TrainConfig(probe=p, epochs=3, batch_size=4, lr=3e-3) for p in ("linear", "mhca", "protobin")]
    together = train_probes(splits["train"], configs, progress=False)
    for config, shared in zip(configs, together):
        alone = train_probes(splits["train"], [config], progress=False)[0]
        for key, value in shared.probe.state_dict().items():
            torch.testing.assert_close(value, alone.probe.state_dict()[key], rtol=0, atol=0)
        assert shared.history == alone.history


# Learning rates from a sweep over {1e-3 .. 1e-1} on this bank (default 3e-2).
OVERFIT_LR = {"mhca": 3e-3, "ep": 1e-2, "linpre": 1e-1, "proto": 1e-1, "protobin": 1e-1, "protofloat": 1e-1}


def test_every_probe_fits_a_tiny_multilabel_bank(bank):
    """All thirteen probes, trained together in one shared pass: each must overfit the 12 training clips."""
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    configs = [TrainConfig(probe=p, epochs=60, batch_size=4, lr=OVERFIT_LR.get(p, 3e-2), warmup_epochs=2) for p in PROBES.names()]
    results = train_probes(splits["train"], configs, {"train": splits["train"]}, progress=False)
    for result in results:
        assert result.history[-1]["loss"] < result.history[0]["loss"], result.config.probe
        assert result.metrics["train"]["map"] > 0.95, (result.config.probe, result.metrics["train"])


def test_fit_writes_a_reproducible_run_folder(bank, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(probe="protobin", probe_args={"prototypes_per_class": 2}, epochs=2, batch_size=4)
    result = fit(bank, [config], [out], progress=False)[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"map", "auroc"} and "valid" in metrics
    saved = json.loads((out / "config.json").read_text())
    # lr "auto" (the default): the saved config holds the chosen rate, the run the choice
    assert TrainConfig(**saved["train"]) == config.model_copy(update={"lr": result.config.lr})
    assert saved["lr_selection"]["chosen"] == result.config.lr and Run(out).matches(config)
    assert saved["bank"]["encoder"] == "toy-vit" and saved["probe"]["num_parameters"] == result.probe.num_parameters()
    reloaded = load_probe(out)
    test = LoadedBank.load(bank)["test"]
    np.testing.assert_allclose(predict(reloaded, test), predict(result.probe, test), atol=1e-6)


def test_cross_entropy_refused_on_multilabel_bank(bank):
    loaded = LoadedBank.load(bank)
    splits = loaded.splits
    with pytest.raises(ValueError, match="multi-label"):
        train_probes(splits["train"], [TrainConfig(probe="linear", loss="ce", epochs=1)], progress=False)


def test_a_diverging_config_does_not_stop_the_shared_pass(bank, tmp_path):
    from patchprobe.sweep import grid_then_seeds

    loaded = LoadedBank.load(bank)

    splits = loaded.splits
    configs = [TrainConfig(probe="linear", epochs=2, batch_size=4, lr=1e-2), TrainConfig(probe="mhca", epochs=2, batch_size=4, lr=1e30)]
    good, bad = train_probes(splits["train"], configs, {"test": splits["test"]}, progress=False)
    assert good.diverged is None and "map" in good.metrics["test"]
    assert "lower the learning rate" in bad.diverged and bad.metrics == {}
    # A grid search ranks the diverged rate last and reports it as null.
    table = grid_then_seeds(loaded, {"mhca": TrainConfig(probe="mhca", epochs=2, batch_size=4)}, {"mhca": [1e-3, 1e30]},
                            [0, 1], tmp_path / "runs", progress=False)
    assert table["mhca"]["lr"] == 1e-3 and table["mhca"]["lr_candidates"]["1e+30"] is None
    assert set(table["mhca"]["test_per_seed"]) == {"0", "1"}


def test_pooled_heads_fit_their_standardiser_from_vectors_pooled_once(bank):
    """`build_probe` fits linear/mlp/linearc/freqpool from the split's pooled vectors (`prepare_pooled`), not by
    reading every token map per trial: the statistics equal those `prepare` computes from the token batches."""
    from patchprobe.train import build_probe, split_batches

    train = LoadedBank.load(bank).train
    for name in ("linear", "mlp", "linearc", "freqpool"):
        probe = build_probe(train, TrainConfig(probe=name))
        again = build_probe(train, TrainConfig(probe=name))
        again.norm.mean.zero_()
        again.prepare(split_batches(train, "cpu"))
        torch.testing.assert_close(probe.norm.mean, again.norm.mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(probe.norm.std, again.norm.std, rtol=1e-5, atol=1e-6)
        assert float(probe.norm.std.sub(1).abs().max()) > 1e-3  # fitted, not the identity
