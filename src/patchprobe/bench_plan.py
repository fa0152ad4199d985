"""`patchprobe bench plan GRID`: every job of a grid with its bank size and an estimated cost per device,
before anything runs, from throughputs measured by the benchmarks.

Where each figure comes from:

- split sizes: each dataset spec's published counts and the protocol (k-shot draws, mixup variants);
- an encoder's token grid (T x F x D for a clip's length): `ENCODER_GEOMETRY`;
- extraction: clips/s measured by `benchmarks/extract.py` per encoder on each device;
- training: each probe's training FLOPs per clip (`PROBE_COSTS`, forward and backward, counted from
  its layers) divided by the FLOP rate that probe reached in `benchmarks/train.py` (its measured
  fraction of the fp32 matmul floor of the same run) times the device's matmul peak; K trials trained
  as one stacked model cost the measured ratio of K stacked trials to K trials one at a time.

The measured rates ship with the package (`bench_rates.json`, written by `benchmarks/rates.py` from
`benchmarks/results/*.json`), so an installed patchprobe plans without the repository.

No GPU training has been measured: GPU training time is the CPU estimate divided by the measured
extraction speed ratio of the GPU to the CPU (ViT-B in float32, the same code on both: both are
matmul-bound), which `plan_grid` reports as `gpu_training`. Every search is costed as if no trial were
pruned (an upper bound: successive halving stops most trials early).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Callable

from .bench import Grid
from .datasets import SPECS
from .probes import PROBES
from .probes.attentive import default_heads

BYTES_PER_VALUE = 2  # banks store float16 tokens
RATES_FILE = "bench_rates.json"  # package data; `python benchmarks/rates.py` regenerates it from benchmarks/results/
# fp32 matmul peak of the 2-core machine the CPU rates were measured on, when no other job runs (the floor
# `benchmarks/train.py` measures; issue 14 measured 383 GFLOP/s). Training efficiencies are fractions of the
# floor measured in the same run, so they hold under load; this turns them back into seconds.
CPU_MATMUL_PEAK = 380e9
# The encoder whose measured extraction speeds convert CPU training time into GPU training time.
REFERENCE_ENCODER = "audiomae"


@dataclass(frozen=True)
class EncoderGeometry:
    """Token grid of an encoder.

    Attributes:
        chunk_seconds: input window; audio is cut into windows of this length (None: any length).
        time_tokens: time tokens per window (or per second when `chunk_seconds` is None).
        freq_tokens, dim: F and D of the token map.
        like: an encoder whose measured extraction speed this one shares (None: its own).
        speed_factor: measured clips/s of `like` times this (an estimate where nothing was measured).
    """

    chunk_seconds: float | None
    time_tokens: float
    freq_tokens: int
    dim: int
    like: str | None = None
    speed_factor: float = 1.0

    def tokens(self, seconds: float) -> float:
        """Tokens (T x F) of one clip of `seconds`."""
        if self.chunk_seconds is None:
            return max(1.0, seconds * self.time_tokens) * self.freq_tokens
        return math.ceil(max(seconds, 1e-3) / self.chunk_seconds) * self.time_tokens * self.freq_tokens

    def windows(self, seconds: float) -> float:
        """Encoder input of one clip of `seconds`, in 10 s clips (the unit extraction was measured in)."""
        return seconds / 10.0 if self.chunk_seconds is None else math.ceil(seconds / self.chunk_seconds) * self.chunk_seconds / 10.0


ENCODER_GEOMETRY: dict[str, EncoderGeometry] = {
    "audiomae": EncoderGeometry(10.24, 64, 8, 768),
    "eat-base": EncoderGeometry(10.24, 64, 8, 768),
    "eat-base-ft": EncoderGeometry(10.24, 64, 8, 768, like="eat-base"),
    "sslam": EncoderGeometry(10.24, 64, 8, 768, like="eat-base"),
    "sslam-ft": EncoderGeometry(10.24, 64, 8, 768, like="eat-base"),
    # not measured: ViT-L does about 3x ViT-B's FLOPs per token
    "eat-large": EncoderGeometry(10.24, 64, 8, 1024, like="eat-base", speed_factor=1 / 3),
    "eat-large-ft": EncoderGeometry(10.24, 64, 8, 1024, like="eat-base", speed_factor=1 / 3),
    "beats": EncoderGeometry(None, 6.2, 8, 768),
    "dasheng": EncoderGeometry(None, 25.0, 1, 768),
    "asit": EncoderGeometry(10.24, 64, 8, 768),
    "birdmae-base": EncoderGeometry(5.12, 32, 8, 768),
    # not measured: our 192-d, 6-block ViTs do about 1/30 of ViT-B's FLOPs
    "tiny-mae": EncoderGeometry(None, 6.3, 8, 192, like="audiomae", speed_factor=30.0),
    "toy-vit": EncoderGeometry(None, 6.3, 8, 192, like="audiomae", speed_factor=30.0),
}


@dataclass(frozen=True)
class HeadShape:
    """What a probe's arithmetic depends on: tokens per clip N (= T x F), F, D, classes C, prototypes per class J."""

    tokens: float
    freq: int
    dim: int
    classes: int
    prototypes_per_class: int = 20

    @property
    def prototypes(self) -> int:
        return self.classes * self.prototypes_per_class


