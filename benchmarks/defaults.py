"""Does a default `patchprobe train` run land near the probe's tuned score? Default vs tuned, every probe.

    python benchmarks/defaults.py [--probes all] [--train 96 --valid 48 --test 96] [--device cpu]

Held-out data, generated differently from the demo's: the synthetic generator with another seed,
shorter clips, fewer classes (the last 7 event classes) and a lower SNR range, through tiny-mae.
For each probe one shared pass trains:
  - the default: `TrainConfig(probe=...)` as `patchprobe train` builds it (lr "auto" over the probe's
    registered grid, chosen on valid; epochs, batch size and J at their defaults);
  - the wider grid's other rates: one step of the grids' 1-3-10 ladder below and above the registered grid.
Tuned = the best on valid over the wider grid (registered grid included), reported on test; default =
the auto choice, on test. Training is deterministic and members of a shared pass do not interact, so
every rate's run equals the run `patchprobe train --lr RATE` would give.

Writes benchmarks/results/defaults-<device>.json: per probe the default and tuned lr, valid and test
scores, the gap (tuned - default, in points of the primary metric) and the edge flag.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np

from patchprobe.bank import LoadedBank, extract_bank
from patchprobe.datasets import SyntheticConfig, load_synthetic_dataset
from patchprobe.datasets.synthetic import EVENT_CLASSES
from patchprobe.encoders import create_encoder
from patchprobe.probes import PROBES
from patchprobe.train import TrainConfig, train_probes
from patchprobe.train.metrics import primary_metric

RESULTS = Path(__file__).parent / "results"


def ladder_step(lr: float, up: bool) -> float:
    """The next rate on the 1-3-10 ladder the registered grids use (0.03 -> 0.1 up, 0.01 down)."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    ladder = [m * 10.0**e for e in range(exponent - 1, exponent + 2) for m in (1, 3)]
    return float(f"{(min(v for v in ladder if v > lr * 1.01) if up else max(v for v in ladder if v < lr * 0.99)):.3g}")


def wider_grid(probe: str) -> list[float]:
    """The rates beyond the probe's registered grid that tuning adds: one ladder step below it and one above."""
    grid = sorted(PROBES.spec(probe).lr_grid)
    return [ladder_step(grid[0], up=False), ladder_step(grid[-1], up=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", default="all", help="comma-separated probe names, or all")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--valid", type=int, default=48)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--seed", type=int, default=11, help="generator seed (the demo uses 0)")
    parser.add_argument("--clip-seconds", type=float, default=3.0, help="the demo uses 6 s")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.defaults-work"), help="data and bank folder (reused)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    probes = PROBES.names() if args.probes == "all" else [p.strip() for p in args.probes.split(",")]
    args.code = _code_version()  # at the start: the package is imported now, whatever changes on disk during the run

    tick = time.time()
    data = SyntheticConfig(kind="multilabel", seed=args.seed, sizes={"train": args.train, "valid": args.valid, "test": args.test},
                           clip_seconds=args.clip_seconds, classes=tuple(EVENT_CLASSES)[-7:], snr_db=(-6.0, 6.0), max_classes=3)
    dataset = load_synthetic_dataset(args.work / "data", data)
    bank_dir = args.work / f"bank-{data.fingerprint()[:8]}"
    extract_bank(dataset, create_encoder("tiny-mae", device=args.device), bank_dir, progress=False)
    bank = LoadedBank.load(bank_dir, device=args.device)
    metric = primary_metric(bank.multilabel)
    extracted = time.time() - tick

    rows = {}
    for probe in probes:
        started = time.time()
        default = TrainConfig(probe=probe, device=args.device)
        extras = [default.model_copy(update={"lr": lr}) for lr in wider_grid(probe)]
        results = train_probes(bank.train, [default, *extras], bank.evaluation_splits, progress=False)
        chosen, others = results[0], results[1:]
        selection = chosen.lr_selection
        candidates = [(selection.scores[selection.grid.index(chosen.config.lr)], chosen)]
        candidates += [(None if r.diverged else r.metrics["valid"][metric], r) for r in others]
        valid_best, tuned = max(((s, r) for s, r in candidates if s is not None), key=lambda item: item[0])
        default_test, tuned_test = chosen.metrics["test"][metric], tuned.metrics["test"][metric]
        rows[probe] = {
            "default_lr": chosen.config.lr, "default_valid": chosen.metrics["valid"][metric], "default_test": default_test,
            "registered_grid": list(selection.grid), "grid_scores_valid": selection.scores, "edge": selection.edge,
            "tuned_lr": tuned.config.lr, "tuned_valid": valid_best, "tuned_test": tuned_test,
            "wider_grid": sorted([*selection.grid, *(r.config.lr for r in others)]),
            "wider_grid_valid": {f"{r.config.lr:g}": (None if r.diverged else r.metrics["valid"][metric]) for r in others},
            "gap_points": round(100 * (tuned_test - default_test), 2),
            "unstable": chosen.unstable, "warnings": chosen.warnings, "peak_epoch": chosen.peak_epoch,
            "seconds": round(time.time() - started, 1),
        }
        print(f"{probe:>10}: default lr {chosen.config.lr:g} test {default_test:.4f} | tuned lr {tuned.config.lr:g} "
              f"test {tuned_test:.4f} | gap {rows[probe]['gap_points']:+.2f} pts{' (edge ' + selection.edge + ')' if selection.edge else ''}"
              f" [{rows[probe]['seconds']:.0f} s]", flush=True)

        _write(args, data, rows, metric, extracted, tick)  # after every probe: a cut-short run keeps what it measured
    summary = _write(args, data, rows, metric, extracted, tick)
    print(f"max gap {summary['max_gap_points']:+.2f} points; {summary['within_2_points']} of {summary['probes_measured']} probes "
          f"within 2 points; wrote {summary['path']} ({summary['total_seconds']:.0f} s)")


def _code_version() -> str | None:
    """The commit measured (with "+changes" when src/ differs from it), so a result names its code."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=repo, capture_output=True,
                               text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty.strip() else "")


def _write(args, data, rows, metric, extracted, tick) -> dict:
    gaps = [row["gap_points"] for row in rows.values()]
    summary = {
        "data": data.model_dump(mode="json"), "encoder": "tiny-mae", "metric": f"test {metric}", "device": args.device,
        "host": platform.node(), "code": args.code, "protocol": "TrainConfig defaults (AdamW, 30 epochs, batch 128, ASL gamma_neg 4 / gamma_pos 1 / clip 0.05)",
        "probes": rows, "max_gap_points": max(gaps) if gaps else None, "within_2_points": sum(g <= 2.0 for g in gaps),
        "probes_measured": len(gaps), "extract_seconds": round(extracted, 1), "total_seconds": round(time.time() - tick, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"defaults-{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "path": str(out)}


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
