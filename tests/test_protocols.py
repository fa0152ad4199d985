"""BirdSet's windowing and k-shot sampler, the metrics registry against scikit-learn, validation, class folders."""

import json

import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from patchprobe.bank import Bank
from patchprobe.cli import app
from patchprobe.datasets import FolderDataset, ManifestDataset, event_window, kshot_subset, recording_events, validate_dataset
from patchprobe.errors import DatasetError
from patchprobe.train import compute_metrics

from .conftest import write_manifest


def test_events_come_from_the_largest_non_noise_cluster():
    """BirdSet's XCEventMapping (birdset/datamodule/components/event_mapping.py): noise (-1) masked out
    unless it is the only event, the most frequent cluster kept (ties: the lowest id), else [0, 5]."""
    events = [[1, 2], [3, 4], [5, 6], [7, 8], [0.5, 0.7]]
    assert recording_events(events, [2, 1, 2, -1, -1]) == [(1.0, 2.0), (5.0, 6.0)]
    assert recording_events(events[:2], [3, 1]) == [(3.0, 4.0)]  # a tie: the lowest cluster id
    assert recording_events(events, [-1] * 5) == [(0.0, 5.0)]  # several events, all noise: the default event
    assert recording_events([[1.0, 2.0]], [-1]) == [(1.0, 2.0)]  # a lone noise event is kept
    assert recording_events([], []) == [(0.0, 5.0)]


def test_event_windows_follow_birdsets_time_shifting():
    """EventDecoding._time_shifting: extend to extension_time (6 s default) around the event, clamp, shift
    back inside at an edge; the 5 s window sits in the middle of the allowed starts (BirdSet draws it)."""
    assert event_window((10.0, 11.0), 30.0) == (8.0, 13.0)  # region [7.5, 13.5]: starts 7.5..8.5
    assert event_window((10.0, 11.0), 30.0, extension=8.0) == (8.0, 13.0)  # region [6.5, 14.5]: starts 6.5..9.5
    assert event_window((0.2, 0.6), 30.0) == (0.5, 5.5)  # clamped at 0, shifted to [0, 6]: starts 0..1
    assert event_window((28.0, 29.5), 30.0) == (24.5, 29.5)  # clamped at the end: [24, 30], starts 24..25
    assert event_window((2.0, 12.0), 30.0) == (4.5, 9.5)  # longer than 6 s: kept, window centred in it
    assert event_window((1.0, 2.0), 3.0) == (0.0, 3.0)  # a recording shorter than 5 s gives all of it


def _recordings(per_class: dict[str, int], short: dict[str, int] | None = None):
    """Synthetic recordings: `per_class` passing the lenient filter, `short` failing it (30 s long)."""
    recordings, row = {}, 0
    for label, count in per_class.items():
        for i in range(count + (short or {}).get(label, 0)):
            fails = i >= count  # the extra `short` recordings are 30 s: the lenient filter rejects them
            recordings[row] = {"label": label, "secondary": [], "duration": 30.0 if fails else 12.0,
                               "detected_events": [[1, 2], [6, 7], [1.2, 1.5]], "event_cluster": [0, 0, 0]}
            row += 1
    return recordings


def test_kshot_is_deterministic_per_seed_and_covers_every_class():
    recordings = _recordings({"a": 10, "b": 10, "c": 10})
    first = kshot_subset(recordings, k=4, seed=1)
    assert first == kshot_subset(recordings, k=4, seed=1)
    assert first != kshot_subset(recordings, k=4, seed=2)
    counts = {label: sum(e.label == label for e in first) for label in "abc"}
    assert counts == {"a": 4, "b": 4, "c": 4}
    assert len({e.row for e in first}) == 12  # primaries first: one event per recording while enough recordings
    assert all((e.event_start, e.event_end) != (1.2, 1.5) for e in first)  # contained events dropped


def test_kshot_tops_up_from_leftover_events_then_from_filtered_recordings():
    recordings = _recordings({"a": 2, "b": 6}, short={"a": 3})
    with_fill = kshot_subset(recordings, k=5, seed=0, fill_up=True)
    without = kshot_subset(recordings, k=5, seed=0, fill_up=False)
    # class a: 2 passing recordings x 2 events = 4 < 5; the rejected 30 s recordings fill the last one
    assert sum(e.label == "a" for e in without) == 4 and sum(e.label == "a" for e in with_fill) == 5
    passing_rows = {row for row, info in recordings.items() if info["duration"] <= 20}
    assert all(e.row in passing_rows for e in without)
    assert sum(e.label == "b" for e in with_fill) == 5


