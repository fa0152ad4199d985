"""Predictions on new recordings with a trained run: encoder rebuilt from the run, windows, scores, decisions.

A run folder knows its encoder: `config.json` records the bank's identity (encoder name and the hash of
its settings) and the bank's split metadata holds the settings themselves. `rebuild_encoder` recreates
the encoder from them and checks that the hash matches, so predictions use exactly the tokens the probe
was trained on.

Recordings of any length are cut into windows of the encoder's natural input length (`window_s`, hop
`hop_s`; the last window is moved back to end at the recording's end, so every window is full length
and the whole recording is covered). Per window: scores per class (sigmoid for multi-label runs,
softmax for multi-class); per file: the maximum over windows. Decisions use per-class thresholds
chosen on valid at training time when the run holds them (`Run.thresholds`), else a stated fallback
(0.5 for multi-label, the top class for multi-class).

For prototype heads (`proto`, `protobin`, `protofloat`) a per-class activity curve over time shows
where in the recording the evidence is: at each time step, the best similarity over frequency and
over the class's prototypes (`class_activity`).

Large folders: `predict_files(..., resume=SIDECAR)` appends each batch's finished files to a JSON-lines
sidecar keyed by path, size and mtime; a rerun skips them.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import soundfile as sf
import torch

from ._io import atomic_write_with, write_json
from ._progress import ProgressBar
from ._version import __version__
from .audio import kaldi_fbank, load_audio, prepare_waveform
from .bank.store import read_split_meta
from .datasets.folder import AUDIO_SUFFIXES
from .encoders import ENCODERS, Encoder, create_encoder
from .errors import AudioError, PatchprobeError, RunError
from .probes import Probe, PrototypeProbe
from .train import Run

# Window length for encoders that declare no natural input length (any length works for them).
FALLBACK_WINDOW_SECONDS = 10.0
SIDECAR_FORMAT = "patchprobe-predict-partial/1"


# ---- the encoder a run was trained on ------------------------------------------------------------------------------


def encoder_config_of(run: Run) -> dict:
    """The encoder settings (`Encoder.config()`) the run's bank was extracted with; {} when they cannot be read.

    Read from the run's bank identity when it records them, else from the bank's split metadata at the
    path the run recorded (the bank may have moved or been deleted: then {}).
    """
    recorded = (run.bank.model_extra or {}).get("encoder_config")
    if isinstance(recorded, dict):
        return recorded
    bank = Path(run.bank.path)
    candidates = [bank / "train", *sorted(p for p in bank.glob("*") if p.is_dir())] if bank.is_dir() else []
    for split_dir in candidates:
        if (split_dir / "meta.json").is_file():
            try:
                return read_split_meta(split_dir).encoder_config
            except PatchprobeError:
                continue
    return {}


def rebuild_encoder(run: Run, device: str = "cpu", overrides: dict | None = None) -> Encoder:
    """Recreate the encoder whose tokens `run` was trained on, and check it is the same one.

    The factory's arguments are taken from the recorded settings where their names match (e.g. toy-vit's
    seed and width, a checkpoint encoder's layer); `overrides` (the CLI's --encoder-arg) add or replace
    some, e.g. `checkpoint=PATH` for weights that are not on the hub.

    Raises:
        RunError naming both settings hashes when the rebuilt encoder differs from the run's.
    """
    name = run.bank.encoder
    factory = ENCODERS.get(name)
    config = encoder_config_of(run)
    # nested sections (e.g. {"vit": {"width": ...}}) first, so a top-level setting of the same name wins
    flat: dict = {}
    for value in config.values():
        if isinstance(value, dict):
            flat.update(value)
    flat.update({key: value for key, value in config.items() if not isinstance(value, dict)})
    accepted = [p for p in inspect.signature(factory).parameters if p != "device"]
    arguments = {key: flat[key] for key in accepted if key in flat}
    arguments.update(overrides or {})
    encoder = create_encoder(name, device=device, **arguments)
    if encoder.config_hash() != run.bank.encoder_config_hash:
        where = "recorded settings" if config else f"defaults (the bank at {run.bank.path} is gone, so its settings are unknown)"
        raise RunError(
            f"{run.root}: the probe was trained on tokens of {name!r} with settings {run.bank.encoder_config_hash}; rebuilt from "
            f"its {where} with {arguments} it has settings {encoder.config_hash()}. Pass the arguments the bank was "
            "extracted with as --encoder-arg KEY=VALUE (e.g. checkpoint=PATH, layer=N)."
        )
    return encoder


def token_seconds(encoder: Encoder) -> float | None:
    """Seconds between consecutive time tokens for fbank-patch encoders (patch frames x frame shift); None when unknown."""
    model = getattr(encoder, "model", None)
    fbank, config = getattr(model, "fbank", None), getattr(model, "config", None)
    if fbank is None or not hasattr(config, "patch_size"):
        return None
    return config.patch_size * fbank.window_shift / fbank.sample_rate


# ---- decisions --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decisions:
    """How scores become decisions.

    Attributes:
        thresholds: (C,) per-class thresholds, or None (multi-class: the top class is the decision).
        multilabel: sigmoid scores with independent decisions, or softmax scores with one class.
        source: what the thresholds are, as printed and written in the outputs.
    """

    thresholds: np.ndarray | None
    multilabel: bool
    source: str

    @classmethod
    def from_run(cls, run: Run, classes: list[str]) -> "Decisions":
        """The run's decision thresholds (`Run.thresholds`, fitted on valid at training time), or a stated fallback
        when the run holds none (written by an older patchprobe, or diverged)."""
        multilabel = run.bank.multilabel
        try:  # Run.thresholds arrived with per-class metrics; runs (and versions) without it fall back
            saved = getattr(run, "thresholds", None)
        except RunError:
            saved = None
        if saved is not None and saved.rule == "argmax":
            return cls(None, False, "the top-scoring class (multi-class run, rule chosen at training time)")
        if saved is not None and saved.values and list(saved.classes) == list(classes):
            source = f"per-class F1-optimal thresholds chosen on {saved.chosen_on or 'valid'} at training time"
            if saved.fallback:
                source += f" (0.5 for {len(saved.fallback)} class(es) without a valid positive)"
            return cls(np.asarray(saved.values, dtype=np.float64), True, source)
        if multilabel:
            return cls(np.full(len(classes), 0.5), True, "fallback: 0.5 for every class (the run holds no thresholds chosen on valid)")
        return cls(None, False, "fallback: the top-scoring class (the run holds no thresholds chosen on valid)")

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """scores (..., C) -> bool (..., C): which classes are detected."""
        scores = np.asarray(scores)
        if self.multilabel:
            return scores >= self.thresholds
        top = scores.argmax(axis=-1)
        detected = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(detected, top[..., None], True, axis=-1)
        if self.thresholds is not None:
            detected &= scores >= self.thresholds
        return detected

    def to_json(self) -> dict:
        return {"thresholds": None if self.thresholds is None else self.thresholds.tolist(), "multilabel": self.multilabel,
                "source": self.source}


# ---- results ----------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The predictions for one recording.

    Attributes:
        source: the file path (or the name given to `Predictor.predict`).
        duration_s: length of the recording in seconds.
        sample_rate: the recording's own sample rate (Hz).
        begin_s, end_s: (W,) each window's start and end in seconds.
        window_scores: (W, C) scores per window.
        times_s: (T,) times of the activity curve (centres of time tokens), or None.
        activity: (T, C) per-class activity at those times (prototype heads only), or None.
    """

    source: str
    duration_s: float
    sample_rate: int
    begin_s: np.ndarray
    end_s: np.ndarray
    window_scores: np.ndarray
    times_s: np.ndarray | None = None
    activity: np.ndarray | None = None

    @property
    def scores(self) -> np.ndarray:
        """(C,) the file's score per class: the maximum over its windows."""
        return self.window_scores.max(axis=0)

    def to_json(self) -> dict:
        out = {"source": self.source, "duration_s": self.duration_s, "sample_rate": self.sample_rate,
               "begin_s": self.begin_s.tolist(), "end_s": self.end_s.tolist(), "window_scores": self.window_scores.tolist()}
        if self.activity is not None:
            out |= {"times_s": self.times_s.tolist(), "activity": self.activity.tolist()}
        return out

    @classmethod
    def from_json(cls, blob: dict) -> "Prediction":
        array = lambda key: None if blob.get(key) is None else np.asarray(blob[key], dtype=np.float64)  # noqa: E731
        return cls(source=blob["source"], duration_s=float(blob["duration_s"]), sample_rate=int(blob["sample_rate"]),
                   begin_s=array("begin_s"), end_s=array("end_s"), window_scores=array("window_scores"),
                   times_s=array("times_s"), activity=array("activity"))