@dataclass(frozen=True)
class ProbeCost:
    """Training FLOPs of one probe per clip and epoch, forward and backward (one trial).

    A layer costs 2 x inputs x outputs per row forward, as much again for its weight gradient, and as
    much again for its input gradient when something before it trains (so x2 on the bank's tokens, which
    need no gradient, x3 after a LayerNorm or another layer). `kind` names whose measured
    vectorised-trial speedup applies: "pooled" (heads on vectors pooled once per bank: `linear`'s),
    "tokens" (heads that read every token: `mhca`'s), "prototype" (`protobin`'s).
    """

    kind: str
    per_token: Callable[[HeadShape], float]
    per_clip: Callable[[HeadShape], float]

    def flop_per_clip(self, shape: HeadShape) -> float:
        return self.per_token(shape) * shape.tokens + self.per_clip(shape)


def _similarity_per_token(s: HeadShape) -> float:
    # cosine similarity to M prototypes: the (N, D) x (D, M) product, normalising each token (3 D).
    # Backward adds no per-token work: the max's gradient is a gather of the winning token per
    # prototype (M D per clip, in per_clip), and the bank's tokens need no gradient.
    return 2.0 * s.dim * s.prototypes + 3.0 * s.dim


_LAYERNORM = 10.0  # FLOPs per value of a LayerNorm forward (mean, variance, normalise, scale and shift)

