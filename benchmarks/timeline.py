"""Does a prototype head's activity curve peak where the events are? Hit rate on synthetic clips.

    python benchmarks/timeline.py [--train 400] [--valid 100] [--test 150] [--work DIR] [--device cpu]

Synthetic multi-label clips (6 s, 1-4 classes, each once or twice for 0.1-1 s) are extracted with the
shipped `tiny-mae` encoder, a `protobin` (J = 20, lr 0.3, 30 epochs: the demo's best rate) is trained
on them, and `patchprobe predict`'s Predictor computes the per-class activity curve of every test clip
from its audio. For every (clip, class present in the clip) the curve's peak time is compared with the
events the generator placed (`synthesize_clip_events`): a hit when the peak lies inside one of the
class's events (strict), or within half a time token (0.08 s) of one (tolerant). Chance is the share of
the clip the class's events cover (a peak placed uniformly at random). Writes
benchmarks/results/timeline-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from patchprobe.bank import extract_bank
from patchprobe.datasets import SyntheticConfig, load_synthetic_dataset
from patchprobe.datasets.synthetic import clip_rng, synthesize_clip_events
from patchprobe.encoders import create_encoder
from patchprobe.predict import Predictor
from patchprobe.train import Run, TrainConfig, fit

RESULTS = Path(__file__).parent / "results"


def covered(events: list[tuple[float, float]], duration: float, step: float = 0.001) -> float:
    """Share of [0, duration) inside the union of `events`."""
    grid = np.arange(0, duration, step)
    inside = np.zeros(len(grid), dtype=bool)
    for onset, offset in events:
        inside |= (grid >= onset) & (grid <= offset)
    return float(inside.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--valid", type=int, default=100)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "patchprobe-timeline-benchmark")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    started = time.perf_counter()
    config = SyntheticConfig(kind="multilabel", seed=0, sizes={"train": args.train, "valid": args.valid, "test": args.test})
    dataset = load_synthetic_dataset(args.work / "data", config)
    bank = extract_bank(dataset, create_encoder("tiny-mae", device=args.device), args.work / "bank", progress=False)
    extracted = time.perf_counter()
    train = TrainConfig(probe="protobin", probe_args={"prototypes_per_class": 20}, epochs=30, batch_size=128, lr=0.3,
                        device=args.device)
    fit(bank, [train], [args.work / "run"], progress=False)
    run = Run(args.work / "run")
    trained = time.perf_counter()

    predictor = Predictor.from_run(args.work / "run", device=args.device)
    paths = [dataset.path_of(clip_id) for clip_id in dataset.clip_ids("test")]
    predictions = predictor.predict_files(paths, timeline=True).predictions
    hits = tolerant = 0
    chance, pairs, detected_hits, detected_pairs = [], 0, 0, 0
    half_token = (predictor.token_seconds or 0.16) / 2
    for index, prediction in enumerate(predictions):
        _, labels, events = synthesize_clip_events(config, clip_rng(config.seed, "test", index))
        detected = predictor.decisions.decide(prediction.scores)
        for name in labels:
            c = predictor.classes.index(name)
            spans = [(onset, offset) for label, onset, offset in events if label == name]
            peak = float(prediction.times_s[int(np.argmax(prediction.activity[:, c]))])
            hit = any(onset <= peak <= offset for onset, offset in spans)
            hits += hit
            tolerant += any(onset - half_token <= peak <= offset + half_token for onset, offset in spans)
            chance.append(covered(spans, prediction.duration_s))
            pairs += 1
            if detected[c]:
                detected_pairs += 1
                detected_hits += hit
    result = {
        "what": "peak of the per-class activity curve inside a true event of that class (synthetic multi-label test clips)",
        "encoder": "tiny-mae (shipped weights)",
        "probe": "protobin J=20, lr 0.3, 30 epochs, batch 128, seed 0",
        "clips": {"train": args.train, "valid": args.valid, "test": args.test, "clip_seconds": config.clip_seconds},
        "pairs": pairs,
        "hit_rate": round(hits / pairs, 4),
        "hit_rate_within_half_token": round(tolerant / pairs, 4),
        "half_token_s": half_token,
        "chance": round(float(np.mean(chance)), 4),
        "detected_pairs": detected_pairs,
        "hit_rate_detected": round(detected_hits / max(detected_pairs, 1), 4),
        "decisions": predictor.decisions.source,
        "test_metrics": run.metrics.split("test"),
        "seconds": {"extract": round(extracted - started, 1), "train": round(trained - extracted, 1),
                    "predict": round(time.perf_counter() - trained, 1)},
        "device": args.device,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"timeline-{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
