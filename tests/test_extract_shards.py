"""Sharded extraction: `extract --shard i/n` processes (or torchrun ranks) fill one bank together, without
duplicates; the bank is readable only once every shard has committed its clips."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from patchprobe.bank import Bank, BankSplit, LoadedBank, Shard, extract_bank, shard_for_process
from patchprobe.bank.store import ExtractLock
from patchprobe.cli import app
from patchprobe.datasets import ManifestDataset, SyntheticConfig, write_synthetic_dataset
from patchprobe.encoders import create_encoder
from patchprobe.errors import BankError

SIZES = {"train": 6, "valid": 3}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("shards") / "data", SyntheticConfig(sizes=SIZES, clip_seconds=1.0))


def toy():
    return create_encoder("toy-vit", width=16, depth=1, heads=2)


def build(manifest, bank, encoder=None, **kwargs):
    return extract_bank(ManifestDataset(manifest), encoder or toy(), bank, batch_size=2, chunk_clips=2, progress=False, **kwargs)


@pytest.fixture(scope="module")
def toy_reference(manifest, tmp_path_factory):
    return build(manifest, tmp_path_factory.mktemp("toy-reference") / "bank")


def assert_same_clips(ours, theirs, atol=0.0):
    """Same splits, clip ids in the same order, labels, and tokens, masks and global vectors within `atol`."""
    assert Bank(ours).is_complete() and Bank(ours).splits == Bank(theirs).splits
    for name in Bank(theirs).splits:
        a, b = BankSplit(Path(ours) / name), BankSplit(Path(theirs) / name)
        assert a.clip_ids == b.clip_ids and len(set(a.clip_ids)) == len(a.clip_ids) == len(b.meta.clip_ids)
        np.testing.assert_array_equal(a.labels, b.labels)
        for i in range(len(b)):
            for x, y in zip(a.clip(i), b.clip(i)):
                if y is None:
                    assert x is None
                else:
                    assert x.dtype == y.dtype and x.shape == y.shape
                    np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=atol, rtol=atol)


def chunk_names(bank, split="train"):
    return sorted(path.stem for path in (Path(bank) / split / "chunks").glob("*.json"))


def test_shares_are_disjoint_contiguous_near_equal_and_cover_every_clip():
    for total in range(0, 13):
        ids = [f"c{i}" for i in range(total)]
        for count in range(1, 6):
            shares = [Shard(index, count).share(ids) for index in range(count)]
            assert [clip for share in shares for clip in share] == ids  # in order, each clip once
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
            for position in range(total):
                assert ids[position] in shares[Shard.owner(position, total, count)]
    assert Shard.parse(" 3/4 ") == Shard(3, 4) and str(Shard(3, 4)) == "3/4" and not Shard().sharded


def test_two_processes_fill_one_bank_equal_to_a_single_extraction(manifest, tmp_path):
    bank = tmp_path / "bank"
    arguments = ["extract", "--manifest", str(manifest), "--encoder", "tiny-mae", "--bank", str(bank), "--batch-size", "2",
                 "--chunk-clips", "2", "--quiet"]
    # Shard 1 in a subprocess; shard 0 in this process, once the other holds its lock, so both write at once.
    other = subprocess.Popen([sys.executable, "-m", "patchprobe.cli", *arguments, "--shard", "1/2"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    lock, deadline = bank / ".extract.s1of2.lock", time.time() + 240
    while not (lock.exists() and lock.read_text()) and other.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    ours = CliRunner().invoke(app, [*arguments, "--shard", "0/2"])
    output = other.communicate(timeout=240)[0].decode()
    assert other.returncode == 0, output[-3000:]
    assert ours.exit_code == 0, ours.output
    assert "every shard has finished" in " ".join((output + ours.output).split())  # said by whichever shard ended last
    # Each shard committed only its own slice, under its own chunk names.
    for name in SIZES:
        names = chunk_names(bank, name)
        assert {n.split("-")[0] for n in names} == {"s0of2", "s1of2"}, names
        for index in range(2):
            share = Shard(index, 2).share(BankSplit(bank / name).meta.clip_ids)
            committed = [clip for record in BankSplit(bank / name).chunks if record.shard == Shard(index, 2) for clip in record.clip_ids]
            assert committed == share
    reference = build(manifest, tmp_path / "reference", encoder=create_encoder("tiny-mae"))
    # float16 storage; batches are composed differently (2 + 1 clips per shard, 2 + 2 + 2 in one process)
    assert_same_clips(bank, reference, atol=2e-3)
    loaded, single = LoadedBank.load(bank), LoadedBank.load(reference)
    assert loaded.identity.same_data(single.identity)
    for name in SIZES:
        assert loaded[name].tokens.shape == single[name].tokens.shape
        assert (loaded[name].labels == single[name].labels).all()


def test_a_bank_missing_a_shard_is_refused_naming_it_then_completed(manifest, toy_reference, tmp_path):
    bank = tmp_path / "bank"
    build(manifest, bank, shard="0/2")
    assert not Bank(bank).is_complete()
    with pytest.raises(BankError, match=r"extraction in 2 shards is not finished: shard\(s\) 1/2 \(3 clips\).*--shard 1/2"):
        Bank(bank).split("train")
    with pytest.raises(BankError, match=r"valid: extraction in 2 shards .* shard\(s\) 1/2 \(2 clips\)"):  # shard 1 holds 2 of 3
        Bank(bank).split("valid")
    with pytest.raises(BankError, match=r"train: extraction in 2 shards is not finished"):  # what `train` and `sweep` load
        LoadedBank.load(bank)
    problems = Bank(bank).describe()["problems"]
    assert set(problems) == {"train", "valid"} and all("--shard 1/2" in listed[0] and len(listed) == 1 for listed in problems.values())
    build(manifest, bank, shard="1/2")
    assert_same_clips(bank, toy_reference, atol=2e-3)
    # A chunk lost after completion: the message names the shard that rebuilds it.
    (bank / "train" / "chunks" / "s1of2-000000.json").unlink()
    with pytest.raises(BankError, match=r"2 of 6 clips are missing.*shard\(s\) 1/2 \(2 clips\).*--shard 1/2"):
        Bank(bank).split("train")
    build(manifest, bank, shard="1/2")
    assert_same_clips(bank, toy_reference, atol=2e-3)


class PowerCut(ManifestDataset):
    """A manifest dataset whose `load` fails after `survive` clips: the process dies mid-extraction."""

    def __init__(self, path, survive):
        super().__init__(path)
        self.survive = survive

    def load(self, clip_id, sample_rate):
        if self.survive == 0:
            raise KeyboardInterrupt("power cut")
        self.survive -= 1
        return super().load(clip_id, sample_rate)


def test_a_killed_shard_reruns_alone_and_resumes_where_it_stopped(manifest, toy_reference, tmp_path):
    bank = tmp_path / "bank"
    build(manifest, bank, shard="1/2")
    with pytest.raises(KeyboardInterrupt):
        extract_bank(PowerCut(manifest, survive=2), toy(), bank, batch_size=2, chunk_clips=2, progress=False, shard="0/2")
    assert chunk_names(bank) == ["s0of2-000000", "s1of2-000000", "s1of2-000001"]

    def stamps():
        return {path.name: path.stat().st_mtime_ns for path in (bank / "train" / "chunks").glob("s*")}

    before = stamps()
    build(manifest, bank, shard="0/2")
    after = stamps()
    assert all(after[name] == stamp for name, stamp in before.items()), "committed chunks must not be rewritten"
    # only the clip the killed shard had not committed was extracted again, into its next chunk
    assert sorted(set(after) - set(before)) == sorted(f"s0of2-000001.{role}" for role in ("json", "mask.npy", "tokens.npy", "global.npy"))
    assert_same_clips(bank, toy_reference, atol=2e-3)


def test_the_same_shard_twice_or_another_shard_count_is_refused(manifest, tmp_path):
    bank = tmp_path / "bank"
    with ExtractLock(bank, Shard(1, 2)):
        with pytest.raises(BankError, match=rf"shard 1/2 of this bank is already being extracted \(pid {os.getpid()} on "):
            build(manifest, bank, shard="1/2")
        with pytest.raises(BankError, match=r"splits its clips differently \(shard 1/2 .*an extraction without --shard would.*"
                                            r"--shard i/2 like it"):
            build(manifest, bank)
        with pytest.raises(BankError, match=r"splits its clips differently.*--shard 0/3 would"):
            build(manifest, bank, shard="0/3")
        build(manifest, bank, shard="0/2")  # another shard of the same run writes at the same time
    with ExtractLock(bank):
        with pytest.raises(BankError, match=r"an extraction without --shard: pid .*--shard 1/2 would.*no --shard like it"):
            build(manifest, bank, shard="1/2")
    build(manifest, bank, shard="1/2")  # released: nothing left behind blocks
    assert Bank(bank).is_complete()


@pytest.mark.parametrize("value, message", [
    ("2/2", r"the shard index must be in 0..1 \(0-based"),
    ("-1/2", "the shard index must be in 0..1"),
    ("0/0", "the shard count must be a whole number >= 1"),
    ("1", "expected INDEX/COUNT"),
    ("a/b", "expected INDEX/COUNT"),
])
def test_bad_shard_values_are_refused_naming_the_flag_before_any_work(manifest, tmp_path, value, message):
    bank = tmp_path / "bank"
    result = CliRunner().invoke(app, ["extract", "--manifest", str(manifest), "--encoder", "toy-vit", "--bank", str(bank),
                                      "--shard", value, "--quiet"])
    assert result.exit_code == 2 and "--shard" in result.output, result.output
    output = " ".join(result.output.split())
    assert f"--shard {value!r}" in output or f"--shard {value}:" in output, output
    assert re.search(message, output), output
    assert not bank.exists()
    with pytest.raises(ValueError, match=message):
        build(manifest, bank, shard=value)
    assert not bank.exists()


def test_torchrun_ranks_choose_their_shard_and_gpu(manifest, tmp_path):
    ranks = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert shard_for_process(None, "cuda", ranks) == (Shard(1, 2), "cuda:1",
                                                       "torchrun: shard 1/2 from torchrun's RANK/WORLD_SIZE, device cuda:1 from LOCAL_RANK")
    assert shard_for_process("0/4", "cuda:0", ranks) == (Shard(0, 4), "cuda:0", None)  # explicit choices win
    assert shard_for_process(None, "cpu", {}) == (Shard(), "cpu", None)
    with pytest.raises(ValueError, match="RANK='3', WORLD_SIZE='2'.*pass --shard"):
        shard_for_process(None, "cpu", {**ranks, "RANK": "3"})
    bank = tmp_path / "bank"
    result = CliRunner().invoke(app, ["extract", "--manifest", str(manifest), "--encoder", "toy-vit", "--bank", str(bank), "--quiet"],
                                env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert result.exit_code == 0, result.output
    assert "torchrun: shard 1/2 from torchrun's RANK/WORLD_SIZE" in result.output
    assert {name.split("-")[0] for name in chunk_names(bank)} == {"s1of2"} and not Bank(bank).is_complete()


def test_after_the_shards_stopped_another_layout_finishes_only_the_missing_clips(manifest, toy_reference, tmp_path):
    bank = tmp_path / "bank"
    build(manifest, bank, shard="0/2")
    result = CliRunner().invoke(app, ["info", str(bank)])
    assert result.exit_code == 2 and "--shard 1/2" in " ".join(result.output.split()), result.output
    before = {path.name: path.stat().st_mtime_ns for path in (bank / "train" / "chunks").glob("s0of2-*")}
    build(manifest, bank)  # no --shard: the rest of the clips, under unsharded chunk names
    assert {path.name: path.stat().st_mtime_ns for path in (bank / "train" / "chunks").glob("s0of2-*")} == before
    assert chunk_names(bank) == ["000000", "000001", "s0of2-000000", "s0of2-000001"]
    assert_same_clips(bank, toy_reference, atol=2e-3)
