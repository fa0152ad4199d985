"""Training options out of range are refused before any work, naming the flag and the allowed range (issue 13).

The constraints live on TrainConfig (so the Python API, sweeps and grids refuse them too); the CLI must name
the flag, not only the config field.
"""

import math
import re

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from patchprobe.cli import app
from patchprobe.train import TrainConfig

BAD = [
    ("batch_size", 0), ("batch_size", -1),
    ("epochs", 0), ("epochs", -3),
    ("lr", 0.0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf),
]


@pytest.mark.parametrize("field,value", BAD)
def test_train_config_refuses_out_of_range_values(field, value):
    with pytest.raises(ValidationError) as info:
        TrainConfig(**{field: value})
    assert [error["loc"] for error in info.value.errors()] == [(field,)]


def test_train_config_accepts_the_smallest_valid_values():
    config = TrainConfig(batch_size=1, epochs=1, lr=1e-9)
    assert (config.batch_size, config.epochs, config.lr) == (1, 1, 1e-9)


# the range as typer/click (x>=1, x>0), pydantic (greater than or equal to 1) or a hand-written message states it
AT_LEAST_1 = r"x>=1|>= ?1\b|at least 1\b|greater than or equal to 1\b|greater than 0\b|> ?0\b|positive"
RANGE = {"--batch-size": AT_LEAST_1, "--epochs": AT_LEAST_1, "--lr": r"x>0|> ?0\b|greater than 0\b|positive"}


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--batch-size", "-1"), ("--epochs", "0"), ("--lr", "0"), ("--lr", "-0.001")])
def test_cli_train_refuses_before_any_work_naming_flag_and_range(tmp_path, flag, value):
    out = tmp_path / "run"
    # the bank does not exist: an answer about the bank would mean the option was not checked first
    result = CliRunner().invoke(app, ["train", "--bank", str(tmp_path / "no-bank"), "--probe", "linear", "--out", str(out), flag, value])
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert "Traceback" not in flat and flag in flat and re.search(RANGE[flag], flat), result.output
    assert "bank" not in flat.replace("--bank", ""), result.output
    assert not out.exists()


def test_synthetic_dataset_options_are_checked_before_any_work(tmp_path):
    """Unknown --dataset-arg keys of the synthetic generator were silently ignored (n_train=40 made 1,000 clips)."""
    from typer.testing import CliRunner

    from patchprobe.cli import app

    runner = CliRunner()
    base = ["extract", "--dataset", "synthetic", "--encoder", "toy-vit", "--bank", str(tmp_path / "bank")]
    result = runner.invoke(app, base, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "--data-dir DIR" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, [*base, "--data-dir", str(tmp_path / "data"), "--dataset-arg", "n_train=40"], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "unknown option(s) ['n_train']" in result.output and "sizes" in result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "bank").exists()