def test_metrics_match_scikit_learn_with_the_excluded_class_rule():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 6)) < 0.2).astype(float)
    labels[:, 4] = 0  # a class without positives: left out of mAP, as BirdSet's cmAP does
    labels[:3, 5], labels[3:, 5] = 1, 0  # 3 positives: in mAP, not in cmAP5
    labels[10] = 0
    scores = rng.standard_normal((60, 6)) + labels
    out = compute_metrics(labels, scores, ["map", "cmap5", "auroc", "t1acc", "accuracy"])
    scored = [c for c in range(6) if labels[:, c].any()]
    assert out["map"] == pytest.approx(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in scored]))
    five = [c for c in range(6) if labels[:, c].sum() >= 5]
    assert out["cmap5"] == pytest.approx(np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in five]))
    assert out["auroc"] == pytest.approx(np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in scored]))
    rows = labels.any(axis=1)
    assert out["t1acc"] == pytest.approx(np.mean(labels[rows][np.arange(rows.sum()), scores[rows].argmax(1)]))
    assert out["classes_dropped"] == 1 and out["cmap5_classes"] == len(five) and out["t1acc_clips"] == rows.sum()
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(labels, scores, ["f1"])


def _manifest_with_problems(tmp_path):
    good = np.zeros(8000, dtype=np.float32)
    rows = []
    for i in range(4):
        sf.write(tmp_path / f"ok{i}.wav", good + 0.01 * i, 16000)
        rows.append({"path": f"ok{i}.wav", "labels": "dog" if i % 2 else "cat", "split": "train" if i < 2 else "test"})
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    rows.append({"path": "broken.wav", "labels": "dog", "split": "train"})
    rows.append({"path": "gone.wav", "labels": "cat", "split": "train"})
    rows.append({"path": "gone2.wav", "labels": "cat", "split": "test"})
    return write_manifest(tmp_path / "m.csv", rows)


def test_validation_reports_every_problem_with_counts_and_skip_bad_records_them(tmp_path):
    manifest = _manifest_with_problems(tmp_path)
    report = validate_dataset(ManifestDataset(manifest))
    assert set(report.problems) == {"missing file", "unreadable audio"}
    assert len(report.problems["missing file"]) == 2 and "gone.wav" in report.summary() and report.checked == 7
    bank = tmp_path / "bank"
    toy = ["--encoder", "toy-vit", "--encoder-arg", "width=32", "--encoder-arg", "depth=1", "--encoder-arg", "heads=2", "--quiet"]
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--manifest", str(manifest), "--bank", str(bank), *toy])
    assert result.exit_code != 0 and "missing file: 2" in result.output and "unreadable audio: 1" in result.output
    assert not (bank / "bank.json").exists()  # nothing started before the report
    result = runner.invoke(app, ["extract", "--manifest", str(manifest), "--bank", str(bank), "--skip-bad", *toy])
    assert result.exit_code == 0, result.output
    skipped = json.loads((bank / "bank.json").read_text())["source"]["skipped_at_validation"]
    assert sorted(skipped) == ["broken.wav", "gone.wav", "gone2.wav"] and skipped["gone.wav"].startswith("missing file")
    assert Bank(bank).split("train").meta.clip_ids == ["ok0.wav", "ok1.wav"]


def test_class_folders_with_and_without_split_folders(tmp_path):
    for cls in ("bird", "frog"):
        (tmp_path / "flat" / cls).mkdir(parents=True)
        for i in range(10):
            sf.write(tmp_path / "flat" / cls / f"{i}.wav", np.zeros(1600, dtype=np.float32), 16000)
        for split in ("train", "test"):
            (tmp_path / "split" / split / cls).mkdir(parents=True)
            sf.write(tmp_path / "split" / split / cls / "a.flac", np.zeros(1600, dtype=np.float32), 16000)
    flat = FolderDataset(tmp_path / "flat", valid_fraction=0.1, test_fraction=0.2, seed=3)
    assert flat.classes == ["bird", "frog"] and not flat.multilabel
    assert {s: len(flat.clip_ids(s)) for s in ("train", "valid", "test")} == {"train": 14, "valid": 2, "test": 4}
    assert flat.clip_ids("test") == FolderDataset(tmp_path / "flat", seed=3).clip_ids("test")
    split = FolderDataset(tmp_path / "split")
    assert split.clip_ids("test") == ["test/bird/a.flac", "test/frog/a.flac"] and split.source()["splits"] == "folders"
    assert split.load("test/frog/a.flac").labels.tolist() == [0.0, 1.0]
    with pytest.raises(Exception, match="no audio files"):
        FolderDataset(tmp_path / "flat" / "bird")


def test_empty_split_stops_even_with_skip_bad(tmp_path):
    from patchprobe.datasets import checked

    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    manifest = write_manifest(tmp_path / "m.csv", [{"path": "a.wav", "labels": "x", "split": "test"}])
    with pytest.raises(DatasetError, match="empty split: 1"):
        checked(ManifestDataset(manifest), skip_bad=True)  # no train clip
    assert checked(ManifestDataset(manifest), splits=["test"]).clip_ids("test") == ["a.wav"]  # test alone is fine