PROBE_COSTS: dict[str, ProbeCost] = {
    "linear": ProbeCost("pooled", lambda s: 0.0, lambda s: 2 * 2.0 * s.dim * s.classes),
    "mlp": ProbeCost("pooled", lambda s: 0.0, lambda s: 2 * 2.0 * s.dim * s.dim + 3 * 2.0 * s.dim * s.classes),
    # [global vector ‖ mean of tokens]: 2 D wide for encoders with a [cls] vector (the usual case)
    "linearc": ProbeCost("pooled", lambda s: 0.0, lambda s: 2 * 2.0 * 2 * s.dim * s.classes),
    "freqpool": ProbeCost("pooled", lambda s: 0.0, lambda s: 2 * 2.0 * s.freq * s.dim * s.classes),
    "linpre": ProbeCost("tokens", lambda s: 3 * _LAYERNORM * s.dim, lambda s: 3 * 2.0 * s.dim * s.classes),
    # depthwise 3x3 on the tokens (x2), pointwise D x D after it (x3); head on [max ‖ mean] (2 D)
    "conv": ProbeCost("tokens", lambda s: 2 * 2.0 * 9 * s.dim + 3 * 2.0 * s.dim * s.dim,
                      lambda s: 3 * 2.0 * 2 * s.dim * s.classes),
    # one query, so no per-token keys or values (`MHCAProbe.attention`): per token LN's normalisation, H scores
    # and the H-weighted sum (x2 each: weight and weights gradients, the tokens need none); per clip: the key
    # and value maps folded with the query (2 D^2), out proj, MLP (D x 4D x 2), head
    "mhca": ProbeCost("tokens", lambda s: _LAYERNORM * s.dim + 2 * 2 * 2.0 * s.dim * default_heads(s.dim),
                      lambda s: 3 * (3 * 2.0 * s.dim * s.dim + 2 * 2.0 * s.dim * 4 * s.dim + 2.0 * s.dim * s.classes)),
    # 32 query scores and the 32 weighted sums on the raw tokens (x2 each: queries' and weights' gradients);
    # per clip: each pooled vector onto its value group (D^2 in all), head (`EfficientProbe.attention`)
    "ep": ProbeCost("tokens", lambda s: 2 * 2 * 2.0 * 32 * s.dim,
                    lambda s: 3 * (2.0 * s.dim * s.dim + 2.0 * s.dim * s.classes)),
    # LN, the score against the clip's folded query and the weighted sum (x3: LN trains); per clip: W_q on
    # the mean token (x2), W_k folded into the query (x3, `SimPoolProbe.attention`), head
    "simpool": ProbeCost("tokens", lambda s: 3 * (_LAYERNORM * s.dim + 2 * 2.0 * s.dim),
                         lambda s: 2 * 2.0 * s.dim * s.dim + 3 * (2.0 * s.dim * s.dim + 2.0 * s.dim * s.classes)),
    # V (D x D) on the raw tokens (x2), tanh and score (x3), weighted sum of the tokens (x2)
    "abmilp": ProbeCost("tokens", lambda s: 2 * 2.0 * s.dim * s.dim + 3 * 2.0 * s.dim + 2 * 2.0 * s.dim,
                        lambda s: 3 * 2.0 * s.dim * s.classes),
    "proto": ProbeCost("prototype", _similarity_per_token, lambda s: 2.0 * s.prototypes * s.dim + 3 * 2.0 * s.prototypes),
    "protobin": ProbeCost("prototype", _similarity_per_token,
                          lambda s: 2.0 * s.prototypes * s.dim + 3 * 2.0 * s.prototypes * s.classes),
    "protofloat": ProbeCost("prototype", _similarity_per_token,
                            lambda s: 2.0 * s.prototypes * s.dim + 3 * 2.0 * s.prototypes * s.classes),
}


def stacks_trials(probe: str) -> bool:
    """Whether the trainer stacks `probe`'s trials into one model (`Probe.stack_trials`) or trains them side by side."""
    return bool(getattr(PROBES.get(probe), "stack_trials", True)) if probe in PROBES else True


def training_flop_per_clip(probe: str, shape: HeadShape) -> float:
    """Training FLOPs (forward + backward) of one trial of `probe` per clip and epoch (`PROBE_COSTS`)."""
    if probe not in PROBE_COSTS:
        raise KeyError(f"no cost model for probe {probe!r}; known: {', '.join(PROBE_COSTS)}")
    return PROBE_COSTS[probe].flop_per_clip(shape)


@dataclass(frozen=True)
class TrainingRates:
    """Probe training throughput measured by `benchmarks/train.py` (one run, one device).

    efficiency: probe -> training FLOPs/s (`training_flop_per_clip`) as a fraction of the fp32 matmul
        floor measured around it, one trial at a time (each trial its own `train_probes` call).
    stacked_trials: K of the trial rows; stacked_time / shared_time: cost kind -> time of K trials
        trained as one stacked model / as K members of one shared pass, over the time of the K trials
        one at a time (< 1 is a gain).
    """

    device: str
    date: str
    floor: dict
    efficiency: dict[str, float]
    stacked_trials: int
    stacked_time: dict[str, float]
    shared_time: dict[str, float]

    def pass_factor(self, kind: str, trials: int, stacked: bool = True) -> float:
        """Time of one trial among `trials` trained in one pass (as one stacked model, or as separate members of a
        shared pass when `stacked` is False) / time of that trial alone, for cost `kind`.

        Measured at K = `stacked_trials`; for 1 < k < K the time of the pass is interpolated linearly between
        one trial alone (k = 1) and the K measured; beyond K the measured K's factor is kept (no extrapolated gain).
        """
        if trials <= 1:
            return 1.0
        measured = (self.stacked_time if stacked else self.shared_time)[kind]  # t(K) / (K t(1))
        k = min(trials, self.stacked_trials)
        pass_time = 1.0 + (measured * self.stacked_trials - 1.0) * (k - 1) / max(1, self.stacked_trials - 1)  # t(k) / t(1)
        return pass_time / k


