"""The run folder as a typed store: atomic replacement, refusal to overwrite, reuse, and a lock for concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from patchprobe.bank import LoadedBank
from patchprobe.cli import app
from patchprobe.errors import RunError
from patchprobe.train import Run, TrainConfig, fit
from patchprobe.train import store as run_store

FAST = dict(probe="linear", epochs=1, batch_size=4)


@pytest.fixture
def loaded(tiny_bank):
    return LoadedBank.load(tiny_bank)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_run_is_typed_and_rebuilds_its_probe(loaded, tmp_path):
    config = TrainConfig(**FAST, lr=1e-2)
    result = fit(loaded, [config], [tmp_path / "runs" / "run"], progress=False)[0]
    run = Run(tmp_path / "runs" / "run")
    assert run.finished and run.config == config and run.matches(config, loaded.identity)
    assert not run.matches(config.model_copy(update={"lr": 2e-2}))
    assert run.bank.encoder == "toy-vit" and run.bank.same_data(loaded.identity)
    assert run.metrics.num_parameters == result.probe.num_parameters() and set(run.metrics.splits) == {"valid", "test"}
    assert run.metrics.score("test", "map") == result.metrics["test"]["map"]
    assert [r.root for r in Run.find(tmp_path / "runs")] == [tmp_path / "runs" / "run"]
    probe = run.probe()
    for key, value in result.probe.state_dict().items():
        assert (probe.state_dict()[key] == value.cpu()).all()
    assert not any(p.name.startswith(".") for p in (tmp_path / "runs").iterdir())  # no staging folder or lock left behind


def test_identical_run_is_reused_and_different_one_refused_unless_overwrite(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    config = TrainConfig(**FAST, lr=1e-2)
    fit(loaded, [config], [out], progress=False)
    before = snapshot(out)
    again = fit(loaded, [config], [out], progress=False)[0]
    assert again.reused and snapshot(out) == before
    other = config.model_copy(update={"lr": 3e-2})
    with pytest.raises(RunError, match=f"{out}: holds a finished run of another setting.*--overwrite"):
        fit(loaded, [other], [out], progress=False)
    assert snapshot(out) == before
    replaced = fit(loaded, [other], [out], progress=False, overwrite=True)[0]
    assert not replaced.reused and Run(out).config.lr == 3e-2


def test_a_folder_that_is_not_a_run_is_never_replaced(loaded, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty and not a run folder"):
        fit(loaded, [TrainConfig(**FAST)], [tmp_path / "data"], progress=False, overwrite=True)
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"


def test_a_crash_while_saving_leaves_the_old_run_whole(loaded, tmp_path, monkeypatch):
    out = tmp_path / "runs" / "run"
    fit(loaded, [TrainConfig(**FAST, lr=1e-2)], [out], progress=False)
    before = snapshot(out)

    def crash(state, path):  # the weights are written first: config and metrics would follow
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_store, "_save_weights", crash)
    with pytest.raises(OSError, match="No space left"):
        fit(loaded, [TrainConfig(**FAST, lr=3e-2)], [out], progress=False, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]  # staging folder and lock removed


KILLED_MID_SAVE = textwrap.dedent("""
    import os, sys
    from patchprobe.train import TrainConfig, fit
    from patchprobe.train import store

    real = store._write_files
    def die_after_writing(folder, result, bank):  # every file is in the staging folder, nothing renamed yet
        real(folder, result, bank)
        os._exit(9)
    store._write_files = die_after_writing
    fit(sys.argv[1], [TrainConfig(probe="linear", epochs=1, batch_size=4, lr=3e-2)], [sys.argv[2]], progress=False, overwrite=True)
""")


def test_a_process_killed_mid_save_leaves_the_old_run_and_the_next_write_cleans_up(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    fit(loaded, [TrainConfig(**FAST, lr=1e-2)], [out], progress=False)
    before = snapshot(out)
    done = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(loaded.root), str(out)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert snapshot(out) == before and Run(out).config.lr == 1e-2
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "run"]
    assert any(".tmp-" in name for name in leftovers) and ".run.lock" in leftovers  # what a hard crash leaves
    fit(loaded, [TrainConfig(**FAST, lr=3e-2)], [out], progress=False, overwrite=True)  # stale lock taken over
    assert Run(out).config.lr == 3e-2 and sorted(p.name for p in out.parent.iterdir()) == ["run"]


HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from patchprobe.train import Run

    lock = Run.lock(sys.argv[1])
    assert lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_process_cannot_write_the_same_run(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"{out}: another process is writing this run.*pid {holder.pid}"):
            fit(loaded, [TrainConfig(**FAST)], [out], progress=False)
        result = CliRunner().invoke(app, ["train", "--bank", str(loaded.root), "--probe", "linear", "--out", str(out),
                                          "--epochs", "1", "--quiet"])
        assert result.exit_code == 2 and "another process is writing this run" in result.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    fit(loaded, [TrainConfig(**FAST)], [out], progress=False)  # the dead holder's lock is stale now
    assert Run(out).finished


HOLD_A_LOCK_BRIEFLY = textwrap.dedent("""
    import json, os, socket, sys, time
    # the lock file format (O_EXCL create, holder as JSON), written without importing patchprobe
    fd = os.open(sys.argv[1], os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode())
    os.close(fd)
    print("locked", flush=True)
    time.sleep(2)
    os.remove(sys.argv[1])
""")


def test_a_writer_may_wait_for_another_to_finish(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_A_LOCK_BRIEFLY, str(Run.lock(out).path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fit(loaded, [TrainConfig(**FAST)], [out], progress=False, wait_seconds=60)
        assert holder.wait(timeout=30) == 0 and Run(out).finished
    finally:
        holder.kill()
        holder.wait()


def test_cli_train_refuses_a_different_run_and_overwrites_when_asked(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    runner = CliRunner()
    base = ["train", "--bank", str(loaded.root), "--probe", "linear", "--out", str(out), "--epochs", "1", "--quiet"]
    assert runner.invoke(app, base + ["--lr", "0.01"]).exit_code == 0
    again = runner.invoke(app, base + ["--lr", "0.01"])
    assert again.exit_code == 0 and "kept it" in again.output
    refused = runner.invoke(app, base + ["--lr", "0.02"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output and "Traceback" not in refused.output
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.01
    assert runner.invoke(app, base + ["--lr", "0.02", "--overwrite"]).exit_code == 0
    assert Run(out).config.lr == 0.02


def test_damaged_run_files_give_a_clear_error(loaded, tmp_path):
    out = tmp_path / "runs" / "run"
    fit(loaded, [TrainConfig(**FAST)], [out], progress=False)
    (out / "config.json").write_text("{not json")
    with pytest.raises(RunError, match=f"{out / 'config.json'}: unreadable"):
        Run(out).config
    result = CliRunner().invoke(app, ["analyze", str(out)])
    assert result.exit_code == 2 and "unreadable" in result.output and "Traceback" not in result.output
    with pytest.raises(RunError, match="holds a damaged run.*--overwrite"):
        fit(loaded, [TrainConfig(**FAST)], [out], progress=False)
    os.remove(out / "probe.safetensors")  # an older version's interrupted save: metrics beside missing weights
    result = CliRunner().invoke(app, ["export", str(out)])
    assert result.exit_code == 2 and "not a finished run folder (missing probe.safetensors)" in result.output
    fit(loaded, [TrainConfig(**FAST)], [out], progress=False, overwrite=True)
    assert Run(out).probe() is not None
