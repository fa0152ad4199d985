import numpy as np
import pytest

from patchprobe.datasets import ManifestDataset
from patchprobe.errors import ManifestError

from .conftest import write_manifest


def rows(*items):
    return [{"path": path, "labels": labels, "split": split} for path, labels, split in items]


def test_parses_classes_splits_and_task_type(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", rows(("a.wav", "dog;cat", "train"), ("b.wav", "", "train"), ("c.wav", "bird", "test")))
    data = ManifestDataset(manifest)
    assert data.classes == ["bird", "cat", "dog"]
    assert data.multilabel is True
    assert data.clip_ids("train") == ["a.wav", "b.wav"] and data.splits == ["train", "test"]
    np.testing.assert_array_equal(data.label_matrix("train"), [[0, 1, 1], [0, 0, 0]])
    assert data.path_of("a.wav") == tmp_path / "a.wav"
    assert data.name == "m"


def test_single_label_rows_infer_multiclass_and_override(tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", rows(("a.wav", "x", "train"), ("b.wav", "y", "valid")))
    assert ManifestDataset(manifest).multilabel is False
    assert ManifestDataset(manifest, multilabel=True).multilabel is True
    data = ManifestDataset(manifest, classes=["y", "x", "z"])
    assert data.classes == ["y", "x", "z"]
    np.testing.assert_array_equal(data.labels_of("a.wav"), [0, 1, 0])


@pytest.mark.parametrize(
    "content,kwargs,needle",
    [
        ("path,split\na.wav,train\n", {}, "missing column"),
        ("path,labels,split\n", {}, "no rows"),
        ("path,labels,split\na.wav,x,training\n", {}, "line 2: split 'training'"),
        ("path,labels,split\na.wav,x,train\na.wav,y,test\n", {}, "line 3: clip 'a.wav' already listed on line 2"),
        ("path,labels,split\n,x,train\n", {}, "empty `path`"),
        ("path,labels,split\na.wav,x;x,train\n", {}, "repeated"),
        ("path,labels,split\na.wav,x,train\nb.wav,q,train\n", {"classes": ["x"]}, "line 3: label(s) ['q']"),
        ("path,labels,split\na.wav,x;y,train\n", {"multilabel": False}, "exactly one label"),
        ("path,labels,split\na.wav,,train\n", {}, "no row has a label"),
    ],
)
def test_manifest_errors_name_file_line_and_value(tmp_path, content, kwargs, needle):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(content)
    with pytest.raises(ManifestError) as info:
        ManifestDataset(manifest, **kwargs)
    assert str(manifest) in str(info.value)
    assert needle in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        ManifestDataset(tmp_path / "nope.csv")


def test_loads_audio_through_manifest(tiny_dataset):
    data = ManifestDataset(tiny_dataset)
    clip = data.load(data.clip_ids("train")[0], target_sr=8000)
    assert clip.sample_rate == 8000 and clip.waveform.dtype == np.float32 and clip.split == "train"
    assert clip.labels.shape == (len(data.classes),)