@dataclass(frozen=True)
class MeasuredRates:
    """What the plan knows from measurements: extraction clips/s per device and encoder, and training rates."""

    extraction: dict[str, dict[str, float]]  # device -> encoder -> 10 s clips/s
    extraction_device: dict[str, str]  # device -> what was measured ("NVIDIA H100 80GB HBM3, float32")
    training: TrainingRates
    sources: dict[str, str]

    def clips_per_second(self, encoder: str, device: str) -> float | None:
        geometry = ENCODER_GEOMETRY.get(encoder)
        measured = self.extraction.get(device, {})
        if geometry is None:
            return measured.get(encoder)
        name = geometry.like or encoder
        return None if name not in measured else measured[name] * geometry.speed_factor

    def gpu_training_speedup(self, device: str) -> float:
        """GPU over CPU speed for probe training: the measured extraction speed ratio of `REFERENCE_ENCODER` in
        float32 (training runs in float32 also where extraction ran in float16)."""
        return self.extraction["cuda"][REFERENCE_ENCODER] / self.extraction["cpu"][REFERENCE_ENCODER]


def rates_from_json(data: dict) -> MeasuredRates:
    """Typed rates from the JSON `benchmarks/rates.py` writes (see `load_rates`)."""
    training = data["training"]
    return MeasuredRates(
        extraction={device: dict(entry["clips_per_s"]) for device, entry in data["extraction"].items()},
        extraction_device={device: entry["device"] for device, entry in data["extraction"].items()},
        training=TrainingRates(device=training["device"], date=training["date"], floor=dict(training["floor"]),
                               efficiency=dict(training["efficiency"]), stacked_trials=int(training["stacked_trials"]),
                               stacked_time=dict(training["stacked_time"]), shared_time=dict(training["shared_time"])),
        sources=dict(data["sources"]),
    )


@lru_cache(maxsize=1)
def load_rates() -> MeasuredRates:
    """The measured rates shipped with the package (`bench_rates.json`)."""
    return rates_from_json(json.loads(resources.files(__package__).joinpath(RATES_FILE).read_text()))


@dataclass(frozen=True)
class DeviceClass:
    """A device the plan costs jobs on: `extraction` names its measured extraction speeds; training is costed
    on the CPU's measured rates, divided by the GPU speed ratio on a GPU."""

    label: str
    extraction: str
    gpu: bool


DEVICES: dict[str, DeviceClass] = {
    "cpu": DeviceClass("2 CPU cores", "cpu", gpu=False),
    "cuda": DeviceClass("one H100 80GB, float32", "cuda", gpu=True),
    "cuda-fp16": DeviceClass("one H100 80GB, float16 extraction (`extract --half`)", "cuda-fp16", gpu=True),
}


@dataclass
class DatasetSize:
    clips: dict[str, float]  # split -> clips (estimated)
    seconds: float  # mean clip length
    classes: int
    exact: bool  # False when a size is a guess (unverified sources)


