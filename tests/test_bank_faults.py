"""Fault injection on banks: kill -9, lost/truncated/corrupt chunks, byte flips, NaN tokens, changed audio,
concurrent writers, another dtype, corrupt metadata, disk full, and bad options. Each case asserts the
outcome: equal data after recovery, or a BankError naming the file and what to do."""

import errno
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from typer.testing import CliRunner

import patchprobe._io as io_module
from patchprobe.bank import Bank, BankSplit, extract_bank
from patchprobe.bank.store import ExtractLock, file_digest
from patchprobe.cli import app
from patchprobe.datasets import ManifestDataset, SyntheticConfig, write_synthetic_dataset
from patchprobe.encoders import Encoder, EncoderOutput, create_encoder
from patchprobe.encoders.base import check_device
from patchprobe.errors import BankError

SIZES = {"train": 10, "valid": 4}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("faults") / "data", SyntheticConfig(sizes=SIZES, clip_seconds=1.0))


def encoder():
    return create_encoder("toy-vit", width=16, depth=1, heads=2)


def build(manifest, bank, **kwargs):
    return extract_bank(ManifestDataset(manifest), encoder(), bank, batch_size=2, chunk_clips=2, progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory):
    return build(manifest, tmp_path_factory.mktemp("reference") / "bank")


def assert_same_bank(ours, theirs):
    """Same splits, same clip ids in the same order, the same token, mask, global and label bytes."""
    assert Bank(ours).is_complete() and Bank(ours).splits == Bank(theirs).splits
    for name in Bank(theirs).splits:
        a, b = BankSplit(Path(ours) / name), BankSplit(Path(theirs) / name)
        assert a.clip_ids == b.clip_ids and len(set(a.clip_ids)) == len(a.clip_ids)
        np.testing.assert_array_equal(a.labels, b.labels)
        for i in range(len(b)):
            for x, y in zip(a.clip(i), b.clip(i)):
                assert (x is None and y is None) or (x.dtype == y.dtype and x.tobytes() == y.tobytes())
        a.load()  # and it verifies


def chunk_files(bank, split="train"):
    return sorted((Path(bank) / split / "chunks").glob("*.tokens.npy"))


def test_lost_chunk_is_refused_then_rebuilt(manifest, reference, tmp_path):
    bank = build(manifest, tmp_path / "bank")
    (bank / "train" / "chunks" / "000001.json").unlink()  # a lost commit record
    with pytest.raises(BankError, match=r"train: 2 of 10 clips are missing \(first: \['train_00002', 'train_00003'\]\).*Rerun the same `patchprobe extract`"):
        Bank(bank).split("train")
    assert not Bank(bank).is_complete()
    assert "missing" in Bank(bank).describe()["problems"]["train"][0]
    build(manifest, bank)
    assert_same_bank(bank, reference)


def test_truncated_deleted_and_corrupt_chunk_files_are_detected_and_repaired(manifest, reference, tmp_path):
    bank = build(manifest, tmp_path / "bank")
    tokens = chunk_files(bank)[0]
    tokens.write_bytes(tokens.read_bytes()[:-50])  # truncated
    with pytest.raises(BankError, match=r"000000.tokens.npy: \d+ bytes, committed with \d+ \(truncated"):
        Bank(bank).split("train")
    (bank / "valid" / "chunks" / "000001.mask.npy").unlink()  # deleted
    (bank / "train" / "chunks" / "000002.json").write_text("{not json")  # corrupt commit record
    problems = Bank(bank).verify()
    assert any("000002.json: commit record unreadable" in p for p in problems["train"])
    assert any("000001.mask.npy: missing" in p for p in problems["valid"])
    messages = []
    build(manifest, bank, log=messages.append)
    assert sum("repairing" in m for m in messages) == 3
    assert_same_bank(bank, reference)


def test_flipped_bytes_are_caught_on_load_by_checksum_and_by_info_verify(manifest, reference, tmp_path):
    bank = build(manifest, tmp_path / "bank")
    Bank(bank).split("train").load()  # verified once: recorded in verified.json
    assert (bank / "train" / "verified.json").exists()
    path = chunk_files(bank)[1]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(BankError, match=r"000001.tokens.npy: checksum mismatch.*rerun the same `patchprobe extract`"):
        Bank(bank).split("train").load()
    # Bit rot that keeps size and mtime passes the fast path on load, but not a full check.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    Bank(bank).split("train").load()
    assert any("checksum mismatch" in p for p in Bank(bank).verify(full=True)["train"])
    result = CliRunner().invoke(app, ["info", str(bank), "--verify"])
    assert result.exit_code != 0 and "checksum mismatch" in result.output and "Traceback" not in result.output
    build(manifest, bank)  # repairs: verify failed the chunk, extract drops and rebuilds it
    assert_same_bank(bank, reference)
    assert not any(Bank(bank).verify(full=True).values())


