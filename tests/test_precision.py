"""Training under bfloat16 autocast (`TrainConfig.precision="bf16"`): forward passes close to float32,
training (alone and stacked) converges, and the rate chosen by lr "auto" does not move for a head on pooled vectors."""

import pytest
import torch

from patchprobe.bank import LoadedBank
from patchprobe.probes import create_probe
from patchprobe.train import TrainConfig, train_probes
from patchprobe.train.core import autocast


@pytest.mark.parametrize("probe", ["linear", "mhca", "abmilp", "protobin", "proto"])
def test_bf16_forward_is_close_to_float32(probe):
    torch.manual_seed(0)
    head = create_probe(probe, token_dim=32, num_classes=5, global_dim=32, freq_tokens=4).train()
    tokens, mask, global_vector = torch.randn(6, 7, 4, 32), torch.ones(6, 7, 4, dtype=torch.bool), torch.randn(6, 32)
    mask[0, 5:] = False
    exact = head(tokens, mask, global_vector)
    with autocast(TrainConfig(probe=probe, precision="bf16")):
        rounded = head(tokens, mask, global_vector)
    assert rounded.dtype in (torch.bfloat16, torch.float32)
    # bfloat16 keeps 8 significant bits: ~0.4 % relative error per product, a few times that after a few layers
    torch.testing.assert_close(rounded.float(), exact, rtol=0.05, atol=0.05 * float(exact.abs().max()))
    rounded.float().sum().backward()  # the backward runs (the prototype heads' custom max included)


def test_bf16_training_converges_alone_and_stacked(tiny_bank):
    splits = LoadedBank.load(tiny_bank).splits
    configs = [TrainConfig(probe=probe, epochs=8, batch_size=4, lr=lr, precision="bf16")
               for probe, lr in (("protobin", 0.1), ("protobin", 0.03), ("mhca", 3e-3), ("mhca", 1e-2), ("ep", 3e-2), ("ep", 0.1))]
    for result in train_probes(splits["train"], configs, {"valid": splits["valid"]}, progress=False):
        assert result.diverged is None
        assert result.history[-1]["loss"] < result.history[0]["loss"], result.config


def test_bf16_picks_the_same_rate_as_float32(tiny_bank):
    splits = LoadedBank.load(tiny_bank).splits
    chosen = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(probe="linear", epochs=10, batch_size=4, precision=precision)
        result = train_probes(splits["train"], [config], {"valid": splits["valid"], "test": splits["test"]}, progress=False)[0]
        chosen[precision] = (result.config.lr, result.metrics["test"]["map"])
    assert chosen["bf16"][0] == chosen["fp32"][0]
    assert chosen["bf16"][1] == pytest.approx(chosen["fp32"][1], abs=0.02)