@dataclass
class PredictionSet:
    """Predictions for many recordings, with what is needed to write them.

    Attributes:
        predictions: one per recording that decoded, in input order.
        failed: file -> why it could not be read (those files are left out, and retried by a rerun).
        classes, decisions: the run's classes and how scores become decisions.
        settings: window, hop, encoder and run, as written in the outputs.
        reused: how many recordings came from the resume sidecar.
    """

    predictions: list[Prediction]
    failed: dict[str, str]
    classes: list[str]
    decisions: Decisions
    settings: dict
    reused: int = 0


# ---- the predictor ------------------------------------------------------------------------------------------------------


def class_activity(probe: PrototypeProbe, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-class activity over time from a prototype head's token-prototype similarities.

    A class's prototypes are the J (= prototypes_per_class) with the largest positive weight on its
    logit (`class_contributions` of a unit descriptor): for `proto` its own J, for the class-agnostic
    heads the J the linear head relies on most for it. Activity at time t = the best similarity over
    frequency and over those prototypes.

    Args:
        tokens: (B, T, F, D); mask: (B, T, F).
    Returns:
        (B, T, C); -inf at padded time steps.
    """
    classes = torch.arange(probe.num_classes, device=tokens.device)
    unit = torch.ones(probe.num_classes, probe.num_prototypes, device=tokens.device)
    weights = probe.class_contributions(unit, classes)  # (C, M)
    top = weights.topk(min(probe.prototypes_per_class, probe.num_prototypes), dim=1)
    per_time = probe.similarities(tokens, mask).amax(dim=2)  # (B, T, M)
    picked = per_time[:, :, top.indices]  # (B, T, C, J)
    # a prototype that pushes the logit down is evidence against the class, not for it
    picked = picked.masked_fill(~(top.values > 0), float("-inf"))
    return picked.amax(dim=-1)


@dataclass
class _Pending:
    """A recording whose windows are being scored."""

    index: int
    source: str
    key: list | None
    duration_s: float
    sample_rate: int
    begin: list[int]
    scores: list[np.ndarray | None]
    curves: list[tuple[np.ndarray, np.ndarray] | None]
    done: int = 0


class Predictor:
    """A trained probe and its encoder, ready to score new audio.

    Build one with `Predictor.from_run(run_dir, device="cpu")`; then `predict(waveform, sample_rate)` for
    one recording in memory or `predict_files(paths)` for many (batched, resumable).

    Args:
        encoder, probe: the frozen encoder and the trained probe (eval mode), on `device`.
        classes: class names in output order.
        decisions: thresholds and task type.
        window_s, hop_s: window length and hop in seconds (default: the encoder's natural input length;
            encoders without one: `FALLBACK_WINDOW_SECONDS`; hop = window).
        batch_size: windows per encoder call.
        settings: what to record about the source (run folder) in outputs.
    """

    def __init__(self, encoder: Encoder, probe: Probe, classes: list[str], decisions: Decisions, window_s: float | None = None,
                 hop_s: float | None = None, batch_size: int = 16, device: str = "cpu", settings: dict | None = None) -> None:
        self.encoder, self.probe, self.classes, self.decisions = encoder, probe.eval(), list(classes), decisions
        self.device = torch.device(device)
        natural = encoder.clip_seconds
        self.window_note = "" if window_s or natural else f" (the encoder declares no input length; {FALLBACK_WINDOW_SECONDS:g} s used)"
        self.window_s = float(window_s or natural or FALLBACK_WINDOW_SECONDS)
        self.hop_s = float(hop_s or self.window_s)
        if not (self.window_s > 0 and 0 < self.hop_s <= self.window_s):
            raise ValueError(f"--window/--hop: need window > 0 and 0 < hop <= window (got window {self.window_s} s, hop "
                             f"{self.hop_s} s); a hop longer than the window would leave audio unscored")
        if batch_size < 1:
            raise ValueError(f"--batch-size: windows per encoder call must be at least 1; got {batch_size}")
        self.batch_size = batch_size
        self.window = max(int(round(self.window_s * encoder.sample_rate)), encoder.min_samples())
        self.hop = max(int(round(self.hop_s * encoder.sample_rate)), 1)
        self.token_seconds = token_seconds(encoder)
        self.settings = {"encoder": encoder.name, "encoder_config_hash": encoder.config_hash(), "probe": probe.name,
                         "window_s": self.window_s, "hop_s": self.hop_s, "sample_rate": encoder.sample_rate,
                         "library_version": __version__, **(settings or {})}

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu", window_s: float | None = None, hop_s: float | None = None,
                 batch_size: int = 16, encoder_args: dict | None = None) -> "Predictor":
        """Load a run folder's probe and rebuild its encoder on `device` (see `rebuild_encoder`)."""
        run = Run(run_dir)
        encoder = rebuild_encoder(run, device=device, overrides=encoder_args)
        probe = run.probe(device)
        classes = run.bank.classes
        settings = {"run": str(Path(run_dir).resolve()), "run_weights": _file_stamp(Path(run_dir) / "probe.safetensors")}
        return cls(encoder, probe, classes, Decisions.from_run(run, classes), window_s=window_s, hop_s=hop_s,
                   batch_size=batch_size, device=device, settings=settings)

    @property
    def has_timeline(self) -> bool:
        """True for prototype heads, whose similarities give a per-class activity curve."""
        return isinstance(self.probe, PrototypeProbe)

    def window_starts(self, num_samples: int) -> list[int]:
        """Start samples of the windows of a recording: every hop, the last moved back to end at the recording's end."""
        if num_samples <= self.window:
            return [0]
        starts = list(range(0, num_samples - self.window, self.hop))
        if starts[-1] != num_samples - self.window:
            starts.append(num_samples - self.window)
        return starts

    # ---- scoring -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score_windows(self, segments: list[np.ndarray], timeline: bool = False) -> tuple[np.ndarray, list]:
        """Scores of a batch of windows (mono float32 at the encoder's rate, any lengths).

        Returns:
            (scores (B, C), curves): curves[i] = (token offsets in seconds (T_i,), activity (T_i, C)) when
            `timeline` (prototype heads), else None.
        """
        lengths = torch.tensor([len(s) for s in segments])
        padded = torch.zeros(len(segments), int(lengths.max()))
        for row, segment in enumerate(segments):
            padded[row, : len(segment)] = torch.from_numpy(segment)
        out = self.encoder.encode(padded, lengths)
        tokens, mask = out.tokens.to(self.device).float(), out.mask.to(self.device)
        global_vector = None if out.global_vector is None else out.global_vector.to(self.device).float()
        logits = self.probe(tokens, mask, global_vector)
        scores = torch.sigmoid(logits) if self.decisions.multilabel else torch.softmax(logits, dim=-1)
        curves: list = [None] * len(segments)
        if timeline and self.has_timeline:
            for row in range(len(segments)):  # one window at a time: similarities are T x F x M per window
                valid = mask[row].any(dim=-1)
                steps = int(valid.sum())
                activity = class_activity(self.probe, tokens[row : row + 1, :steps], mask[row : row + 1, :steps])[0]
                step = self.token_seconds or len(segments[row]) / self.encoder.sample_rate / max(steps, 1)
                offsets = np.minimum((np.arange(steps) + 0.5) * step, len(segments[row]) / self.encoder.sample_rate)
                curves[row] = (offsets, activity.cpu().double().numpy())
        return scores.cpu().double().numpy(), curves

    def predict(self, waveform: np.ndarray, sample_rate: int, name: str = "<waveform>", timeline: bool | None = None) -> Prediction:
        """Predict one recording held in memory.

        Args:
            waveform: (N,) mono or (N, channels) samples at `sample_rate` (resampled to the encoder's rate).
            timeline: compute the activity curve (default: for prototype heads).
        """
        samples, _ = prepare_waveform(waveform, sample_rate, self.encoder.sample_rate, source=name,
                                      min_samples=self.encoder.min_samples())
        pending = self._start(0, name, None, samples, sample_rate)
        for batch in _chunks(list(self._windows(pending, samples)), self.batch_size):
            self._score_into(batch, self.has_timeline if timeline is None else timeline)
        return self._finish(pending)

    def predict_files(self, paths: Iterable[str | Path], timeline: bool | None = None, progress: bool = False,
                      resume: str | Path | None = None, log: Callable[[str], None] | None = None) -> PredictionSet:
        """Predict many audio files in batches of windows.

        Args:
            paths: audio files (see `collect_audio` for folders and manifests).
            timeline: compute activity curves (default: for prototype heads).
            progress: show a progress bar over files.
            resume: a JSON-lines sidecar; files already in it with the same path, size and mtime (and the same
                run and settings) are reused, and every batch's finished files are appended to it.
            log: receives notes (default: stderr).
        Returns:
            a PredictionSet, recordings in input order; unreadable files are listed in `failed`.
        """
        log = log or (lambda text: print(text, file=sys.stderr))
        timeline = self.has_timeline if timeline is None else timeline
        paths = [Path(p) for p in paths]
        settings = {**self.settings, "timeline": bool(timeline)}
        sidecar = _Sidecar(Path(resume), settings, log) if resume else None
        done = sidecar.load() if sidecar else {}
        results: dict[int, Prediction] = {}
        failed: dict[str, str] = {}
        todo = []
        for index, path in enumerate(paths):
            key = _file_key(path)
            if key is not None and json.dumps(key) in done:
                results[index] = done[json.dumps(key)]
            else:
                todo.append((index, path, key))
        reused = len(results)
        bar = ProgressBar(progress, f"predict {self.encoder.name}", total=len(paths), completed=reused)
        queue: list = []
        try:
            for index, path, key in todo:
                try:
                    native_rate = sf.info(str(path)).samplerate
                    samples, _ = load_audio(path, self.encoder.sample_rate, min_samples=self.encoder.min_samples())
                except (AudioError, OSError, RuntimeError) as exc:  # soundfile raises RuntimeError on some files
                    failed[str(path)] = str(exc)
                    bar.advance()
                    continue
                pending = self._start(index, str(path), key, samples, native_rate)
                for window in self._windows(pending, samples):
                    queue.append(window)
                    if len(queue) == self.batch_size:
                        self._flush(queue, timeline, results, sidecar, bar)
            self._flush(queue, timeline, results, sidecar, bar)
        finally:
            bar.close()
        for path, problem in failed.items():
            log(f"skipped {path}: {problem}")
        ordered = [results[i] for i in sorted(results)]
        return PredictionSet(ordered, failed, self.classes, self.decisions, settings, reused)

    # ---- internals ----------------------------------------------------------------------------------------------------

    def _start(self, index: int, source: str, key, samples: np.ndarray, native_rate: int) -> _Pending:
        starts = self.window_starts(len(samples))
        return _Pending(index, source, key, len(samples) / self.encoder.sample_rate, int(native_rate), starts,
                        [None] * len(starts), [None] * len(starts))

    def _windows(self, pending: _Pending, samples: np.ndarray) -> Iterator[tuple[_Pending, int, np.ndarray]]:
        for slot, start in enumerate(pending.begin):
            yield pending, slot, samples[start : start + self.window]

    def _score_into(self, batch: list, timeline: bool) -> list[_Pending]:
        """Score a batch of (pending, slot, segment); returns the recordings it completed."""
        scores, curves = self.score_windows([segment for _, _, segment in batch], timeline)
        finished = []
        for row, (pending, slot, _) in enumerate(batch):
            pending.scores[slot], pending.curves[slot] = scores[row], curves[row]
            pending.done += 1
            if pending.done == len(pending.begin):
                finished.append(pending)
        return finished

    def _flush(self, queue: list, timeline: bool, results: dict, sidecar: "_Sidecar | None", bar: ProgressBar) -> None:
        if not queue:
            return
        finished = [(pending, self._finish(pending)) for pending in self._score_into(queue, timeline)]
        for pending, prediction in finished:
            results[pending.index] = prediction
        if sidecar:
            sidecar.append([(pending.key, prediction) for pending, prediction in finished if pending.key is not None])
        bar.advance(len(finished))
        queue.clear()

    def _finish(self, pending: _Pending) -> Prediction:
        rate = self.encoder.sample_rate
        begin = np.asarray(pending.begin, dtype=np.float64) / rate
        end = np.minimum(begin + self.window / rate, pending.duration_s)
        times = activity = None
        if pending.curves and pending.curves[0] is not None:
            # each time belongs to one window: from its start to the next window's start (the last: to the end)
            own_end = list(begin[1:]) + [pending.duration_s]
            pieces = [(b + offsets, curve) for b, stop, (offsets, curve) in zip(begin, own_end, pending.curves)]
            kept = [(t[(t >= b) & (t < stop)], c[(t >= b) & (t < stop)]) for (t, c), b, stop in zip(pieces, begin, own_end)]
            times = np.concatenate([t for t, _ in kept])
            activity = np.concatenate([c for _, c in kept])
        return Prediction(pending.source, pending.duration_s, pending.sample_rate, begin, end, np.stack(pending.scores), times, activity)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _file_stamp(path: Path) -> list:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _file_key(path: Path) -> list | None:
    """What identifies a file's content cheaply: [resolved path, size, mtime_ns]; None when it cannot be stat'ed."""
    try:
        return [str(path.resolve()), *_file_stamp(path)]
    except OSError:
        return None


class _Sidecar:
    """The partial-results file of `predict_files`: a header line (settings), then one line per finished recording.

    Each batch's lines are appended in one write and flushed to disk; a line cut by a crash is dropped on
    the next load (and the file cut back to its last whole line), so its recording is predicted again.
    """

    def __init__(self, path: Path, settings: dict, log: Callable[[str], None]) -> None:
        self.path, self.settings, self.log = path, json.loads(json.dumps(settings)), log

    def load(self) -> dict[str, Prediction]:
        header = {"format": SIDECAR_FORMAT, "settings": self.settings}
        if not self.path.exists():
            self._rewrite(header)
            return {}
        raw = self.path.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]
        lines = whole.decode("utf-8", errors="replace").splitlines()
        try:
            found = json.loads(lines[0]) if lines else {}
        except ValueError:
            found = {}
        if found != header:
            self.log(f"{self.path}: partial results of other settings or another run (or not a sidecar); starting afresh")
            self._rewrite(header)
            return {}
        if len(whole) < len(raw):
            with open(self.path, "r+b") as handle:  # drop the torn last line so appends start on a line of their own
                handle.truncate(len(whole))
        done = {}
        for line in lines[1:]:
            try:
                blob = json.loads(line)
                done[json.dumps(blob["key"])] = Prediction.from_json(blob["prediction"])
            except (ValueError, KeyError, TypeError):
                continue
        return done

    def _rewrite(self, header: dict) -> None:
        atomic_write_with(self.path, lambda tmp: tmp.write_text(json.dumps(header) + "\n"))

    def append(self, entries: list[tuple[list, Prediction]]) -> None:
        if not entries:
            return
        text = "".join(json.dumps({"key": key, "prediction": p.to_json()}) + "\n" for key, p in entries)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