def test_non_finite_tokens_are_a_bank_problem_naming_the_chunk(manifest, tmp_path):
    bank = build(manifest, tmp_path / "bank")
    path = chunk_files(bank)[0]
    values = np.load(path)
    values[1, 0, 3] = np.nan
    np.save(path, values)
    record_path = path.with_name("000000.json")
    record = json.loads(record_path.read_text())  # as if written so at extraction: the checksum matches
    record["files"]["tokens"].update(bytes=path.stat().st_size, blake2b=file_digest(path))
    record_path.write_text(json.dumps(record))
    with pytest.raises(BankError, match=r"000000.tokens.npy: holds NaN or infinite values"):
        Bank(bank).split("train").load()


class HugeEncoder(Encoder):
    """Tokens beyond float16's range (65504): storing them as float16 would write infinities."""

    name, token_dim, default_batch_size = "huge", 4, 2

    def config(self) -> dict:
        return {}

    def encode(self, waveforms, lengths):
        batch = waveforms.shape[0]
        return EncoderOutput(torch.full((batch, 2, 1, 4), 1e6), torch.ones(batch, 2, 1, dtype=torch.bool), None)


def test_float16_overflow_is_refused_at_extraction(manifest, tmp_path):
    with pytest.raises(BankError, match="NaN or infinite values in float16.*--dtype float32"):
        extract_bank(ManifestDataset(manifest), HugeEncoder(), tmp_path / "bank", progress=False)
    extract_bank(ManifestDataset(manifest), HugeEncoder(), tmp_path / "bank32", dtype="float32", progress=False)
    assert Bank(tmp_path / "bank32").is_complete()


def test_changed_audio_is_named_and_refused_or_refreshed(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "data", SyntheticConfig(sizes=SIZES, clip_seconds=1.0))
    bank = build(manifest, tmp_path / "bank")
    audio = tmp_path / "data" / "audio" / "train"
    os.utime(audio / "train_00004.wav")  # touched, same bytes: not a change
    build(manifest, bank)
    wave, rate = soundfile.read(audio / "train_00004.wav", dtype="float32")
    soundfile.write(audio / "train_00004.wav", wave[::-1].copy(), rate)  # same size, other audio
    with pytest.raises(BankError, match=r"audio of 1 clip\(s\) changed.*\['train_00004'\].*--refresh-changed"):
        build(manifest, bank)
    messages = []
    build(manifest, bank, refresh_changed=True, log=messages.append)
    assert any("re-extracting" in m for m in messages)
    fresh = build(manifest, tmp_path / "fresh")
    assert_same_bank(bank, fresh)


def test_second_extraction_is_refused_while_one_writes(manifest, tmp_path):
    bank = tmp_path / "bank"
    with ExtractLock(bank):
        with pytest.raises(BankError, match=rf"another extraction is writing this bank \(pid {os.getpid()} on "):
            build(manifest, bank)
    build(manifest, bank)  # released: the lock file left behind does not block
    assert Bank(bank).is_complete()


def test_resume_with_another_dtype_is_refused_naming_the_stored_one(manifest, tmp_path):
    bank = build(manifest, tmp_path / "bank", splits=["train"])
    with pytest.raises(BankError, match="stores tokens as float16; you asked for float32. Rerun with --dtype float16"):
        build(manifest, bank, dtype="float32", splits=["valid"])
    assert not (bank / "valid").exists()


def test_corrupt_metadata_files_are_named_and_info_never_prints_a_traceback(manifest, tmp_path):
    runner = CliRunner()
    cases = {
        "bank.json": ("{", r"bank.json: unreadable or corrupt.*delete it and rerun"),
        "train/meta.json": ('{"split": "train"}', r"meta.json: not a valid split description.*delete the folder"),
        "valid/labels.npy": ("garbage", r"labels.npy: unreadable or corrupt.*rewrites the labels"),
    }
    for relative, (content, pattern) in cases.items():
        bank = build(manifest, tmp_path / relative.replace("/", "_"))
        (bank / relative).write_text(content)
        with pytest.raises(BankError, match=pattern):
            for name in ("train", "valid"):
                Bank(bank).split(name)
        result = runner.invoke(app, ["info", str(bank)])
        assert result.exit_code == 2 and "Traceback" not in result.output and relative.split("/")[-1] in result.output, result.output
    # extract rewrites labels.npy; bank.json after deleting it, as the message says
    build(manifest, tmp_path / "valid_labels.npy")
    assert Bank(tmp_path / "valid_labels.npy").is_complete()
    (tmp_path / "bank.json" / "bank.json").unlink()
    build(manifest, tmp_path / "bank.json")
    assert Bank(tmp_path / "bank.json").is_complete()


def test_old_format_bank_gets_a_clear_message(manifest, tmp_path):
    bank = build(manifest, tmp_path / "bank")
    meta_path = bank / "train" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["format"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BankError, match="bank format 1, before chunk checksums.*new --bank folder"):
        Bank(bank).split("train")
    with pytest.raises(BankError, match="bank format 1"):
        build(manifest, bank)


