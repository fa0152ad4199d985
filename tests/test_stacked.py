"""Stacked (vectorised) trials: K settings of one probe trained as one vmapped model must equal the
same settings trained one by one, to float rounding, for every registered probe."""

import math

import numpy as np
import pytest
import torch

from patchprobe.bank import LoadedBank
from patchprobe.probes import PROBES
from patchprobe.train import TrainConfig, predict, train_probes
from patchprobe.train.stacked import StackedMembers, stack_key




def _settings(probe: str, **extra) -> list[TrainConfig]:
    # lr, weight decay, seed, warm-up and clipping differ; dropout off (its random masks differ by design)
    args = {"dropout": 0.0} if "dropout" in PROBES.spec(probe).arguments() else {}
    return [
        TrainConfig(probe=probe, probe_args=args, epochs=2, batch_size=4, lr=3e-3, weight_decay=1e-4, seed=0, **extra),
        TrainConfig(probe=probe, probe_args=args, epochs=2, batch_size=4, lr=1e-2, weight_decay=1e-2, seed=1, warmup_epochs=0.5,
                    **extra),
        TrainConfig(probe=probe, probe_args=args, epochs=2, batch_size=4, lr=3e-2, weight_decay=0.0, seed=2, grad_clip=0.5, **extra),
    ]


@pytest.mark.parametrize("probe", PROBES.names())
def test_stacked_training_equals_training_each_alone(tiny_bank, probe, monkeypatch):
    # every head, also those that train unstacked by default (stack_trials False: slower vmapped, not wrong)
    monkeypatch.setattr(PROBES.get(probe), "stack_trials", True)
    loaded = LoadedBank.load(tiny_bank)
    train, valid = loaded.splits["train"], loaded["valid"]
    configs = _settings(probe)
    stacked = train_probes(train, configs, {"valid": valid}, progress=False)
    alone = train_probes(train, configs, {"valid": valid}, progress=False, vectorize=False)
    for together, single in zip(stacked, alone):
        # outputs, not raw weights: a bias before a softmax over tokens (abmilp) or before a mean-removing
        # BatchNorm (conv) has an exactly zero gradient, so Adam turns float noise into lr-sized steps there
        # in both runs; the logits then differ by up to ~1e-3 after a few steps at lr 0.03 (a wrong rate,
        # decay or clip per member moves them by far more)
        torch.testing.assert_close(torch.from_numpy(predict(together.probe, valid)), torch.from_numpy(predict(single.probe, valid)),
                                   rtol=1e-3, atol=3e-3, msg=probe)
        for a, b in zip(together.history, single.history):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
            assert a.keys() == b.keys()
        assert together.metrics["valid"].keys() == single.metrics["valid"].keys()


def test_stack_key_separates_settings_that_change_the_computation():
    base = TrainConfig(probe="protobin", lr=0.1)
    assert stack_key(base) == stack_key(base.model_copy(update={"lr": 0.3, "seed": 4, "weight_decay": 0.0, "grad_clip": 1.0}))
    assert stack_key(base) != stack_key(base.model_copy(update={"probe_args": {"prototypes_per_class": 3}}))
    assert stack_key(base) != stack_key(base.model_copy(update={"asl_gamma_neg": 2.0}))
    with pytest.raises(ValueError, match="differ only in"):
        StackedMembers([], [base, base.model_copy(update={"probe": "linear"})], None)


def test_a_diverging_member_does_not_disturb_the_others(tiny_bank, monkeypatch):
    monkeypatch.setattr(PROBES.get("mhca"), "stack_trials", True)  # mhca diverges reliably at an absurd rate
    loaded = LoadedBank.load(tiny_bank)
    train = loaded.splits["train"]
    configs = [TrainConfig(probe="mhca", epochs=3, batch_size=4, lr=lr) for lr in (3e-3, 1e12)]
    stacked = train_probes(train, configs, progress=False)
    alone = train_probes(train, configs[:1], progress=False, vectorize=False)[0]
    assert stacked[0].diverged is None and stacked[1].diverged and "lower the learning rate" in stacked[1].diverged
    for key, value in stacked[0].probe.state_dict().items():
        torch.testing.assert_close(value, alone.probe.state_dict()[key], rtol=2e-4, atol=2e-5)


def test_on_epoch_can_stop_some_members(tiny_bank, monkeypatch):
    monkeypatch.setattr(PROBES.get("linear"), "stack_trials", True)  # the stacked path, dropping a stopped member
    loaded = LoadedBank.load(tiny_bank)
    train, valid = loaded.splits["train"], loaded["valid"]
    configs = [TrainConfig(probe="linear", epochs=4, batch_size=4, lr=lr) for lr in (1e-3, 1e-2, 1e-1)]
    seen = []

    def on_epoch(epoch, probes):
        seen.append((epoch, len(probes)))
        return [1] if epoch == 2 else None

    results = train_probes(train, configs, {"valid": valid}, progress=False, on_epoch=on_epoch)
    assert seen == [(1, 3), (2, 3), (3, 3), (4, 3)]
    assert [r.stopped_epoch for r in results] == [None, 2, None]
    assert [len(r.history) for r in results] == [4, 2, 4]
    # the stopped member keeps the weights it had when it was stopped; the others match training alone
    stopped_two_epochs = train_probes(train, [configs[1].model_copy(update={"epochs": 4})], progress=False,
                                      on_epoch=lambda epoch, probes: [0] if epoch == 2 else None, vectorize=False)[0]
    for key, value in results[1].probe.state_dict().items():
        torch.testing.assert_close(value, stopped_two_epochs.probe.state_dict()[key], rtol=2e-4, atol=2e-5)
    # the stack drops the stopped member after epoch 2; the others go on exactly as before
    kept = train_probes(train, [configs[0], configs[2]], progress=False, vectorize=False)
    for result, alone in zip((results[0], results[2]), kept):
        for key, value in result.probe.state_dict().items():
            torch.testing.assert_close(value, alone.probe.state_dict()[key], rtol=2e-4, atol=2e-5)
    assert all(math.isfinite(r.metrics.get("valid", {}).get("map", 0.0)) for r in results)
    assert np.isfinite(results[2].history[-1]["valid_map"])
