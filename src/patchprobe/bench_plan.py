"""`patchprobe bench plan GRID`: every job of a grid with its bank size and an estimated cost per device,
before anything runs.

The estimates come from published split sizes (each dataset spec's expected rows and the protocol's
k-shot size), each encoder's token grid, and throughputs measured by `benchmarks/extract.py` (2 CPU
threads; one H100 in float32 and float16). Training is costed from the probes' FLOPs per token at
an assumed fraction of each device's peak, plus reading the tokens every epoch; every search is
costed as if no trial were pruned (an upper bound: successive halving stops most trials early).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .bench import Grid
from .datasets import SPECS

BYTES_PER_VALUE = 2  # banks store float16 tokens


@dataclass(frozen=True)
class EncoderGeometry:
    """Token grid and measured extraction throughput of an encoder.

    Attributes:
        chunk_seconds: input window; audio is cut into windows of this length (None: any length).
        time_tokens: time tokens per window (or per second when `chunk_seconds` is None).
        freq_tokens, dim: F and D of the token map.
        clips_per_second: 10 s clips per second, per device kind ("cpu", "cuda", "cuda-fp16").
    """

    chunk_seconds: float | None
    time_tokens: float
    freq_tokens: int
    dim: int
    clips_per_second: dict[str, float]

    def tokens(self, seconds: float) -> float:
        """Tokens (T x F) of one clip of `seconds`."""
        if self.chunk_seconds is None:
            return max(1.0, seconds * self.time_tokens) * self.freq_tokens
        return math.ceil(max(seconds, 1e-3) / self.chunk_seconds) * self.time_tokens * self.freq_tokens

    def extraction_seconds(self, seconds: float, device: str) -> float:
        """Seconds to encode one clip of `seconds` on `device` (throughput scales with the audio's length)."""
        windows = seconds / 10.0 if self.chunk_seconds is None else math.ceil(seconds / self.chunk_seconds) * self.chunk_seconds / 10.0
        return windows / self.clips_per_second[device]


_VIT_B = {"cpu": 1.58, "cuda": 415.0, "cuda-fp16": 2246.0}  # benchmarks/results/extract-*.json
ENCODER_GEOMETRY: dict[str, EncoderGeometry] = {
    "audiomae": EncoderGeometry(10.24, 64, 8, 768, {"cpu": 1.58, "cuda": 414.8, "cuda-fp16": 2300.4}),
    "eat-base": EncoderGeometry(10.24, 64, 8, 768, _VIT_B),
    "eat-base-ft": EncoderGeometry(10.24, 64, 8, 768, _VIT_B),
    "sslam": EncoderGeometry(10.24, 64, 8, 768, _VIT_B),
    "sslam-ft": EncoderGeometry(10.24, 64, 8, 768, _VIT_B),
    "eat-large": EncoderGeometry(10.24, 64, 8, 1024, {k: v / 3 for k, v in _VIT_B.items()}),  # about 3x ViT-B's FLOPs
    "eat-large-ft": EncoderGeometry(10.24, 64, 8, 1024, {k: v / 3 for k, v in _VIT_B.items()}),
    "beats": EncoderGeometry(None, 6.2, 8, 768, {"cpu": 1.49, "cuda": 350.7, "cuda-fp16": 725.0}),
    "dasheng": EncoderGeometry(None, 25.0, 1, 768, {"cpu": 3.52, "cuda": 640.1, "cuda-fp16": 1386.7}),
    "asit": EncoderGeometry(10.24, 64, 8, 768, {"cpu": 1.66, "cuda": 398.3, "cuda-fp16": 1605.5}),
    "birdmae-base": EncoderGeometry(5.12, 32, 8, 768, {"cpu": 1.74, "cuda": 426.5, "cuda-fp16": 1811.1}),
    # our 192-d, 6-block ViTs: about 1/30 of ViT-B's FLOPs (throughput scaled from ViT-B, not measured)
    "tiny-mae": EncoderGeometry(None, 6.3, 8, 192, {"cpu": 47.0, "cuda": 12000.0, "cuda-fp16": 40000.0}),
    "toy-vit": EncoderGeometry(None, 6.3, 8, 192, {"cpu": 47.0, "cuda": 12000.0, "cuda-fp16": 40000.0}),
}
# Peak FLOP/s (float32, what probes train in) and memory bandwidth assumed per device, and the fraction
# of peak probe training reaches (assumptions, not measurements: `benchmarks/train.py` measures them).
DEVICES = {
    "cpu": {"flops": 380e9, "bandwidth": 17e9, "efficiency": 0.5, "label": "2 CPU cores (fp32 matmul 380 GFLOP/s)"},
    "cuda": {"flops": 60e12, "bandwidth": 3.0e12, "efficiency": 0.4, "label": "one H100 (fp32/tf32)"},
    # `extract --half`: the encoder in float16; probes still train in float32
    "cuda-fp16": {"flops": 60e12, "bandwidth": 3.0e12, "efficiency": 0.4, "label": "one H100 (float16 extraction)"},
}


def probe_flops_per_token(probe: str, dim: int, classes: int, prototypes_per_class: int = 20) -> float:
    """Forward multiply-adds x 2 per token of the probe's token-level work (pooling heads: ~0)."""
    family = {"mhca": 4 * dim * dim, "simpool": 4 * dim * dim, "ep": 2 * dim * dim, "abmilp": 2 * dim * dim}
    if probe in ("proto", "protobin", "protofloat"):
        return 2.0 * dim * classes * prototypes_per_class
    return 2.0 * family.get(probe, 0)


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


def plan_grid(path, devices: tuple[str, ...] = ("cpu", "cuda", "cuda-fp16")) -> dict:
    """Every job of the grid with its estimated bank size and hours per device, and the totals.

    Returns:
        {"grid", "jobs": [{job, kind, encoder, dataset, probe, bank_gb, hours: {device: h}, exact}],
         "totals": {"bank_gb", "hours": {device: h}}, "devices": {device: label}, "unknown": [names]}.
    """
    grid = Grid(path)
    config = grid.config
    jobs, unknown = [], set()
    sizes = {}
    for job in grid.jobs():
        encoder = grid.encoders[job.encoder]
        geometry = ENCODER_GEOMETRY.get(encoder.name)
        if geometry is not None and "width" in encoder.args:
            geometry = replace(geometry, dim=int(encoder.args["width"]))
        entry = grid.cells[job.dataset][0]
        size = sizes.get(entry.name)
        if size is None and entry.dataset:
            size = sizes[entry.name] = dataset_size(entry.dataset, entry.options, entry.augment_variants)
        if geometry is None or size is None:
            unknown.add(grid.encoders[job.encoder].name if geometry is None else job.dataset)
            jobs.append({"job": job.key, "kind": job.kind, "encoder": job.encoder, "dataset": job.dataset, "probe": job.probe,
                         "bank_gb": None, "hours": {d: None for d in devices}, "exact": False})
            continue
        tokens = geometry.tokens(size.seconds)
        total_clips = sum(size.clips.values())
        row = {"job": job.key, "kind": job.kind, "encoder": job.encoder, "dataset": job.dataset, "probe": job.probe,
               "exact": size.exact}
        if job.kind == "extract":
            row["bank_gb"] = total_clips * tokens * geometry.dim * BYTES_PER_VALUE / 1e9
            # extraction device kinds: float16 extraction only on a GPU
            row["hours"] = {d: total_clips * geometry.extraction_seconds(size.seconds, d) / 3600 for d in devices}
        else:
            prototypes = _prototypes_per_class(entry, job.probe)
            flops = 3 * probe_flops_per_token(job.probe, geometry.dim, size.classes, prototypes) * tokens
            read = tokens * geometry.dim * BYTES_PER_VALUE
            epochs = config.epochs * size.clips["train"] + config.epochs * size.clips["valid"] / 3  # valid scored each epoch
            runs = config.trials + config.seeds
            row["bank_gb"] = None
            row["hours"] = {}
            for device in devices:
                spec = DEVICES[device]
                per_clip = max(flops / (spec["flops"] * spec["efficiency"]), read / spec["bandwidth"])
                row["hours"][device] = runs * epochs * per_clip / 3600
        jobs.append(row)
    totals = {"bank_gb": sum(j["bank_gb"] or 0 for j in jobs),
              "hours": {d: sum(j["hours"][d] or 0 for j in jobs) for d in devices}}
    return {"grid": config.name, "jobs": jobs, "totals": totals, "devices": {d: DEVICES[d]["label"] for d in devices},
            "unknown": sorted(unknown), "trials": config.trials, "epochs": config.epochs, "seeds": config.seeds}


def _prototypes_per_class(entry, probe: str | None) -> int:
    probe_args = entry.probe_args
    for key in (probe, "prototype"):
        if key in probe_args and "prototypes_per_class" in probe_args[key]:
            return int(probe_args[key]["prototypes_per_class"])
    return 20