def test_disk_full_leaves_nothing_half_written_and_rerun_resumes(manifest, reference, tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync_until_full(fd):
        calls["n"] += 1
        if calls["n"] > 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", fsync_until_full)
    bank = tmp_path / "bank"
    with pytest.raises(BankError, match=rf"disk full while writing {bank}/train/.*rerun the same command; it resumes") as caught:
        build(manifest, bank)
    assert "\n" not in str(caught.value)
    assert not list(bank.rglob("*.tmp")), "no temporary file may stay behind"
    monkeypatch.setattr(io_module.os, "fsync", real_fsync)
    build(manifest, bank)
    assert_same_bank(bank, reference)


def test_bad_options_are_refused_before_any_work(manifest, tmp_path):
    bank = tmp_path / "bank"
    deep = create_encoder("toy-vit", width=16, depth=1, heads=2, layer=3)
    with pytest.raises(ValueError, match=r"layer 3 out of range.*\(0\.\.0\)"):
        extract_bank(ManifestDataset(manifest), deep, bank, progress=False)
    for options, pattern in (({"batch_size": 0}, "batch size must be a positive"), ({"chunk_clips": -1}, "chunk size must be a positive")):
        with pytest.raises(ValueError, match=pattern):
            extract_bank(ManifestDataset(manifest), encoder(), bank, progress=False, **options)
    assert not bank.exists(), "a refused extraction must leave no bank behind"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU.*--device cpu"):
            check_device("cuda")
        result = CliRunner().invoke(app, ["extract", "--manifest", str(manifest), "--encoder", "toy-vit", "--bank", str(bank),
                                          "--device", "cuda", "--quiet"])
        assert result.exit_code == 2 and "no CUDA GPU" in result.output and not bank.exists()
    result = CliRunner().invoke(app, ["extract", "--manifest", str(manifest), "--encoder", "toy-vit", "--bank", str(bank),
                                      "--batch-size", "0", "--quiet"])
    assert result.exit_code == 2 and "batch size must be a positive" in result.output and not bank.exists()


def test_info_shows_skipped_clips_layer_rate_date_and_positives_unclipped_when_piped(tiny_dataset, tmp_path):
    (tiny_dataset.parent / "audio" / "valid1.wav").write_bytes(b"broken")
    bank = tmp_path / ("a-rather-long-folder-name-" * 4) / "bank"
    extract_bank(ManifestDataset(tiny_dataset), encoder(), bank, skip_bad=True, progress=False)
    described = Bank(bank).describe()
    valid = described["splits"]["valid"]
    assert valid["skipped"] == 1 and "audio/valid1.wav" in valid["skipped_clips"]
    assert sum(valid["positives"].values()) > 0 and set(valid["positives"]) == set(described["classes"])
    result = CliRunner().invoke(app, ["info", str(bank)])
    assert result.exit_code == 0, result.output
    for text in (str(bank), "audio/valid1.wav", "layer", "sample rate", "created", "positives"):
        assert text in result.output, text
    assert "…" not in result.output


DRIVER = textwrap.dedent("""
    import sys
    from patchprobe.bank import extract_bank
    from patchprobe.datasets import ManifestDataset
    from patchprobe.encoders import create_encoder
    data, model = ManifestDataset(sys.argv[1]), create_encoder("tiny-mae")
    print("ready", flush=True)
    extract_bank(data, model, sys.argv[2], batch_size=2, chunk_clips=2, progress=False)
""")


def test_kill_9_at_random_points_then_rerun_gives_the_uninterrupted_bank(tmp_path):
    manifest = write_synthetic_dataset(tmp_path / "data", SyntheticConfig(sizes={"train": 8, "valid": 2}, clip_seconds=1.0))
    model = create_encoder("tiny-mae")
    clean = extract_bank(ManifestDataset(manifest), model, tmp_path / "clean", batch_size=2, chunk_clips=2, progress=False)
    landed = []
    for seed in range(3):
        # The kill lands a random time after a random number of commits: inside encoding, array writes or a commit.
        rng = random.Random(seed)
        after_commits, delay = rng.randint(0, 3), rng.uniform(0.0, 0.3)
        bank = tmp_path / f"killed{seed}"
        process = subprocess.Popen([sys.executable, "-c", DRIVER, str(manifest), str(bank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready", process.stderr.read().decode()[-2000:]
        deadline = time.time() + 60
        while len(list(bank.glob("*/chunks/*.json"))) < after_commits and process.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        process.kill()
        process.wait()
        landed.append(len(list(bank.glob("*/chunks/*.json"))))
        extract_bank(ManifestDataset(manifest), model, bank, batch_size=2, chunk_clips=2, progress=False)
        assert_same_bank(bank, clean)
    assert any(n < 5 for n in landed), f"no kill landed mid-extraction (commits at the kills: {landed} of 5)"
