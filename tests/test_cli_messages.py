"""Every option error names the command-line flag and what it allows, never a Python name (issue 16).

Each case is a mistake a user makes on the command line; the checks run before any data is read or model is built,
so most cases need neither a bank nor weights (the paths they name do not exist).
"""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from patchprobe.cli import app

runner = CliRunner()

# What leaks when a Python error reaches the user instead of a message about the flag.
PYTHON_NAMES = ("unexpected keyword argument", "got an unexpected", "Traceback", "=True", "__init__", "not supported between",
                "could not convert", "NoneType")


def refused(args: list[str]) -> str:
    """Run the command; it must fail with exit code 2 and one clear message. Returns the message on one line."""
    result = runner.invoke(app, args)
    text = " ".join(result.output.replace("│", " ").replace("╭", " ").replace("╰", " ").replace("─", " ").split())
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    for name in PYTHON_NAMES:
        assert name not in text, (name, text)
    return text


def test_extract_half_names_the_flag_the_device_and_the_encoders_that_have_it(tmp_path, tiny_dataset):
    bank = tmp_path / "bank"
    text = refused(["extract", "--manifest", str(tiny_dataset), "--encoder", "tiny-mae", "--bank", str(bank), "--half"])
    assert "--half" in text and "encoder 'tiny-mae' takes no --half" in text and "eat-base" in text
    # an encoder with a float16 mode, on a CPU: refused before its weights are looked for
    text = refused(["extract", "--manifest", str(tiny_dataset), "--encoder", "eat-base", "--bank", str(bank), "--half"])
    assert "--half" in text and "--device is 'cpu'" in text and "--device cuda" in text
    assert not bank.exists()


def test_extract_multiclass_on_multilabel_rows_names_the_flag_and_the_clip(tmp_path, tiny_dataset):
    bank = tmp_path / "bank"
    text = refused(["extract", "--manifest", str(tiny_dataset), "--encoder", "toy-vit", "--bank", str(bank), "--multiclass"])
    assert "--multiclass" in text and "exactly one label per clip" in text and "drop --multiclass" in text
    assert "multilabel=" not in text  # the Python keyword never shows
    assert not bank.exists()


def test_extract_task_flag_with_a_registered_dataset_and_a_missing_data_dir(tmp_path):
    bank = str(tmp_path / "bank")
    text = refused(["extract", "--dataset", "folder", "--data-dir", str(tmp_path), "--encoder", "toy-vit", "--bank", bank, "--multiclass"])
    assert "--multilabel/--multiclass" in text and "--manifest" in text
    text = refused(["extract", "--dataset", "folder", "--encoder", "toy-vit", "--bank", bank])
    assert "--data-dir" in text and "dataset 'folder'" in text


def test_extract_encoder_options_name_the_flag_and_the_allowed_keys(tmp_path, tiny_dataset):
    base = ["extract", "--manifest", str(tiny_dataset), "--bank", str(tmp_path / "bank")]
    text = refused([*base, "--encoder", "toy-vit", "--encoder-arg", "widht=32"])
    assert "--encoder-arg" in text and "'widht'" in text and "width" in text and "depth" in text and "layer (--layer)" in text
    text = refused([*base, "--encoder", "toy-vit", "--encoder-arg", "width=wide"])
    assert "--encoder-arg" in text and "'width=wide'" in text and "width as int" in text
    text = refused([*base, "--encoder", "tiny-mae", "--layer", "last"])
    assert "--layer" in text and "'last'" in text and "layer as int" in text
    text = refused([*base, "--encoder", "tiny-mae", "--checkpoint", str(tmp_path / "weights.pt")])
    assert "--checkpoint" in text and "takes no --checkpoint" in text and "eat-base" in text


def test_extract_dataset_options_name_the_flag(tmp_path):
    text = refused(["extract", "--dataset", "synthetic", "--data-dir", str(tmp_path / "syn"), "--dataset-arg", "kind=multi",
                    "--encoder", "toy-vit", "--bank", str(tmp_path / "bank")])
    assert "--dataset-arg" in text and "'multilabel' or 'singlelabel'" in text
    assert not (tmp_path / "syn").exists()


