"""The fast bank paths give what the slow ones gave: whole-chunk loading and pooled-vector caches.

Functional checks only; the speed itself is measured by benchmarks/train.py.
"""

import numpy as np
import pytest
import torch

from patchprobe.bank.store import BankSplit, SplitMeta, SplitWriter
from patchprobe.probes import create_probe, masked_mean, shared_pooled_inputs

F_TOKENS, D, G, C = 3, 4, 5, 2


def write_split(root, chunks, lengths, global_dim=G):
    """A split whose chunks hold `chunks` (lists of clip indices, in storage order), clip i lasting lengths[i]."""
    ids = [f"clip{i}" for i in range(len(lengths))]
    meta = SplitMeta(split="train", clip_ids=ids, classes=[f"c{i}" for i in range(C)], multilabel=True, encoder="toy",
                     encoder_config={}, encoder_config_hash="h", sample_rate=16000, token_dim=D, global_dim=global_dim,
                     global_source="cls" if global_dim else "none", dataset="toy", dataset_fingerprint="f")
    writer = SplitWriter(root / "train", meta)
    rng = np.random.default_rng(0)
    for members in chunks:
        tokens = [rng.standard_normal((lengths[i], F_TOKENS, D)).astype(np.float16) for i in members]
        masks = [rng.random((lengths[i], F_TOKENS)) > 0.2 for i in members]
        globals_ = rng.standard_normal((len(members), global_dim)).astype(np.float32) if global_dim else None
        writer.append([ids[i] for i in members], tokens, masks, globals_)
    writer.write_labels((rng.random((len(ids), C)) > 0.5).astype(np.float32))
    writer.finish()
    return BankSplit(root / "train")


def assert_loaded_like_clip_by_clip(split):
    loaded = split.load()
    t_max = int(split.lengths.max())
    for i in range(len(split)):
        tokens, mask, global_vector = split.clip(i)
        length = len(tokens)
        np.testing.assert_array_equal(loaded.tokens[i, :length].numpy(), tokens)
        np.testing.assert_array_equal(loaded.mask[i, :length].numpy(), mask)
        assert not loaded.mask[i, length:].any() and not loaded.tokens[i, length:t_max].any()  # padding: zeros, masked
        if global_vector is not None:
            np.testing.assert_array_equal(loaded.globals[i].numpy(), global_vector)
    np.testing.assert_array_equal(loaded.labels.numpy(), split.labels)
    return loaded


@pytest.mark.parametrize("chunks, lengths", [
    ([[0, 1, 2], [3, 4]], [6, 6, 6, 6, 6]),  # extraction order, equal lengths: read in place
    ([[3, 4], [0, 2, 1]], [6, 6, 6, 6, 6]),  # stored out of dataset order: read, then scattered
    ([[0, 1, 2], [3, 4]], [6, 2, 6, 4, 1]),  # ragged clips: padded with zeros, masked
])
def test_whole_chunk_load_equals_the_clip_by_clip_copy(tmp_path, chunks, lengths):
    assert_loaded_like_clip_by_clip(write_split(tmp_path, chunks, lengths))


def test_load_without_global_vectors(tmp_path):
    loaded = assert_loaded_like_clip_by_clip(write_split(tmp_path, [[0, 1], [2]], [3, 3, 3], global_dim=0))
    assert loaded.globals is None
    with pytest.raises(ValueError, match="no global vector"):
        loaded.pooled("global")


def test_pooled_inputs_equal_pooling_each_batch_and_are_computed_once(tmp_path):
    loaded = write_split(tmp_path, [[0, 1, 2], [3, 4]], [6, 2, 6, 4, 1]).load()
    index = torch.tensor([4, 0, 1])
    batch = loaded.batch(index)
    torch.testing.assert_close(loaded.pooled("mean")[index], masked_mean(batch["tokens"], batch["mask"]))
    torch.testing.assert_close(loaded.pooled("global")[index], batch["global"])
    assert loaded.pooled("mean") is loaded.pooled("mean")  # cached
    with pytest.raises(ValueError, match="unknown pooled input 'max'"):
        loaded.pooled("max")
    pooled_batch = loaded.batch(index, pooled=("mean", "freqmean"))
    assert pooled_batch["tokens"] is None and set(pooled_batch["pooled"]) == {"mean", "freqmean"}


@pytest.mark.parametrize("name, args", [("linear", {}), ("linear", {"use_global": False}), ("mlp", {}), ("mlp", {"use_global": False}),
                                        ("linearc", {}), ("freqpool", {})])
def test_global_vector_heads_give_the_same_logits_from_pooled_vectors(tmp_path, name, args):
    loaded = write_split(tmp_path, [[0, 1, 2], [3, 4]], [6, 2, 6, 4, 1]).load()
    torch.manual_seed(0)
    probe = create_probe(name, D, C, G, F_TOKENS, **args)
    probe.norm.fit(torch.randn(16, probe.norm.mean.shape[0]) * 3 + 1)  # non-trivial statistics
    index = torch.tensor([3, 1, 4])
    batch = loaded.batch(index)
    expected = probe(batch["tokens"], batch["mask"], batch["global"])
    torch.testing.assert_close(probe.forward_batch(loaded.batch(index, pooled=probe.pooled_inputs), "cpu"), expected)


def test_token_heads_keep_token_batches():
    linear, linpre = create_probe("linear", D, C, G), create_probe("linpre", D, C, G)
    assert linpre.pooled_inputs is None
    assert shared_pooled_inputs([linear]) == ("global",)
    assert shared_pooled_inputs([linear, linpre]) is None  # a shared pass gives every member the tokens
    assert shared_pooled_inputs([linear, create_probe("linearc", D, C, G)]) == ("global", "mean")


def test_streamed_split_serves_the_same_batches_as_one_in_memory(tmp_path, capsys):
    split = write_split(tmp_path, [[3, 4], [0, 2, 1]], [6, 2, 6, 4, 1])
    in_memory, streamed = split.load(), split.load(residency="stream")
    assert in_memory.residency.startswith("memory") and streamed.residency.startswith("stream")
    assert split.load(residency="auto").residency.startswith("memory")  # a tiny split fits
    assert capsys.readouterr().err == ""  # only an automatic choice to stream is announced
    assert len(streamed) == len(in_memory) and streamed.tokens.shape == in_memory.tokens.shape
    for index in (torch.tensor([4, 0, 1]), torch.tensor([1, 3])):
        ours, theirs = streamed.batch(index), in_memory.batch(index)
        for key in ("tokens", "mask", "global", "labels"):
            torch.testing.assert_close(ours[key], theirs[key])
    torch.testing.assert_close(streamed.pooled("freqmean"), in_memory.pooled("freqmean"))
    with pytest.raises(ValueError, match="residency must be"):
        split.load(residency="disk")