# ---- inputs ------------------------------------------------------------------------------------------------------------


def collect_audio(inputs: Iterable[str | Path]) -> list[Path]:
    """Audio files named by `inputs`: files as given, folders searched recursively (hidden entries passed over),
    CSV manifests read by their `path` column (relative to the manifest's folder). Order kept, duplicates dropped.

    Raises:
        PatchprobeError naming an input that does not exist, a manifest without a `path` column, or inputs with no audio.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(item).parts))
        elif item.suffix.lower() == ".csv":
            found += _manifest_paths(item)
        elif item.exists():
            found.append(item)
        else:
            raise PatchprobeError(f"{item}: no such file or folder (INPUT is audio files, folders or a CSV manifest)")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise PatchprobeError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {', '.join(map(str, inputs))}")
    return unique


def _manifest_paths(manifest: Path) -> list[Path]:
    with open(manifest, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = [name.strip() for name in reader.fieldnames or []]
        if "path" not in fields:
            raise PatchprobeError(f"{manifest}: a manifest needs a `path` column (found: {fields or 'no header'})")
        reader.fieldnames = fields
        paths = [Path(row["path"]) for row in reader if row.get("path")]
    return [p if p.is_absolute() else manifest.parent / p for p in paths]


# ---- outputs ----------------------------------------------------------------------------------------------------------


def _detected(results: PredictionSet, scores: np.ndarray) -> str:
    return ";".join(name for name, hit in zip(results.classes, results.decisions.decide(scores)) if hit)


def write_csv(results: PredictionSet, path: Path) -> None:
    """One row per window (scope "window") and per file (scope "file", the maximum over windows):
    file, scope, begin_s, end_s, detected (';'-joined), then `score:<class>` per class."""
    header = ["file", "scope", "begin_s", "end_s", "detected", *[f"score:{name}" for name in results.classes]]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for p in results.predictions:
                writer.writerow([p.source, "file", 0.0, round(p.duration_s, 4), _detected(results, p.scores),
                                 *[f"{s:.6f}" for s in p.scores]])
                for begin, end, scores in zip(p.begin_s, p.end_s, p.window_scores):
                    writer.writerow([p.source, "window", round(float(begin), 4), round(float(end), 4), _detected(results, scores),
                                     *[f"{s:.6f}" for s in scores]])

    atomic_write_with(path, write)


def write_json_predictions(results: PredictionSet, path: Path) -> None:
    """{"classes", "decisions", "settings", "files": [{"file", "duration_s", "scores", "detected", "windows": [...]}],
    "failed"}; score lists are in `classes` order."""
    files = []
    for p in results.predictions:
        windows = [{"begin_s": float(b), "end_s": float(e), "scores": [round(float(v), 6) for v in s],
                    "detected": [n for n, hit in zip(results.classes, results.decisions.decide(s)) if hit]}
                   for b, e, s in zip(p.begin_s, p.end_s, p.window_scores)]
        files.append({"file": p.source, "duration_s": p.duration_s, "sample_rate": p.sample_rate,
                      "scores": [round(float(v), 6) for v in p.scores],
                      "detected": [n for n, hit in zip(results.classes, results.decisions.decide(p.scores)) if hit], "windows": windows})
    write_json(path, {"classes": results.classes, "decisions": results.decisions.to_json(), "settings": results.settings,
                      "files": files, "failed": results.failed})


RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")


def write_raven(results: PredictionSet, path: Path) -> None:
    """A Raven selection table as BirdNET-Analyzer writes it (tab-separated `RAVEN_COLUMNS`): one selection per
    detected class per window, View "Spectrogram 1", Channel 1, the band 0 Hz to half the lower of the file's
    and the encoder's sample rates. Several files form one table, as BirdNET's combined table: Begin/End Time
    run on across files in input order, "Begin Path" names the file and "File Offset (s)" the window's start in it."""
    nyquist = results.settings.get("sample_rate", 0) / 2

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            handle.write("\t".join(RAVEN_COLUMNS) + "\n")
            selection, offset = 0, 0.0
            for p in results.predictions:
                high = int(min(p.sample_rate / 2, nyquist) if nyquist else p.sample_rate / 2)
                for begin, end, scores in zip(p.begin_s, p.end_s, p.window_scores):
                    for name, score, hit in zip(results.classes, scores, results.decisions.decide(scores)):
                        if hit:
                            selection += 1
                            handle.write(f"{selection}\tSpectrogram 1\t1\t{offset + begin:.4f}\t{offset + end:.4f}\t0\t{high}\t"
                                         f"{name}\t{name}\t{score:.4f}\t{p.source}\t{begin:.4f}\n")
                offset += p.duration_s

    atomic_write_with(path, write)


