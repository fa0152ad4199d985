"""Predictions on new audio: windows, scores, decisions, output formats, resume, activity curves, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from patchprobe.cli import app
from patchprobe.errors import RunError
from patchprobe.predict import (RAVEN_COLUMNS, Decisions, Predictor, collect_audio, rebuild_encoder, write_predictions,
                                write_timeline)
from patchprobe.train import Run, TrainConfig, fit


@pytest.fixture
def protobin_run(tiny_bank, tmp_path):
    config = TrainConfig(probe="protobin", probe_args={"prototypes_per_class": 2}, epochs=3, batch_size=4, lr=0.1)
    fit(tiny_bank, [config], [tmp_path / "run"], progress=False)
    return tmp_path / "run"


@pytest.fixture
def long_recording(tmp_path):
    """A 7.3 s recording at 22.05 kHz (resampled on read): a 1200 Hz tone from 3 s to 4 s over noise."""
    rate = 22050
    rng = np.random.default_rng(1)
    wave = 0.05 * rng.standard_normal(int(7.3 * rate))
    t = np.arange(rate) / rate
    wave[3 * rate : 4 * rate] += 0.3 * np.sin(2 * np.pi * 1200 * t)
    path = tmp_path / "new" / "long.flac"
    path.parent.mkdir()
    sf.write(path, wave.astype(np.float32), rate)
    return path


def test_the_encoder_is_rebuilt_from_the_run_and_checked(protobin_run):
    run = Run(protobin_run)
    encoder = rebuild_encoder(run)
    assert encoder.name == "toy-vit" and encoder.config_hash() == run.bank.encoder_config_hash
    assert encoder.token_dim == 32  # width read from the bank's recorded settings
    with pytest.raises(RunError, match="--encoder-arg"):
        rebuild_encoder(run, overrides={"seed": 5})


def test_windows_cover_the_recording_and_the_file_score_is_the_window_maximum(protobin_run, long_recording):
    predictor = Predictor.from_run(protobin_run, window_s=2.0, hop_s=1.0, batch_size=3)
    assert predictor.window_starts(int(7.3 * 16000)) == [0, 16000, 32000, 48000, 64000, 80000, 84800]  # last: ends at the end
    result = predictor.predict_files([long_recording])
    (prediction,) = result.predictions
    assert prediction.window_scores.shape == (7, 3) and prediction.sample_rate == 22050
    assert prediction.end_s[-1] == pytest.approx(7.3) and prediction.begin_s[-1] == pytest.approx(5.3)
    np.testing.assert_array_equal(prediction.scores, prediction.window_scores.max(axis=0))
    # the same audio through the in-memory API gives the same scores, batched or not
    samples, rate = sf.read(long_recording, dtype="float32")
    again = Predictor.from_run(protobin_run, window_s=2.0, hop_s=1.0, batch_size=1).predict(samples, rate)
    np.testing.assert_allclose(again.window_scores, prediction.window_scores, atol=1e-5)


def test_scores_match_the_probe_on_the_bank_tokens(protobin_run, tiny_dataset):
    """A clip shorter than the window is one window: its score is the probe's output on that clip's tokens."""
    from patchprobe.bank import LoadedBank
    from patchprobe.train import predict

    bank = LoadedBank.load(Run(protobin_run).bank.path)
    expected = torch.sigmoid(torch.from_numpy(predict(Run(protobin_run).probe(), bank["test"]))).numpy()
    rows = [r for r in csv.DictReader(open(tiny_dataset)) if r["split"] == "test"]
    paths = [tiny_dataset.parent / r["path"] for r in rows]
    result = Predictor.from_run(protobin_run).predict_files(paths)
    got = np.stack([p.scores for p in result.predictions])
    order = [bank["test"].meta.clip_ids.index(r["path"]) for r in rows]
    np.testing.assert_allclose(got, expected[order], atol=2e-3)  # float16 bank storage vs float32 tokens


def test_decisions_use_thresholds_or_a_stated_fallback():
    multi = Decisions(np.array([0.3, 0.9]), True, "valid")
    assert multi.decide(np.array([[0.4, 0.8], [0.2, 0.95]])).tolist() == [[True, False], [False, True]]
    single = Decisions(None, False, "fallback")
    assert single.decide(np.array([0.2, 0.5, 0.3])).tolist() == [False, True, False]


def test_outputs_csv_json_raven(protobin_run, long_recording, tmp_path):
    predictor = Predictor.from_run(protobin_run, window_s=2.0)
    result = predictor.predict_files([long_recording])
    assert "fallback: 0.5" in result.decisions.source or "valid" in result.decisions.source
    # force a detection in every window so the Raven table has rows
    result.decisions = Decisions(np.zeros(3), True, "test thresholds")
    rows = list(csv.DictReader(open(write_predictions(result, tmp_path / "p.csv"))))
    assert [r["scope"] for r in rows] == ["file"] + ["window"] * 4
    assert set(rows[0]) >= {"file", "begin_s", "end_s", "detected", "score:low", "score:mid", "score:high"}
    blob = json.loads(write_predictions(result, tmp_path / "p.json").read_text())
    assert blob["classes"] == ["high", "low", "mid"] and len(blob["files"][0]["windows"]) == 4
    assert blob["decisions"]["source"] == "test thresholds"
    raven = (tmp_path / "p.txt")
    write_predictions(result, raven)
    lines = raven.read_text().splitlines()
    assert lines[0].split("\t") == list(RAVEN_COLUMNS)
    first = lines[1].split("\t")
    assert first[:3] == ["1", "Spectrogram 1", "1"] and first[7] in blob["classes"] and first[10] == str(long_recording)
    assert len(lines) == 1 + 4 * 3
    with pytest.raises(ValueError, match="--format"):
        write_predictions(result, tmp_path / "p.xlsx")


def test_raven_table_matches_birdnet_analyzer_columns():
    """The header is BirdNET-Analyzer's Raven selection table, `RAVEN_TABLE_HEADER` in
    birdnet_analyzer/analyze/utils.py (github.com/birdnet-team/BirdNET-Analyzer), column for column."""
    birdnet = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tCommon Name\t"
               "Species Code\tConfidence\tBegin Path\tFile Offset (s)")
    assert "\t".join(RAVEN_COLUMNS) == birdnet


def test_resume_skips_finished_files_and_recomputes_changed_ones(protobin_run, long_recording, tiny_dataset, tmp_path):
    files = collect_audio([tiny_dataset.parent / "audio"])[:5]
    sidecar = tmp_path / "out.partial.jsonl"
    predictor = Predictor.from_run(protobin_run, batch_size=2)
    first = predictor.predict_files(files, resume=sidecar)
    assert first.reused == 0 and len(first.predictions) == 5
    # a crash mid-append leaves a torn line: it is dropped, the rest reused
    with open(sidecar, "a") as handle:
        handle.write('{"key": ["torn')
    again = predictor.predict_files(files, resume=sidecar)
    assert again.reused == 5
    np.testing.assert_array_equal(again.predictions[2].window_scores, first.predictions[2].window_scores)
    sf.write(files[0], np.zeros(16000, dtype=np.float32), 16000)  # changed: other size and mtime
    third = predictor.predict_files(files, resume=sidecar)
    assert third.reused == 4
    # other settings do not reuse the sidecar
    other = Predictor.from_run(protobin_run, window_s=0.5).predict_files(files, resume=sidecar, log=lambda _: None)
    assert other.reused == 0


def test_unreadable_files_are_listed_and_skipped(protobin_run, long_recording, tmp_path):
    bad = tmp_path / "new" / "broken.wav"
    bad.write_bytes(b"RIFF not audio")
    result = Predictor.from_run(protobin_run).predict_files(collect_audio([tmp_path / "new"]), log=lambda _: None)
    assert [p.source for p in result.predictions] == [str(long_recording)]
    assert list(result.failed) == [str(bad)]


def test_activity_curve_peaks_where_the_class_sounds(tmp_path):
    """A prototype equal to one token, weighted for its class by the head, peaks at that token's time step."""
    from patchprobe.predict import class_activity
    from patchprobe.probes import create_probe

    probe = create_probe("protofloat", token_dim=8, num_classes=2, prototypes_per_class=1)
    tokens = torch.randn(1, 10, 3, 8)
    with torch.no_grad():
        probe.prototypes.copy_(torch.stack([tokens[0, 7, 1], tokens[0, 2, 0]]))
        probe.head.weight.copy_(torch.eye(2))
    with torch.no_grad():
        activity = class_activity(probe, tokens, torch.ones(1, 10, 3, dtype=torch.bool))
    assert activity.shape == (1, 10, 2)
    assert activity[0, :, 0].argmax() == 7 and activity[0, :, 1].argmax() == 2
    assert float(activity[0, 7, 0]) == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_with_timeline_and_plot(protobin_run, long_recording, tmp_path):
    out = tmp_path / "preds.txt"
    result = CliRunner().invoke(app, ["predict", str(protobin_run), str(long_recording.parent), "--out", str(out), "--window", "2",
                                      "--timeline", str(tmp_path / "timeline.csv"), "--plot", str(tmp_path / "plot.png"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("Selection\tView")
    rows = list(csv.DictReader(open(tmp_path / "timeline.csv")))
    assert {r["class"] for r in rows} == {"high", "low", "mid"}
    times = sorted({float(r["time_s"]) for r in rows})
    assert times[0] < 0.2 and 7.0 < times[-1] <= 7.3 and np.all(np.diff(times) > 0)
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "threshold" in result.output
    # rerun: everything comes from the sidecar
    again = CliRunner().invoke(app, ["predict", str(protobin_run), str(long_recording), "--out", str(out), "--window", "2", "--quiet"])
    assert again.exit_code == 0 and "1 reused" in again.output, again.output


def test_cli_predict_refuses_bad_options(protobin_run, long_recording, tmp_path):
    result = CliRunner().invoke(app, ["predict", str(protobin_run), str(long_recording), "--out", str(tmp_path / "p.csv"),
                                      "--window", "1", "--hop", "2"])
    assert result.exit_code == 2 and "--hop" in result.output
    result = CliRunner().invoke(app, ["predict", str(protobin_run), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 2 and "missing.wav" in result.output


def test_timeline_refused_for_heads_without_prototypes(tiny_bank, long_recording, tmp_path):
    fit(tiny_bank, [TrainConfig(probe="linear", epochs=1, batch_size=4)], [tmp_path / "linear"], progress=False)
    result = Predictor.from_run(tmp_path / "linear").predict_files([long_recording])
    assert result.predictions[0].activity is None
    with pytest.raises(ValueError, match="prototype heads"):
        write_timeline(result, tmp_path / "t.csv")


def test_activity_peaks_fall_in_the_generated_events_more_often_than_chance(tmp_path):
    """Loose check of benchmarks/timeline.py at test size (toy-vit, 3 s clips): the peak of a present class's curve
    lies inside one of its generated events clearly more often than a uniformly random time would."""
    from patchprobe.bank import extract_bank
    from patchprobe.datasets import SyntheticConfig, load_synthetic_dataset
    from patchprobe.datasets.synthetic import clip_rng, synthesize_clip_events
    from patchprobe.encoders import create_encoder

    config = SyntheticConfig(seed=0, sizes={"train": 80, "valid": 20, "test": 30}, clip_seconds=3.0, max_classes=2,
                             classes=("harmonic", "noise_low", "clicks", "trill"))
    dataset = load_synthetic_dataset(tmp_path / "data", config)
    bank = extract_bank(dataset, create_encoder("toy-vit", width=32, depth=1, heads=2), tmp_path / "bank", progress=False)
    fit(bank, [TrainConfig(probe="protobin", probe_args={"prototypes_per_class": 4}, epochs=30, batch_size=16, lr=0.3)],
        [tmp_path / "run"], progress=False)
    predictor = Predictor.from_run(tmp_path / "run")
    paths = [dataset.path_of(clip_id) for clip_id in dataset.clip_ids("test")]
    hits, chance = [], []
    for index, prediction in enumerate(predictor.predict_files(paths, timeline=True).predictions):
        _, labels, events = synthesize_clip_events(config, clip_rng(config.seed, "test", index))
        for name in labels:
            spans = [(on, off) for label, on, off in events if label == name]
            peak = prediction.times_s[np.argmax(prediction.activity[:, predictor.classes.index(name)])]
            hits.append(any(on - 0.08 <= peak <= off + 0.08 for on, off in spans))
            chance.append(sum(off - on for on, off in spans) / prediction.duration_s)
    assert len(hits) >= 30
    assert np.mean(hits) > 1.5 * np.mean(chance) and np.mean(hits) > 0.3, (np.mean(hits), np.mean(chance))
