"""Dasheng against the official code's outputs in ../shared/golden/dasheng, loaded through the user-facing loader."""

import numpy as np
import pytest
import torch

from patchprobe.encoders import CheckpointError, create_encoder, load_dasheng

from .conftest import GOLDEN

FIXTURE = GOLDEN / "dasheng"
pytestmark = pytest.mark.skipif(not (FIXTURE / "dasheng_tiny.pt").exists(), reason="golden Dasheng fixture not found")


@pytest.fixture(scope="module")
def golden():
    model, _ = load_dasheng(FIXTURE / "dasheng_tiny.pt")
    return np.load(FIXTURE / "dasheng_tiny_io.npz"), model.eval()


def test_front_end_and_batchnorm(golden):
    data, model = golden
    source = torch.from_numpy(data["batch_source"])
    # The official batched call floors dB over the whole batch; "batch" scope reproduces it.
    with torch.no_grad():
        spec, frames = model.spectrogram(source, torch.tensor([192000, 192000]), top_db_scope="batch")
    assert frames.tolist() == [1201, 1201]
    np.testing.assert_allclose(spec.numpy(), data["batch_spec_after_bn"][:, 0], atol=1e-4, rtol=0)


def test_two_chunks_with_positions_restarting(golden):
    data, model = golden
    with torch.no_grad():
        tokens, mask, _ = model(torch.from_numpy(data["batch_source"]), torch.tensor([192000, 192000]), top_db_scope="batch")
    assert tokens.shape == (2, 300, 1, 64) and bool(mask.all())  # 252 + 48 tokens
    np.testing.assert_allclose(tokens[:, :, 0].numpy(), data["batch_tokens_nomask"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layer", [0, 1, None])
def test_single_clip_every_block(golden, layer):
    data, model = golden
    source = torch.from_numpy(data["single_source"])
    with torch.no_grad():
        tokens, _, _ = model(source, torch.tensor([source.shape[1]]), layer=layer)
    expected = data["single_tokens" if layer is None else f"single_block{layer}_out"]
    np.testing.assert_allclose(tokens[:, :, 0].numpy(), expected, atol=1e-5, rtol=1e-4)


def test_a_clip_does_not_depend_on_its_batch(golden):
    data, _ = golden
    encoder = create_encoder("dasheng", checkpoint=str(FIXTURE / "dasheng_tiny.pt"))
    long, short = torch.from_numpy(data["batch_source"][0]), torch.from_numpy(data["single_source"][0])
    batch = torch.zeros(2, long.numel())
    batch[0], batch[1, : short.numel()] = long, short
    together = encoder.encode(batch, torch.tensor([long.numel(), short.numel()]))
    alone = encoder.encode(short[None], torch.tensor([short.numel()]))
    count = int(alone.mask.sum())
    assert count == 84 and int(together.mask[1].sum()) == 84
    torch.testing.assert_close(together.tokens[1, :count], alone.tokens[0, :count], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.global_vector[1], alone.global_vector[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(alone.tokens[0, :, 0].numpy(), data["single_tokens"][0], atol=1e-5, rtol=1e-4)


def test_missing_weights_say_where_to_get_them():
    with pytest.raises(CheckpointError, match="zenodo.org/records/11511780"):
        create_encoder("dasheng")
