"""The benchmark datasets, read offline from small copies in their real layouts (tests/hub_fixtures.py names
the source of each layout), through extraction and training; fetch hints; `patchprobe datasets check`."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("datasets")

from patchprobe.bank import Bank  # noqa: E402
from patchprobe.cli import app  # noqa: E402
from patchprobe.datasets import SPECS, MixupAugmented, MixupConfig, check_dataset, create_dataset  # noqa: E402
from patchprobe.errors import DatasetError  # noqa: E402

from . import hub_fixtures  # noqa: E402

runner = CliRunner()
TOY = ["--encoder", "toy-vit", "--encoder-arg", "width=32", "--encoder-arg", "depth=1", "--encoder-arg", "heads=2", "--quiet"]
BIRDSET_KEYS = {"hsn": "HSN", "pow": "POW", "per": "PER", "nes": "NES", "sne": "SNE", "uhh": "UHH", "nbp": "NBP"}


@pytest.fixture
def no_scripts_no_hub(monkeypatch):
    """Readers must not fall back to `datasets.load_dataset` on a hub repository (a loading script, or the
    guessed layout): any such call fails the test."""
    import datasets

    real = datasets.load_dataset

    def guarded(path, *args, **kwargs):
        if path != "parquet":
            raise AssertionError(f"load_dataset({path!r}) called: the reader went back to the hub repository/script")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", guarded)


def test_every_paper_dataset_is_listed_with_its_protocol():
    assert set(SPECS) == {"as20k", "fsd50k", "desed", "spass", "urban", *BIRDSET_KEYS, "esc50", "sc2"}
    result = runner.invoke(app, ["datasets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "DBD-research-group/BirdSet (HSN)" in result.output and "k=64" in result.output and "protocol=folds" in result.output
    assert "extension_time=6.0" in result.output


def test_offline_hints_fetch_exactly_what_is_needed(tmp_path):
    with pytest.raises(DatasetError) as error:
        create_dataset("hsn")
    message = str(error.value)
    assert "hf download DBD-research-group/BirdSet --repo-type dataset --revision data" in message
    assert "--include HSN/HSN_metadata_train.parquet" in message and "'HSN/HSN_test5s_shard_*.tar.gz'" in message
    assert "5.9 GB" in message and "--data-dir DIR" in message
    with pytest.raises(DatasetError) as error:
        create_dataset("as20k")
    message = str(error.value)
    assert "--include 'data/bal_train/*.parquet' --include 'data/eval/*.parquet'" in message and "unbal" not in message
    with pytest.raises(DatasetError, match=r"hf download Fhrozen/FSD50k .*--include 'labels/\*.csv'"):
        create_dataset("fsd50k")
    with pytest.raises(DatasetError, match=r"speech_commands_v0.02.tar.gz` \(2.43 GB\).*test_set_v0.02.tar.gz` \(113 MB\)"):
        create_dataset("sc2")
    with pytest.raises(DatasetError, match=r"hf download ashraq/esc50 --repo-type dataset --include 'data/train-\*.parquet'"):
        create_dataset("esc50")
    with pytest.raises(DatasetError, match="does not exist"):
        create_dataset("esc50", data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['kk'\]"):
        create_dataset("hsn", data_dir=tmp_path, kk=3)


def test_birdset_reads_its_data_branch_files(tmp_path, no_scripts_no_hub):
    root = hub_fixtures.birdset_data_branch(tmp_path)
    data = create_dataset("hsn", data_dir=root, k=0, valid_fraction=0.0)
    assert data.classes == hub_fixtures.BIRDS
    train = data.clip_ids("train")
    windows: dict[int, list] = {}
    for clip_id in train:
        windows.setdefault(data.record(clip_id).row, []).append((data.record(clip_id).start, data.record(clip_id).end))
    assert windows[4] == [(0.5, 5.5)]  # 8 s recording, lone noise event 1-2 s: region [0, 6], starts 0..1
    assert windows[5] == [(0.0, 4.0)]  # 4 s recording, only noise events: the default event, all of the file
    # bkcchi's first recording (12 s): one window per event of cluster 0 (0.5-1.5 s and 6-7 s), noise left out
    assert windows[6] == [(0.5, 5.5), (4.0, 9.0)]
    test = data.clip_ids("test")
    assert len(test) == 8 and test[0] == "test_5s/0@0-5"
    labels = data.label_matrix("test")
    assert labels.sum(axis=1).tolist() == [1, 2, 1, 2, 1, 0, 0, 2]  # segments without a bird stay in
    short = data.load(test[-1], 32000)
    assert short.waveform.shape == (int(3.4 * 32000),)  # the last segment is shorter than 5 s
    assert (root / "HSN" / "audio" / "train" / ".unpacked" / "HSN_train_shard_0002.tar.gz.json").exists()
    again = create_dataset("hsn", data_dir=root, k=3, seed=2)  # unpacked once: the shards are not read again
    assert len(again.clip_ids("train")) + len(again.clip_ids("valid")) == 9


def test_birdset_from_the_hf_cache_of_the_data_branch(tmp_path, offline_hub, no_scripts_no_hub):
    files = hub_fixtures.birdset_data_branch(tmp_path / "files", config="UHH")
    hub_fixtures.put_in_dataset_cache(offline_hub, "DBD-research-group/BirdSet", "data", files, "1" * 40)
    data = create_dataset("uhh", k=2)
    assert len(data.clip_ids("test")) == 8
    assert data.load(data.clip_ids("train")[0], 16000).sample_rate == 16000


def test_birdset_from_a_save_to_disk_copy_matches_the_data_branch(tmp_path):
    saved = create_dataset("hsn", data_dir=hub_fixtures.birdset_saved_copy(tmp_path / "saved", recordings_per_class=6), k=3)
    files = create_dataset("hsn", data_dir=hub_fixtures.birdset_data_branch(tmp_path / "files"), k=3)
    assert saved.classes == files.classes
    for split in ("train", "valid", "test"):
        assert saved.clip_ids(split) == files.clip_ids(split)
        np.testing.assert_array_equal(saved.label_matrix(split), files.label_matrix(split))


def test_birdset_kshot_bank_trains_and_reports_birdset_metrics(tmp_path):
    data = hub_fixtures.birdset_data_branch(tmp_path)
    bank, run = tmp_path / "bank", tmp_path / "run"
    result = runner.invoke(app, ["extract", "--dataset", "hsn", "--data-dir", str(data), "--dataset-arg", "k=3",
                                 "--dataset-arg", "valid_fraction=0.2", "--dataset-arg", "extension_time=8",
                                 "--augment-variants", "2", "--bank", str(bank), *TOY])
    assert result.exit_code == 0, result.output
    info = json.loads((bank / "bank.json").read_text())
    source = info["source"]
    assert source["dataset"] == "hsn" and source["options"]["k"] == 3 and source["options"]["extension_time"] == 8.0
    recipes = source["augmentation"]["recipes"]
    train_ids = Bank(bank).split("train").meta.clip_ids
    clean = [i for i in train_ids if "#mix" not in i]
    assert len(train_ids) == 3 * len(clean) and len(recipes) == 2 * len(clean)
    assert all(r["clip"] in clean and set(r["partners"]) <= set(clean) for r in recipes.values())
    assert Bank(bank).split("test").meta.clip_ids[:2] == ["test_5s/0@0-5", "test_5s/1@0-5"]
    result = runner.invoke(app, ["train", "--bank", str(bank), "--probe", "protobin", "--out", str(run), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert {"map", "cmap5", "auroc", "t1acc", "t1acc_clips"} <= set(test)
    assert test["t1acc_clips"] == 6  # 8 test segments, 2 without any bird


@pytest.mark.parametrize("key", sorted(BIRDSET_KEYS))
def test_every_birdset_config_extracts_and_trains(tmp_path, key):
    from patchprobe.bank import extract_bank
    from patchprobe.encoders import create_encoder
    from patchprobe.train import TrainConfig, fit

    data = create_dataset(key, data_dir=hub_fixtures.birdset_data_branch(tmp_path, BIRDSET_KEYS[key], recordings_per_class=3), k=1)
    extract_bank(data, create_encoder("toy-vit", width=16, depth=1, heads=2), tmp_path / "bank", progress=False)
    result = fit(tmp_path / "bank", [TrainConfig(probe="linear", epochs=1, lr=0.01)], [tmp_path / "run"], progress=False)[0]
    assert {"map", "t1acc"} <= set(result.metrics["test"])


def test_mixup_variants_follow_their_recipe(tmp_path):
    base = create_dataset("hsn", data_dir=hub_fixtures.birdset_data_branch(tmp_path), k=2, valid_fraction=0.0)
    mixed = MixupAugmented(base, MixupConfig(variants=3, p=1.0, seed=4))
    variant = next(i for i in mixed.clip_ids("train") if i.endswith("#mix0"))
    recipe = mixed.recipe(variant)
    assert 1 <= len(recipe["partners"]) <= 3 and all(2 <= s <= 30 for s in recipe["snr_db"])
    union = np.max([base.labels_of(c) for c in [recipe["clip"], *recipe["partners"]]], axis=0)
    np.testing.assert_array_equal(mixed.labels_of(variant), union)
    clean, mix = base.load(recipe["clip"], 16000).waveform, mixed.load(variant, 16000).waveform
    added = mix - clean
    expected_power = sum(np.mean(clean**2) / 10 ** (s / 10) for s in recipe["snr_db"])
    assert added.shape == clean.shape and 0.3 * expected_power < np.mean(added**2) < 3 * expected_power
    again = MixupAugmented(base, MixupConfig(variants=3, p=1.0, seed=4))
    assert again.recipe(variant) == recipe  # regenerated from (seed, position, variant)
    with pytest.raises(DatasetError, match="multi-label"):
        MixupAugmented(create_dataset("esc50", data_dir=hub_fixtures.esc50(tmp_path)))


@pytest.mark.parametrize("maker,key,classes,sizes", [
    (hub_fixtures.esc50, "esc50", ["dog", "rain", "crying_baby", "door_wood_knock"], {"train": 12, "valid": 4, "test": 4}),
    (hub_fixtures.audioset, "as20k", ["/m/04rlf", "/m/05zppz", "/m/09x0r", "/m/0jbk"], {"train": 18, "valid": 2, "test": 8}),
    (hub_fixtures.fsd50k, "fsd50k", hub_fixtures.FSD50K_VOCABULARY, {"train": 10, "valid": 4, "test": 5}),
    (lambda root: hub_fixtures.fsd50k(root, "zenodo"), "fsd50k", hub_fixtures.FSD50K_VOCABULARY, {"train": 10, "valid": 4, "test": 5}),
    (hub_fixtures.urban_sed, "urban", ["car_horn", "dog_bark", "siren"], {"train": 8, "valid": 3, "test": 4}),
])
def test_clip_level_sources_map_to_a_fixed_class_list(tmp_path, maker, key, classes, sizes, no_scripts_no_hub):
    data = create_dataset(key, data_dir=maker(tmp_path))
    assert data.classes == classes
    assert {split: len(data.clip_ids(split)) for split in sizes} == sizes
    clip = data.load(data.clip_ids("test")[0], 16000)
    assert clip.sample_rate == 16000 and clip.waveform.ndim == 1 and clip.labels.sum() >= 1


def test_audioset_reads_only_the_balanced_folders_and_drops_by_video_id(tmp_path):
    root = hub_fixtures.audioset(tmp_path)
    data = create_dataset("as20k", data_dir=root, valid_fraction=0.0, drop_ids="ba00003-x,ev00001-x")
    assert "/m/unbalanced" not in data.classes  # data/unbal_train is never read
    assert len(data.clip_ids("train")) == 19 and len(data.clip_ids("test")) == 7
    assert "train/ba00003-x" not in data.clip_ids("train") and data.source()["dropped_ids"] == ["ba00003-x", "ev00001-x"]


def test_fsd50k_reads_its_csvs_and_refuses_the_guessed_parquet_layout(tmp_path):
    data = create_dataset("fsd50k", data_dir=hub_fixtures.fsd50k(tmp_path))
    assert data.labels_of("dev/64760").tolist() == [1, 1, 1, 0, 0]  # "Bark,Dog,Animal" in the vocabulary's order
    assert data.clip_ids("valid")[0] == "dev/64830"  # dev.csv rows with split=val
    dev = create_dataset("fsd50k", data_dir=hub_fixtures.fsd50k(tmp_path / "again"), train_split="dev", valid_fraction=0.25)
    assert len(dev.clip_ids("train")) + len(dev.clip_ids("valid")) == 14 and len(dev.clip_ids("valid")) == 4
    guessed = tmp_path / "guessed"
    (guessed / "data").mkdir(parents=True)
    (guessed / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match="neither the hub layout.*nor the Zenodo layout"):
        create_dataset("fsd50k", data_dir=guessed)


def test_esc50_protocols(tmp_path):
    root = hub_fixtures.esc50(tmp_path)
    folds = create_dataset("esc50", data_dir=root)
    assert all(i.startswith("5-") for i in folds.clip_ids("test")) and all(i.startswith("4-") for i in folds.clip_ids("valid"))
    random_split = create_dataset("esc50", data_dir=root, protocol="random", valid_fraction=0.0)
    # Bird-MAE's split: datasets' train_test_split(test_size=0.2, shuffle=True, seed=42) on the same rows
    import datasets

    rows = datasets.Dataset.from_dict({"row": list(range(20))}).train_test_split(test_size=0.2, shuffle=True, seed=42)
    ids = [data_id for data_id in folds.clip_ids("train") + folds.clip_ids("valid") + folds.clip_ids("test")]
    ordered = sorted(ids, key=lambda i: folds.record(i).row)
    assert random_split.clip_ids("test") == [ordered[r] for r in sorted(rows["test"]["row"])]
    with pytest.raises(DatasetError, match="protocol 'nope' unknown"):
        create_dataset("esc50", data_dir=root, protocol="nope")


@pytest.mark.parametrize("packed", [True, False])
def test_speech_commands_twelve_classes_from_the_official_release(tmp_path, packed, no_scripts_no_hub):
    data = create_dataset("sc2", data_dir=hub_fixtures.speech_commands(tmp_path, packed=packed))
    assert data.classes[-2:] == ["_unknown_", "_silence_"] and len(data.classes) == 12
    silence = [i for i in data.clip_ids("train") if data.labels_of(i)[11]]
    # doing_the_dishes (3.2 s) and white_noise (4.2 s): 1 s windows, hop 0.5 s; running_tap goes to valid
    assert len(silence) == 5 + 7 and silence[0] == "train/_background_noise_/doing_the_dishes.wav@0"
    assert all("running_tap" in i for i in data.clip_ids("valid") if data.labels_of(i)[11])
    assert data.load(silence[1], 16000).waveform.shape == (16000,)
    assert "train/yes/03c540988_nohash_0.wav" not in data.clip_ids("train")  # in testing_list.txt
    assert "valid/yes/02c540988_nohash_0.wav" in data.clip_ids("valid")
    assert data.labels_of("train/marvin/00c540988_nohash_0.wav")[10] == 1  # a non-command word is _unknown_
    unknown = [i for i in data.clip_ids("test") if data.labels_of(i)[10]]
    assert unknown == ["test/_unknown_/backward_0c540988_nohash_0.wav", "test/_unknown_/bed_1c540988_nohash_0.wav"]
    assert data.labels_of("test/_silence_/silence_0.wav")[11] == 1


def test_unverified_sources_say_which_split_or_column_they_did_not_find(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"training": Dataset.from_dict({"sound": [b"x"], "tags": ["a"]})}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DatasetError) as error:
        create_dataset("desed", data_dir=tmp_path / "odd")
    assert "no train split" in str(error.value) and "training (1 rows; sound: binary, tags: string)" in str(error.value)


def test_esc50_extracts_and_trains_end_to_end(tmp_path):
    bank, run = tmp_path / "bank", tmp_path / "run"
    result = runner.invoke(app, ["extract", "--dataset", "esc50", "--data-dir", str(hub_fixtures.esc50(tmp_path)), "--bank", str(bank), *TOY])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--bank", str(bank), "--probe", "mhca", "--out", str(run), "--epochs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((run / "metrics.json").read_text())["test"]) >= {"accuracy", "map"}
    result = runner.invoke(app, ["analyze", str(run)])  # reopens the dataset from bank.json for spectrograms
    assert result.exit_code == 0, result.output
    assert "from esc50" in result.output


@pytest.mark.parametrize("maker,key", [(hub_fixtures.audioset, "as20k"), (hub_fixtures.fsd50k, "fsd50k"),
                                       (hub_fixtures.speech_commands, "sc2"), (hub_fixtures.urban_sed, "urban"),
                                       (lambda root: hub_fixtures.urban_sed(root, "desed"), "desed"),
                                       (lambda root: hub_fixtures.urban_sed(root, "spass"), "spass")])
def test_other_sources_extract_and_train(tmp_path, maker, key):
    from patchprobe.bank import extract_bank
    from patchprobe.encoders import create_encoder
    from patchprobe.train import TrainConfig, fit

    data = create_dataset(key, data_dir=maker(tmp_path))
    encoder = create_encoder("toy-vit", width=32, depth=1, heads=2)
    extract_bank(data, encoder, tmp_path / "bank", progress=False)
    result = fit(tmp_path / "bank", [TrainConfig(probe="linear", epochs=2, lr=0.01)], [tmp_path / "run"], progress=False)[0]
    assert set(data.metrics) <= set(result.metrics["test"]) and len(Bank(tmp_path / "bank").split("test")) == len(data.clip_ids("test"))


def test_check_compares_a_copy_with_the_published_counts(tmp_path):
    root = hub_fixtures.speech_commands(tmp_path)
    report = check_dataset("sc2", data_dir=root, sample=0)
    assert [(s.split, s.found, s.expected) for s in report.source] == [("train", 14, 84848), ("validation", 7, 9982), ("test", 6, 4890)]
    assert report.classes == 12 == report.expected_classes and report.sample_rates == {16000: 45} and not report.ok
    (root / "speech_commands_v0.02" / "go" / "00c540988_nohash_0.wav").write_bytes(b"RIFF broken")
    report = check_dataset("sc2", data_dir=root, sample=0)
    assert report.unreadable and report.unreadable[0].startswith("train/go/00c540988_nohash_0.wav")
    fsd = hub_fixtures.fsd50k(tmp_path)
    (fsd / "clips" / "eval" / "37199.wav").unlink()
    assert [m.split(":")[0] for m in check_dataset("fsd50k", data_dir=fsd, sample=0).missing] == ["eval/37199"]
    result = runner.invoke(app, ["datasets", "check", "fsd50k", "--data-dir", str(fsd)], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # 14 dev rows are not FSD50K's 40,966
    assert "36796" in result.output.replace(",", "") and "44100" in result.output.replace(",", "")


def test_audio_stamps_follow_the_audio(tmp_path):
    """A bank notices changed audio through `audio_stamp`: equal on reopening, different once a file or table changes."""
    fsd = hub_fixtures.fsd50k(tmp_path)
    first = create_dataset("fsd50k", data_dir=fsd).audio_stamp("eval/37199")
    assert first == create_dataset("fsd50k", data_dir=fsd).audio_stamp("eval/37199")
    hub_fixtures.sf.write(fsd / "clips" / "eval" / "37199.wav", hub_fixtures.tone(0.8, 44100, 999.0), 44100, subtype="PCM_16")
    assert create_dataset("fsd50k", data_dir=fsd).audio_stamp("eval/37199") != first
    audioset = hub_fixtures.audioset(tmp_path)
    before = create_dataset("as20k", data_dir=audioset)
    clip = before.clip_ids("test")[0]
    stamp = before.audio_stamp(clip)
    assert stamp == create_dataset("as20k", data_dir=audioset).audio_stamp(clip)
    shard = audioset / "data" / "eval" / "00.parquet"
    import datasets

    table = datasets.Dataset.from_parquet(str(shard))
    table.select(range(1, len(table))).to_parquet(str(tmp_path / "shorter.parquet"))
    (tmp_path / "shorter.parquet").replace(shard)
    after = create_dataset("as20k", data_dir=audioset)
    assert after.audio_stamp(after.clip_ids("test")[0]) != stamp


def test_a_truncated_wav_row_is_reported_not_shortened(tmp_path):
    """A hub row whose WAV bytes stop before the length its header declares is an AudioError at validation."""
    from patchprobe.datasets import validate_dataset

    root = hub_fixtures.esc50(tmp_path)
    import datasets

    shard = next((root / "data").glob("train-00000-*.parquet"))
    table = datasets.Dataset.from_parquet(str(shard))

    def cut(row, index):
        if index == 0:
            row["audio"] = {"bytes": row["audio"]["bytes"][: len(row["audio"]["bytes"]) // 2], "path": row["audio"]["path"]}
        return row

    table = table.cast_column("audio", datasets.Audio(decode=False)).map(cut, with_indices=True)
    table.to_parquet(str(tmp_path / "cut.parquet"))
    (tmp_path / "cut.parquet").replace(shard)
    report = validate_dataset(create_dataset("esc50", data_dir=root))
    problems = {item: detail for found in report.problems.values() for item, detail in found.items()}
    assert list(problems) == ["1-1000-A-0.wav"] and "declares" in problems["1-1000-A-0.wav"]


def test_mixup_variants_and_filtered_datasets_pass_audio_stamps_on(tmp_path):
    from patchprobe.datasets.validate import FilteredDataset

    base = create_dataset("hsn", data_dir=hub_fixtures.birdset_data_branch(tmp_path), k=2, valid_fraction=0.0)
    mixed = MixupAugmented(base, MixupConfig(variants=1, p=1.0, seed=4))
    variant = next(i for i in mixed.clip_ids("train") if i.endswith("#mix0"))
    recipe = mixed.recipe(variant)
    assert mixed.audio_stamp(recipe["clip"]) == base.audio_stamp(recipe["clip"])
    before = mixed.audio_stamp(variant)
    assert before.startswith("mix:") and before == MixupAugmented(base, MixupConfig(variants=1, p=1.0, seed=4)).audio_stamp(variant)
    partner = Path(base.record(recipe["partners"][0]).path)
    hub_fixtures.sf.write(partner, hub_fixtures.tone(4.0, 32000, 999.0), 32000, format="OGG", subtype="VORBIS")
    assert mixed.audio_stamp(variant) != before  # a changed partner changes the variant
    kept = base.clip_ids("test")[0]
    assert FilteredDataset(base, {}).audio_stamp(kept) == base.audio_stamp(kept)
