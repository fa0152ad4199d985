"""Data hygiene at validation (issue 13): the same audio in two splits and classes without training clips are
warnings with a count and first examples, errors with `--strict`."""

import os
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from patchprobe.cli import app
from patchprobe.datasets import FolderDataset, ManifestDataset, checked, validate_dataset
from patchprobe.datasets.validate import CLASS_NOT_IN_TRAIN, SAME_AUDIO, DataHygieneWarning
from patchprobe.errors import DatasetError


def _tone(path, seed, seconds=0.5):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)


@pytest.fixture
def leaky(tmp_path):
    """Train a0, a1, b0; valid a2; test: a copy of a0 (other name), a1 again by another relative path, b1, and c0
    (class c has no training clip)."""
    for name, seed in (("a0", 0), ("a1", 1), ("b0", 2), ("a2", 3), ("b1", 4), ("c0", 5)):
        _tone(tmp_path / f"{name}.wav", seed)
    shutil.copy(tmp_path / "a0.wav", tmp_path / "copy_of_a0.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels,split\na0.wav,a,train\na1.wav,a,train\nb0.wav,b,train\na2.wav,a,valid\n"
                        "copy_of_a0.wav,a,test\n./a1.wav,a,test\nb1.wav,b,test\nc0.wav,c,test\n")
    return manifest


def test_same_audio_and_test_only_classes_are_warnings_with_examples(leaky):
    report = validate_dataset(ManifestDataset(leaky))
    assert report.ok  # usable data: warnings only
    assert report.warnings[SAME_AUDIO] == {
        "copy_of_a0.wav (test)": "identical bytes to a0.wav (train)",
        "./a1.wav (test)": "the same file as a1.wav (train)",
    }
    assert report.warnings[CLASS_NOT_IN_TRAIN] == {"c": "1 test clip(s), no train clip: the probe cannot learn it"}
    text = report.warning_summary()
    assert "same audio in two splits: 2" in text and "class without training clips: 1" in text and "copy_of_a0.wav (test)" in text


def test_checked_warns_by_default_and_refuses_with_strict(leaky):
    data = ManifestDataset(leaky)
    with pytest.warns(DataHygieneWarning, match="same audio in two splits: 2"):
        assert checked(data) is data
    messages = []
    checked(data, warn=messages.append)
    assert len(messages) == 1 and "--strict makes this an error" in messages[0]
    with pytest.raises(DatasetError) as info:
        checked(data, strict=True)
    assert "same audio in two splits: 2" in str(info.value) and "class without training clips: 1" in str(info.value)
    assert "drop --strict" in str(info.value)


def test_clean_data_has_no_warning_even_with_equal_sizes_and_heads(tmp_path):
    # same size in train and test (fixed-length clips), and the same first 64 KiB: only full bytes decide
    head = np.zeros(40000, np.float32)
    for split, seed in (("train", 0), ("test", 1)):
        tail = np.random.default_rng(seed).standard_normal(8000).astype(np.float32) * 0.1
        sf.write(tmp_path / f"{split}.wav", np.concatenate([head, tail]), 16000, subtype="PCM_16")
    assert os.path.getsize(tmp_path / "train.wav") == os.path.getsize(tmp_path / "test.wav") > 65536
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels,split\ntrain.wav,a,train\ntest.wav,a,test\n")
    data = ManifestDataset(manifest)
    report = validate_dataset(data)
    assert report.ok and not report.warnings and "warnings" not in report.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked(data, strict=True)


def test_duplicates_within_one_split_and_missing_files_are_not_hygiene_warnings(tmp_path):
    _tone(tmp_path / "a.wav", 0)
    shutil.copy(tmp_path / "a.wav", tmp_path / "b.wav")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels,split\na.wav,a,train\nb.wav,a,train\ngone.wav,a,test\n")
    report = validate_dataset(ManifestDataset(manifest))
    assert not report.warnings and set(report.problems) == {"missing file"}


def test_class_folders_linked_into_two_splits(tmp_path):
    _tone(tmp_path / "train" / "dog" / "d0.wav", 0)
    _tone(tmp_path / "train" / "cat" / "c0.wav", 1)
    (tmp_path / "test" / "dog").mkdir(parents=True)
    os.symlink(tmp_path / "train" / "dog" / "d0.wav", tmp_path / "test" / "dog" / "same.wav")
    _tone(tmp_path / "test" / "bird" / "b0.wav", 2)
    report = validate_dataset(FolderDataset(tmp_path))
    assert report.warnings[SAME_AUDIO] == {"test/dog/same.wav (test)": "the same file as train/dog/d0.wav (train)"}
    assert list(report.warnings[CLASS_NOT_IN_TRAIN]) == ["bird"]


def test_hygiene_covers_all_splits_when_one_is_extracted(leaky):
    report = validate_dataset(ManifestDataset(leaky), splits=["train"])
    assert report.checked == 3 and len(report.warnings[SAME_AUDIO]) == 2


def test_cli_extract_warns_and_strict_refuses_before_extracting(leaky, tmp_path):
    runner = CliRunner()
    bank = tmp_path / "bank"
    result = runner.invoke(app, ["extract", "--manifest", str(leaky), "--encoder", "toy-vit", "--bank", str(bank), "--quiet", "--strict"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in flat, result.output
    assert "same audio in two splits: 2" in flat and "copy_of_a0.wav (test): identical bytes to a0.wav (train)" in flat
    assert "class without training clips: 1" in flat and "c: 1 test clip(s)" in flat
    assert not bank.exists()
    result = runner.invoke(app, ["extract", "--manifest", str(leaky), "--encoder", "toy-vit", "--bank", str(bank), "--quiet",
                                 "--strict", "--no-validate"])
    assert result.exit_code == 2 and "--strict needs validation" in " ".join(result.output.split())
    result = runner.invoke(app, ["extract", "--manifest", str(leaky), "--encoder", "toy-vit", "--bank", str(bank), "--quiet"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "warning:" in flat and "same audio in two splits: 2" in flat and "--strict makes this an error" in flat


def test_class_folders_pass_over_hidden_files_and_folders(tmp_path):
    _tone(tmp_path / "dog" / "d0.wav", 0)
    _tone(tmp_path / "cat" / "c0.wav", 1)
    (tmp_path / "dog" / "._d0.wav").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    _tone(tmp_path / ".ipynb_checkpoints" / "x.wav", 2)
    _tone(tmp_path / "cat" / ".trash" / "old.wav", 3)
    data = FolderDataset(tmp_path, valid_fraction=0.0, test_fraction=0.0)
    assert data.classes == ["cat", "dog"] and data.clip_ids("train") == ["cat/c0.wav", "dog/d0.wav"]
    assert validate_dataset(data).ok
