import csv
import io

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


# ---- malformed manifests: every case a ManifestError naming FILE: line N, never a traceback (issue 13) ----

@pytest.mark.parametrize(
    "content,needle",
    [
        ("path,labels,split\na.wav,x,train\nb.wav,x,train,oops\n", "line 3: 4 fields but the header has 3 (extra: 'oops')"),
        ("path,labels,split\na.wav,x\n", "line 2: 2 field(s) but the header has 3 (no value for split)"),
        ("path,labels,path,split\na.wav,x,b.wav,train\n", "line 1: column(s) ['path'] appear more than once"),
        ("path,labels,split\na\0.wav,x,train\n", "line 2: `path` 'a\\x00.wav' holds a NUL character"),
        ('path,labels,split\na.wav,"x\nx",train\n"b.wav,x,train\n', "line 4: 1 field(s) but the header has 3"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, content, needle):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        ManifestDataset(manifest)
    assert str(info.value).startswith(f"{manifest}: ") and needle in str(info.value), str(info.value)


def test_line_numbers_count_blank_lines_and_quoted_newlines(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,labels,split\n\n"a\nb.wav",x,train\n\nc.wav,x,nope\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 6: split 'nope'"):
        ManifestDataset(manifest)


def test_bom_header_is_accepted(tmp_path):
    manifest = tmp_path / "excel.csv"
    manifest.write_bytes("path,labels,split\r\na.wav,x,train\r\nb.wav,y,test\r\n".encode("utf-8-sig"))
    data = ManifestDataset(manifest)
    assert data.classes == ["x", "y"] and data.clip_ids("train") == ["a.wav"] and data.clip_ids("test") == ["b.wav"]


def test_trailing_empty_fields_and_spaces_around_labels_are_accepted(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path , labels,split\na.wav, x ; y , Train ,\nb.wav,x,test,,\n", encoding="utf-8")
    data = ManifestDataset(manifest)
    assert data.clip_ids("train") == ["a.wav"] and data.labels_of("a.wav").tolist() == [1.0, 1.0]


def test_folder_given_as_manifest(tmp_path):
    with pytest.raises(ManifestError) as info:
        ManifestDataset(tmp_path)
    assert f"{tmp_path}: is a folder" in str(info.value) and "--dataset folder --data-dir" in str(info.value)


def test_not_utf8(tmp_path):
    manifest = tmp_path / "latin1.csv"
    manifest.write_bytes("path,labels,split\nsé.wav,x,train\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        ManifestDataset(manifest)


def test_paths_are_kept_verbatim_and_spaces_are_pointed_out(tmp_path):
    import soundfile as sf

    from patchprobe.errors import AudioError

    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 16000)
    sf.write(tmp_path / " b.wav", np.zeros(800, np.float32), 16000)  # a file name may start with a space
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,labels,split\n a.wav,x,train\n b.wav,x,train\n", encoding="utf-8")
    data = ManifestDataset(manifest)
    assert data.clip_ids("train") == [" a.wav", " b.wav"]
    assert data.path_of(" b.wav") == tmp_path / " b.wav"
    data.load(" b.wav")  # the file whose name starts with a space is found
    with pytest.raises(AudioError) as info:
        data.load(" a.wav")
    message = str(info.value)
    assert "file not found" in message and f"{tmp_path / 'a.wav'} (without the spaces around a name) exists" in message
    assert "leading or trailing spaces" in message


@pytest.mark.parametrize(
    "content,needle",
    [
        ("path,labels,split\na.wav,x,train,oops\n", "line 2: 4 fields"),
        ("\ufeffpath,labels,split\na.wav,x,nope\n", "line 2: split 'nope'"),
        (None, "is a folder"),
    ],
)
def test_cli_extract_reports_bad_manifests_in_one_line(tmp_path, content, needle):
    from typer.testing import CliRunner

    from patchprobe.cli import app

    manifest = tmp_path / "m.csv"
    if content is None:
        manifest.mkdir()
    else:
        manifest.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["extract", "--manifest", str(manifest), "--encoder", "toy-vit", "--bank", str(tmp_path / "b")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    flat = " ".join(result.output.split())  # rich wraps long lines
    assert "Traceback" not in flat and needle in flat, result.output
    assert not (tmp_path / "b").exists()


# ---- property-based: any text is a dataset or a ManifestError, never another exception ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FIELD = st.one_of(
    st.sampled_from(["train", "valid", "test", "TRAIN", " test ", "a.wav", "x;y", "x", "", ";", '"', '""', ",", "\n", " a.wav", "\ufeff"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
)
_COLUMN = st.sampled_from(["path", "labels", "split", "id", "", " path ", "Path", "extra", "labels"])


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_VALUES = {
    "path": st.sampled_from(["a.wav", "b.wav", "c.wav", "d.ogg", " a.wav", "dir/c.flac", "é ü.wav", "a,b.wav", 'q"t.wav', "x\ny.wav"]),
    "labels": st.sampled_from(["x", "y", "z", "x;y", " x ; y ", "", ";", "x;x", "dog,cat", "ÿ"]),
    "split": st.sampled_from(["train", "train", "valid", "test", "TRAIN", " test "]),
    "id": st.sampled_from(["", "", "c1", "c2", "c1 "]),
    "": st.sampled_from(["", "junk"]),
}


@st.composite
def manifest_bytes(draw):
    if draw(st.integers(0, 3)):  # mostly a usable header with rows of its width, so parsing gets past line 1
        header = draw(st.permutations(["path", "labels", "split"] + draw(st.sampled_from([[], ["id"], [""], ["id", ""]]))))
        rows = []
        for _ in range(draw(st.integers(0, 6))):
            row = [draw(_TEXT) if draw(st.integers(0, 7)) == 0 else draw(_VALUES[name]) for name in header]
            if draw(st.integers(0, 9)) == 0:  # a field too many or too few
                row = row + [draw(_FIELD)] if draw(st.booleans()) else row[:-1]
            rows.append(row)
        header = [draw(st.sampled_from([name, f" {name} "])) for name in header]
    else:
        header = draw(st.lists(_COLUMN, min_size=0, max_size=6))
        rows = draw(st.lists(st.lists(_FIELD, min_size=0, max_size=6), max_size=6))
    if draw(st.integers(0, 3)):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows([header, *rows])
        text = buffer.getvalue()
    else:  # hand-joined: broken quoting, stray newlines
        text = "\n".join(",".join(row) for row in [header, *rows]) + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"]))
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 9)) == 0:  # a few raw bytes somewhere (invalid UTF-8, NUL)
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    return data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("manifest-properties")


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=manifest_bytes(), multilabel=st.sampled_from([None, True, False]))
def test_any_manifest_is_a_dataset_or_a_manifest_error(scratch, content, multilabel):
    manifest = scratch / "m.csv"
    manifest.write_bytes(content)
    try:
        data = ManifestDataset(manifest, multilabel=multilabel)
    except ManifestError as exc:
        assert str(exc).startswith(f"{manifest}: "), str(exc)
        return
    ids = [clip_id for split in ("train", "valid", "test") for clip_id in data.clip_ids(split)]
    assert ids and len(ids) == len(set(ids))
    assert data.classes == sorted(set(data.classes)) and all(data.classes)
    for split in ("train", "valid", "test"):
        matrix = data.label_matrix(split)
        assert matrix.shape == (len(data.clip_ids(split)), len(data.classes))
        if multilabel is False:
            assert (matrix.sum(axis=1) == 1).all()
    assert all(str(data.path_of(clip_id)) for clip_id in ids)