def dataset_size(key: str, options: dict, augment_variants: int = 0) -> DatasetSize | None:
    """Clips per split the protocol builds for benchmark dataset `key` or the synthetic generator (None otherwise)."""
    if key == "synthetic":
        from .datasets import EVENT_CLASSES, SyntheticConfig

        fields = {k: v for k, v in options.items() if k in SyntheticConfig.model_fields}
        config = SyntheticConfig(**fields)
        train = config.sizes.get("train", 0) * (1 + augment_variants)
        return DatasetSize({**config.sizes, "train": train}, config.clip_seconds, len(config.classes or EVENT_CLASSES), True)
    if key not in SPECS:
        return None
    spec = SPECS[key]
    rows, classes = spec.expected_rows, spec.expected_classes or 0
    valid_fraction = float(options.get("valid_fraction", spec.options.get("valid_fraction", 0.1)))
    if spec.metrics[0] == "map" and "cmap5" in spec.metrics:  # BirdSet: k-shot windows
        k = int(options.get("k", spec.options["k"]))
        train = k * classes if k > 0 else 3.0 * rows["train"]
        clips = {"train": train * (1 - valid_fraction) * (1 + augment_variants), "valid": train * valid_fraction, "test": rows["test_5s"]}
        return DatasetSize(clips, 5.0, classes, True)
    if key == "esc50":
        random = options.get("protocol", spec.options["protocol"]) == "random"
        clips = {"train": 1440, "valid": 160, "test": 400} if random else {"train": 1200, "valid": 400, "test": 400}
        return DatasetSize(clips, 5.0, classes, True)
    if key == "sc2":
        return DatasetSize({"train": 84843 + 700, "valid": 9981 + 180, "test": 4890}, 1.0, classes, True)
    if key == "fsd50k":
        if options.get("train_split", "train_val") == "dev":
            clips = {"train": 36869, "valid": 4097, "test": 10231}
        else:
            clips = {"train": 36796, "valid": 4170, "test": 10231}
        return DatasetSize(clips, 7.6, classes, True)
    if key == "as20k":
        return DatasetSize({"train": 16815, "valid": 1868, "test": 17141}, 10.0, classes, True)
    train = {"desed": 20000, "spass": 17500}.get(key, rows.get("train", 0))  # the paper's training sizes
    test = rows.get("test", round(train / 3))
    valid = rows.get("validation", round(valid_fraction * train))
    return DatasetSize({"train": train, "valid": valid, "test": test}, 10.0, classes, bool(rows))


def sweep_seconds(probe: str, shape: HeadShape, clips: dict[str, float], trials: int, epochs: int, seeds: int,
                  trials_per_pass: int, device: str, rates: MeasuredRates, cpu_peak: float = CPU_MATMUL_PEAK) -> float:
    """Seconds of one unpruned search of `probe` (`trials` trials of `epochs` epochs, then `seeds` final runs) on `device`.

    Each epoch trains on clips["train"] and scores clips["valid"] (a forward pass: 1/3 of a training step's
    work); each final run also scores clips["test"]. The trials run `trials_per_pass` at a time in one
    pass (`TrainingRates.pass_factor`): as one stacked model, or as separate members of a shared pass for
    heads whose `Probe.stack_trials` is False; the final runs (each its own data order) one at a time.
    """
    training = rates.training
    per_clip = training_flop_per_clip(probe, shape) / (training.efficiency[probe] * cpu_peak)
    if DEVICES[device].gpu:
        per_clip /= rates.gpu_training_speedup(device)
    epoch = per_clip * (clips["train"] + clips["valid"] / 3)
    trial = epoch * epochs * training.pass_factor(PROBE_COSTS[probe].kind, trials_per_pass, stacks_trials(probe))
    return trials * trial + seeds * (epoch * epochs + per_clip * clips["test"] / 3)