def test_train_options_are_checked_before_the_bank_is_read(tmp_path):
    base = ["train", "--bank", str(tmp_path / "no-bank"), "--out", str(tmp_path / "run")]
    text = refused([*base, "--probe", "protobin", "--probe-arg", "bogus=1"])
    assert "--probe-arg" in text and "'bogus'" in text and "dropout" in text and "prototypes_per_class (--prototypes-per-class)" in text
    text = refused([*base, "--probe", "protobin", "--probe-arg", "dropout=high"])
    assert "--probe-arg" in text and "dropout as float" in text
    text = refused([*base, "--probe", "linear", "--prototypes-per-class", "3"])
    assert "--prototypes-per-class" in text and "probe 'linear'" in text
    text = refused([*base, "--probe", "linear", "--weight-decay", "-1"])
    assert "--weight-decay" in text and ">= 0" in text
    text = refused([*base, "--probe", "linear", "--device", "gpu"])
    assert "device 'gpu'" in text and "cpu, cuda or cuda:N" in text


def test_sweep_options_are_checked_before_the_search_starts(tmp_path):
    base = ["sweep", "--bank", str(tmp_path / "no-bank"), "--probe", "linear", "--out", str(tmp_path / "sweep")]
    text = refused([*base, "--lr-range", "1e-3,high"])
    assert "--lr-range" in text and "LOW,HIGH" in text
    text = refused([*base, "--probe-arg", "bogus=1"])
    assert "--probe-arg" in text and "use_global" in text
    text = refused([*base, "--device", "gpu"])
    assert "device 'gpu'" in text
    assert not (tmp_path / "sweep").exists()


def test_predict_window_and_output_options(tmp_path):
    base = ["predict", str(tmp_path / "no-run"), str(tmp_path), "--out", str(tmp_path / "p.csv")]
    text = refused([*base, "--hop", "0"])
    assert "--hop" in text and "> 0" in text
    text = refused([*base, "--window", "-2"])
    assert "--window" in text
    text = refused([*base, "--timeline", str(tmp_path / "t.xlsx")])
    assert "--timeline" in text and ".csv or .json" in text
    text = refused([*base, "--plot-file", "a.wav"])
    assert "--plot-file" in text and "--plot" in text


def test_demo_and_probes_options(tmp_path):
    text = refused(["demo", "--quick", "--out", str(tmp_path / "demo"), "--kinds", "multi"])
    assert "--kinds" in text and "multilabel, singlelabel or both" in text
    text = refused(["demo", "--quick", "--out", str(tmp_path / "demo"), "--encoder-arg", "bogus=1"])
    assert "--encoder-arg" in text and "'bogus'" in text
    text = refused(["demo", "--quick", "--out", str(tmp_path / "demo"), "--prototypes-per-class", "0"])
    assert "--prototypes-per-class" in text
    assert not (tmp_path / "demo").exists()
    text = refused(["probes", "--dim", "0"])
    assert "--dim" in text


@pytest.fixture
def tiny_run(tiny_dataset, tmp_path):
    bank, run = tmp_path / "bank", tmp_path / "run"
    result = runner.invoke(app, ["extract", "--manifest", str(tiny_dataset), "--encoder", "toy-vit", "--bank", str(bank), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--bank", str(bank), "--probe", "linear", "--out", str(run), "--epochs", "1", "--lr", "0.01",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    return run


def test_predict_and_export_check_encoder_options_against_the_run_encoder(tiny_run, tmp_path):
    text = refused(["predict", str(tiny_run), str(tmp_path), "--out", str(tmp_path / "p.csv"), "--encoder-arg", "bogus=1"])
    assert "--encoder-arg" in text and "encoder 'toy-vit'" in text and "width" in text
    text = refused(["export", str(tiny_run), "--format", "onnx", "--encoder-arg", "width=wide"])
    assert "--encoder-arg" in text and "width as int" in text
    # an option the run's encoder takes still passes (toy-vit's seed, the one its bank was extracted with)
    audio = tmp_path / "new"
    audio.mkdir()
    sf.write(audio / "clip.wav", 0.1 * np.random.default_rng(0).standard_normal(24000).astype(np.float32), 16000)
    result = runner.invoke(app, ["predict", str(tiny_run), str(audio), "--out", str(tmp_path / "p.json"), "--encoder-arg", "seed=0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())


def test_plot_split_and_datasets_check_sample(tmp_path):
    text = refused(["plot", str(tmp_path), "--x", "lr", "--split", "train"])
    assert "--split" in text and "valid or test" in text
    text = refused(["datasets", "check", "hsn", "--sample", "-1"])
    assert "--sample" in text