OUTPUT_FORMATS: dict[str, Callable[[PredictionSet, Path], None]] = {"csv": write_csv, "json": write_json_predictions, "raven": write_raven}
SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".txt": "raven"}


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """The format named by `fmt`, else by the file's suffix (.csv, .json, .txt = Raven selection table)."""
    chosen = fmt or SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if chosen not in OUTPUT_FORMATS:
        raise ValueError(f"--format: {fmt or Path(path).suffix or 'no suffix'!r} is not an output format; use "
                         f"{', '.join(OUTPUT_FORMATS)} (or an --out ending in {', '.join(SUFFIX_FORMATS)})")
    return chosen


def write_predictions(results: PredictionSet, path: str | Path, fmt: str | None = None) -> Path:
    """Write `results` to `path` (atomically) as CSV, JSON or a Raven selection table (see `output_format`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT_FORMATS[output_format(path, fmt)](results, path)
    return path


def write_timeline(results: PredictionSet, path: str | Path) -> Path:
    """Activity curves as rows (file, time_s, class, activity): CSV, or JSON (a list of row objects) for a .json path.

    Raises:
        ValueError when no prediction holds a curve (the run's probe is not a prototype head).
    """
    path = Path(path)
    rows = [(p.source, float(t), name, float(v)) for p in results.predictions if p.activity is not None
            for t, values in zip(p.times_s, p.activity) for name, v in zip(results.classes, values)]
    if not any(p.activity is not None for p in results.predictions):
        raise ValueError(f"--timeline: activity curves come from prototype heads (proto, protobin, protofloat); this run's "
                         f"probe is {results.settings.get('probe')!r}")
    if path.suffix.lower() == ".json":
        write_json(path, [{"file": f, "time_s": round(t, 4), "class": c, "activity": round(v, 6)} for f, t, c, v in rows])
        return path

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "time_s", "class", "activity"])
            writer.writerows((f, f"{t:.4f}", c, f"{v:.6f}") for f, t, c, v in rows)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, write)
    return path


def plot_timeline(results: PredictionSet, path: str | Path, source: str | None = None, classes: int = 5) -> Path:
    """Spectrogram of one recording above the activity curves of its top-scoring classes; a PNG at `path`.

    Args:
        source: which recording (its path as given; default: the first with a curve).
        classes: how many classes to draw (the highest file scores; detected classes drawn solid).
    """
    from .report.figures import new_figure, palette, save_figure

    with_curves = [p for p in results.predictions if p.activity is not None]
    if not with_curves:
        raise ValueError("--plot: activity curves come from prototype heads (proto, protobin, protofloat); this run has none")
    chosen = with_curves[0] if source is None else next((p for p in with_curves if p.source == source or Path(p.source) == Path(source)), None)
    if chosen is None:
        raise ValueError(f"--plot-file: {source!r} is not among the predicted files")
    rate = int(results.settings.get("sample_rate", 16000))
    samples, _ = load_audio(chosen.source, rate)
    spectrogram = kaldi_fbank(torch.from_numpy(samples)).numpy().T  # (mel, frames)
    figure, (top, bottom) = new_figure(2, 1, figsize=(10, 5.5), sharex=True)
    top.imshow(spectrogram, origin="lower", aspect="auto", cmap="magma", extent=(0, chosen.duration_s, 0, spectrogram.shape[0]))
    top.set_ylabel("mel bin")
    top.set_title(f"{Path(chosen.source).name}: activity of the top-scoring classes")
    detected = results.decisions.decide(chosen.scores)
    colours = palette()
    for rank, c in enumerate(np.argsort(-chosen.scores)[:classes]):
        bottom.plot(chosen.times_s, chosen.activity[:, c], color=colours[rank % len(colours)],
                    linestyle="-" if detected[c] else "--", label=f"{results.classes[c]} ({chosen.scores[c]:.2f})")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("activity (best prototype similarity)")
    bottom.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


__all__ = [
    "Decisions", "FALLBACK_WINDOW_SECONDS", "OUTPUT_FORMATS", "Prediction", "PredictionSet", "Predictor", "RAVEN_COLUMNS",
    "class_activity", "collect_audio", "encoder_config_of", "output_format", "plot_timeline", "rebuild_encoder", "token_seconds",
    "write_predictions", "write_timeline",
]