def plan_grid(path, devices: tuple[str, ...] = ("cpu", "cuda", "cuda-fp16"), trials_per_pass: int | None = None,
              rates: MeasuredRates | None = None, cpu_peak: float = CPU_MATMUL_PEAK) -> dict:
    """Every job of the grid with its estimated bank size and hours per device, and the totals.

    trials_per_pass: trials a search trains together as one stacked model (None: what `bench run` does
    for that search, its `SweepConfig.trials_per_pass`; 1: each trial alone). cpu_peak: fp32 matmul
    FLOP/s of the CPU to cost training on (default: the machine the rates were measured on, quiet).

    Returns:
        {"grid", "jobs": [{job, kind, encoder, dataset, probe, bank_gb, hours: {device: h}, exact}],
         "totals": {"bank_gb", "hours": {device: h}, "extract_hours", "sweep_hours"}, "devices": {device: label},
         "unknown": [names], "trials", "epochs", "seeds", "trials_per_pass", "rates": where the rates come from}.
    """
    rates = rates or load_rates()
    unknown_devices = [d for d in devices if d not in DEVICES]
    if unknown_devices:
        raise ValueError(f"unknown device {unknown_devices[0]!r}; choose from {', '.join(DEVICES)}")
    if trials_per_pass is not None and trials_per_pass < 1:
        raise ValueError(f"trials_per_pass must be at least 1 (got {trials_per_pass})")
    grid = Grid(path)
    config = grid.config
    jobs, unknown = [], set()
    sizes: dict[str, DatasetSize | None] = {}
    for job in grid.jobs():
        encoder = grid.encoders[job.encoder]
        geometry = ENCODER_GEOMETRY.get(encoder.name)
        if geometry is not None and "width" in encoder.args:
            geometry = replace(geometry, dim=int(encoder.args["width"]))
        entry = grid.cells[job.dataset][0]
        if entry.name not in sizes:
            sizes[entry.name] = dataset_size(entry.dataset, entry.options, entry.augment_variants) if entry.dataset else None
        size = sizes[entry.name]
        row = {"job": job.key, "kind": job.kind, "encoder": job.encoder, "dataset": job.dataset, "probe": job.probe,
               "bank_gb": None, "hours": {d: None for d in devices}, "exact": False}
        missing = (encoder.name if geometry is None else job.dataset if size is None
                   else job.probe if job.kind == "sweep" and job.probe not in rates.training.efficiency else None)
        if missing is not None:
            unknown.add(missing)
            jobs.append(row)
            continue
        tokens = geometry.tokens(size.seconds)
        row["exact"] = size.exact
        if job.kind == "extract":
            total_clips = sum(size.clips.values())
            row["bank_gb"] = total_clips * tokens * geometry.dim * BYTES_PER_VALUE / 1e9
            for device in devices:
                speed = rates.clips_per_second(encoder.name, DEVICES[device].extraction)
                row["hours"][device] = None if speed is None else total_clips * geometry.windows(size.seconds) / speed / 3600
        else:
            search = grid.sweep_config(job.probe, job.dataset)
            prototypes = int(search.probe_args.get("prototypes_per_class", 20))
            shape = HeadShape(tokens, geometry.freq_tokens, geometry.dim, size.classes, prototypes)
            row["trials_per_pass"] = trials_per_pass or getattr(search, "trials_per_pass", 1)
            for device in devices:
                row["hours"][device] = sweep_seconds(job.probe, shape, size.clips, config.trials, config.epochs, config.seeds,
                                                     row["trials_per_pass"], device, rates, cpu_peak) / 3600
        jobs.append(row)
    by_kind = lambda kind, d: sum(j["hours"][d] or 0 for j in jobs if j["kind"] == kind)  # noqa: E731
    totals = {"bank_gb": sum(j["bank_gb"] or 0 for j in jobs),
              "hours": {d: sum(j["hours"][d] or 0 for j in jobs) for d in devices},
              "extract_hours": {d: by_kind("extract", d) for d in devices},
              "sweep_hours": {d: by_kind("sweep", d) for d in devices}}
    training = rates.training
    return {"grid": config.name, "jobs": jobs, "totals": totals, "devices": {d: DEVICES[d].label for d in devices},
            "unknown": sorted(unknown), "trials": config.trials, "epochs": config.epochs, "seeds": config.seeds,
            "trials_per_pass": sorted({j["trials_per_pass"] for j in jobs if "trials_per_pass" in j}),
            "rates": {"extraction": {d: rates.extraction_device[DEVICES[d].extraction] for d in devices},
                      "training": f"{training.device}, {training.date} (benchmarks/train.py): each probe's measured fraction "
                                  f"of the fp32 matmul floor x {cpu_peak / 1e9:.0f} GFLOP/s",
                      "gpu_training": f"not measured: the CPU estimate / {rates.gpu_training_speedup('cuda'):.0f}, the measured "
                                      f"extraction speed ratio of {REFERENCE_ENCODER} in float32 ({rates.extraction_device['cuda']} "
                                      f"vs {rates.extraction_device['cpu']})",
                      "stacked_trials": training.stacked_trials,
                      "stacked_time": training.stacked_time, "shared_time": training.shared_time}}
