import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from patchprobe.bank import Bank, BankSplit, extract_bank
from patchprobe.datasets import ManifestDataset, SyntheticConfig, write_synthetic_dataset
from patchprobe.encoders import create_encoder
from patchprobe.errors import AudioError, BankError


def small_encoder(**kwargs):
    return create_encoder("toy-vit", width=32, depth=1, heads=2, **kwargs)


def test_extract_and_read_back_ragged_clips(tiny_dataset, tmp_path):
    data = ManifestDataset(tiny_dataset)
    encoder = small_encoder()
    bank = extract_bank(data, encoder, tmp_path / "bank", batch_size=5, chunk_clips=4, progress=False)
    handle = Bank(bank)
    assert handle.splits == ["train", "valid", "test"]
    train = handle.split("train")
    assert train.clip_ids == data.clip_ids("train")
    np.testing.assert_array_equal(train.labels, data.label_matrix("train"))
    assert len(set(train.lengths.tolist())) > 1, "clips of different lengths must stay ragged"
    tokens, mask, global_vector = train.clip(0)
    assert tokens.dtype == np.float16 and tokens.shape[1:] == (8, 32) and mask.all() and global_vector.shape == (32,)
    # The stored map is exactly what the encoder gives for the clip alone.
    clip = data.load(train.clip_ids[0], encoder.sample_rate)
    alone = encoder.encode(torch.from_numpy(clip.waveform)[None], torch.tensor([len(clip.waveform)]))
    np.testing.assert_allclose(tokens.astype(np.float32), alone.tokens[0].numpy(), atol=2e-3, rtol=2e-3)
    loaded = train.load()
    batch = loaded.batch(torch.tensor([0, 1, 2]))
    longest = int(train.lengths[:3].max())
    assert batch["tokens"].shape == (3, longest, 8, 32) and batch["tokens"].dtype == torch.float32
    for row in range(3):
        assert batch["mask"][row].any(-1).sum() == train.lengths[row]
    described = handle.describe()
    assert described["splits"]["train"]["clips"] == 12 and described["splits"]["train"]["bytes"] > 0


def test_refuses_bank_built_with_other_encoder_config(tiny_dataset, tmp_path):
    data = ManifestDataset(tiny_dataset)
    extract_bank(data, small_encoder(), tmp_path / "bank", splits=["valid"], progress=False)
    with pytest.raises(BankError, match="config"):
        extract_bank(data, small_encoder(seed=1), tmp_path / "bank", splits=["valid"], progress=False)
    with pytest.raises(BankError, match="config"):
        extract_bank(data, small_encoder(layer=0), tmp_path / "bank", splits=["valid"], progress=False)


def test_bad_clip_stops_or_is_skipped_and_recorded(tiny_dataset, tmp_path):
    (tiny_dataset.parent / "audio" / "valid1.wav").write_bytes(b"broken")
    data = ManifestDataset(tiny_dataset)
    with pytest.raises(AudioError, match="valid1.wav"):
        extract_bank(data, small_encoder(), tmp_path / "a", splits=["valid"], progress=False)
    extract_bank(data, small_encoder(), tmp_path / "b", splits=["valid"], skip_bad=True, progress=False)
    split = Bank(tmp_path / "b").split("valid")
    assert len(split) == 3 and "audio/valid1.wav" in split.meta.skipped


def test_incomplete_bank_is_refused_for_training(tiny_dataset, tmp_path):
    with pytest.raises(BankError, match="not a bank"):
        Bank(tmp_path)
    data = ManifestDataset(tiny_dataset)
    extract_bank(data, small_encoder(), tmp_path / "bank", splits=["valid"], progress=False)
    meta = tmp_path / "bank" / "valid" / "meta.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    with pytest.raises(BankError, match="resume"):
        BankSplit(tmp_path / "bank" / "valid")


def _extract_cmd(manifest, bank):
    return [sys.executable, "-m", "patchprobe.cli", "extract", "--manifest", str(manifest), "--encoder", "toy-vit",
            "--bank", str(bank), "--batch-size", "2", "--chunk-clips", "2", "--quiet"]


def test_resume_after_killed_extraction_gives_same_contents(tmp_path):
    config = SyntheticConfig(sizes={"train": 120}, clip_seconds=3.0)
    manifest = write_synthetic_dataset(tmp_path / "data", config)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(_extract_cmd(manifest, killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "train" / "chunks").glob("*.json"))) < 3:
        if process.poll() is not None:
            pytest.fail(f"extraction ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = BankSplit(killed / "train", allow_incomplete=True)
    assert not partial.meta.complete and 3 <= len(partial) < 120, "the kill must land mid-way"
    subprocess.run(_extract_cmd(manifest, killed), check=True, capture_output=True)
    subprocess.run(_extract_cmd(manifest, clean), check=True, capture_output=True)
    resumed, reference = BankSplit(killed / "train"), BankSplit(clean / "train")
    assert resumed.clip_ids == reference.clip_ids and len(resumed) == 120
    assert len(set(resumed.clip_ids)) == 120
    for i in range(len(reference)):
        for ours, theirs in zip(resumed.clip(i), reference.clip(i)):
            np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(resumed.labels, reference.labels)


def test_bank_is_complete_only_with_every_requested_split_and_clip(tiny_dataset, tmp_path):
    data = ManifestDataset(tiny_dataset)
    root = tmp_path / "bank"
    header = {"encoder": "toy-vit", "encoder_config_hash": small_encoder().config_hash(), "dataset": data.name, "classes": data.classes}
    # An extraction of all three splits that stopped after the first: two folders are absent, not "complete".
    Bank.create_or_check(root, header, ["train", "valid", "test"])
    extract_bank(data, small_encoder(), root, splits=["train"], progress=False)
    bank = Bank(root)
    assert bank.expected_splits == ["train", "valid", "test"] and bank.splits == ["train"] and not bank.is_complete()
    assert "not extracted yet" in bank.describe()["problems"]["valid"][0]
    extract_bank(data, small_encoder(), root, progress=False)
    assert Bank(root).is_complete()
    with pytest.raises(BankError, match="bank.json has encoder_config_hash="):
        Bank.create_or_check(root, {**header, "encoder_config_hash": "other"}, ["train"])
    meta = root / "valid" / "meta.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    assert not Bank(root).is_complete()
