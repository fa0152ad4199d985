"""Speech Commands v0.02 from its official release, with the customary 12-class protocol.

The hub repository `google/speech_commands` is a loading script only (refused by `datasets` >= 4);
the data is two tarballs from download.tensorflow.org:

    speech_commands_v0.02.tar.gz (2.43 GB)            <word>/<speaker>_nohash_<n>.wav for 35 words,
                                                      validation_list.txt, testing_list.txt,
                                                      _background_noise_/*.wav (6 long noise files)
    speech_commands_test_set_v0.02.tar.gz (113 MB)    <word>/ for the 10 commands, _unknown_/,
                                                      _silence_/ (1 s clips): the canonical 12-class test

Splits (as the `datasets` and TFDS loaders build them): train = every word clip in neither list,
valid = validation_list.txt, test = the test tarball. Classes: the 10 commands, `_unknown_` (the 25
other words) and `_silence_`. For train/valid, `_silence_` clips are 1 s windows of the noise files
(TFDS: hop 0.5 s); `running_tap.wav` goes to valid, the other five to train, as both loaders do.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import soundfile as sf

from .._io import write_json
from ..errors import DatasetError
from .hf import Built, ClipRecord

COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
UNKNOWN, SILENCE, NOISE = "_unknown_", "_silence_", "_background_noise_"
RELEASE = "speech_commands_v0.02"
TEST_RELEASE = "speech_commands_test_set_v0.02"
VALID_NOISE = "running_tap.wav"
DOWNLOAD = (f"`curl -LO http://download.tensorflow.org/data/{RELEASE}.tar.gz` (2.43 GB) and "
            f"`curl -LO http://download.tensorflow.org/data/{TEST_RELEASE}.tar.gz` (113 MB) into DIR "
            "(unpacked on first use, or unpack them yourself into DIR/speech_commands_v0.02/ and "
            "DIR/speech_commands_test_set_v0.02/), then pass --data-dir DIR")


def _unpacked(root: Path, name: str, is_release) -> Path | None:
    """The folder holding release `name` under `root` (or `root` itself), unpacking `root/<name>.tar.gz` once."""
    for candidate in (root, root / name, root.parent / name):
        if candidate.is_dir() and is_release(candidate):
            return candidate
    archive = root / f"{name}.tar.gz"
    if not archive.exists():
        return None
    target = root / name
    marker = target / ".unpacked.json"
    if not marker.exists():
        print(f"unpacking {archive} into {target}", flush=True)
        try:
            with tarfile.open(archive) as handle:
                handle.extractall(target, filter="data")  # "data": no absolute paths, links or escapes
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"{archive}: cannot unpack ({type(exc).__name__}: {exc}); it is probably incomplete: "
                               f"fetch it again ({DOWNLOAD})") from exc
        write_json(marker, {"archive": archive.name})
    return target


def _is_release(folder: Path) -> bool:
    return (folder / "validation_list.txt").exists() and (folder / "testing_list.txt").exists()


def _is_test_release(folder: Path) -> bool:
    return (folder / SILENCE).is_dir() and (folder / UNKNOWN).is_dir()


def _class_of(word: str) -> str:
    return word if word in COMMANDS else SILENCE if word == SILENCE else UNKNOWN


def _listed(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _noise_windows(path: Path, split: str, window: float, hop: float) -> list[ClipRecord]:
    seconds = sf.info(str(path)).duration
    count = int((seconds - window) // hop) + 1 if seconds >= window else 0
    return [ClipRecord(f"{split}/{NOISE}/{path.name}@{i * hop:g}", split, split, 0, (SILENCE,), i * hop, i * hop + window, str(path))
            for i in range(count)]


def build_speech_commands(key: str, data_dir, options: dict) -> Built:
    """The 12-class protocol over the official release. Options: silence_window_s, silence_hop_s, test_dir."""
    if data_dir is None:
        raise DatasetError(f"{key}: Speech Commands is not on the hub in a form `datasets` >= 4 reads (its repository "
                           f"is a loading script). Fetch the official release: {DOWNLOAD}")
    root = Path(data_dir)
    if not root.exists():
        raise DatasetError(f"{key}: --data-dir {root} does not exist. {DOWNLOAD}")
    release = _unpacked(root, RELEASE, _is_release)
    if release is None:
        raise DatasetError(f"{key}: no validation_list.txt/testing_list.txt in {root}, {root / RELEASE} or a "
                           f"{RELEASE}.tar.gz there. {DOWNLOAD}")
    test_root = Path(options["test_dir"]) if options["test_dir"] else root
    test_release = _unpacked(test_root, TEST_RELEASE, _is_test_release)
    if test_release is None:
        raise DatasetError(f"{key}: the test set (folders _silence_/ and _unknown_/) is not in {test_root / TEST_RELEASE} "
                           f"nor a {TEST_RELEASE}.tar.gz there; pass --dataset-arg test_dir=DIR where it lies. {DOWNLOAD}")
    window, hop = float(options["silence_window_s"]), float(options["silence_hop_s"])
    if window <= 0 or hop <= 0:
        raise DatasetError(f"{key}: silence_window_s and silence_hop_s must be > 0 (got {window}, {hop})")
    valid = set(_listed(release / "validation_list.txt"))
    test_listed = set(_listed(release / "testing_list.txt"))
    records, rows = [], {"train": 0, "validation": 0, "test": 0}
    for path in sorted(release.glob("*/*.wav")):
        word = path.parent.name
        if word == NOISE:
            split = "valid" if path.name == VALID_NOISE else "train"
            records += _noise_windows(path, split, window, hop)
            rows["validation" if split == "valid" else "train"] += 1
            continue
        relative = f"{word}/{path.name}"
        if relative in test_listed:
            continue
        split = "valid" if relative in valid else "train"
        rows["validation" if split == "valid" else "train"] += 1
        records.append(ClipRecord(f"{split}/{relative}", split, split, 0, (_class_of(word),), path=str(path)))
    for path in sorted(test_release.glob("*/*.wav")):
        records.append(ClipRecord(f"test/{path.parent.name}/{path.name}", "test", "test", 0, (_class_of(path.parent.name),),
                                  path=str(path)))
        rows["test"] += 1
    return Built(COMMANDS + [UNKNOWN, SILENCE], records, root=root, source_rows=rows,
                 extra={"release": str(release), "test_release": str(test_release)})
