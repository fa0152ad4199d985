"""Sensitivity of the prototype probes to J (prototypes per class): test mAP vs J, binarized vs float.

    python scripts/j_sweep.py BANK OUT [--probes protobin protofloat] [--J 1 2 5 10 20 40]
                              [--lrs 0.03 0.1 0.3 1.0] [--seeds 0 1 2]

For every (probe, J) the learning rate is chosen on validation with the first seed, then all seeds
train at that rate (`patchprobe.sweep.grid_then_seeds`; resumable: finished runs are reused).
Writes OUT/j_sweep.md (table), OUT/j_sweep.json and OUT/map_vs_prototypes_per_class.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from patchprobe._io import write_json
from patchprobe.report import markdown_table
from patchprobe.report.figures import sweep_plot
from patchprobe.sweep import grid_then_seeds
from patchprobe.bank import LoadedBank
from patchprobe.train import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bank", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--probes", nargs="+", default=["protobin", "protofloat"])
    parser.add_argument("--J", nargs="+", type=int, default=[1, 2, 5, 10, 20, 40])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.03, 0.1, 0.3, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    variants = {
        f"{probe}/J={j}": TrainConfig(probe=probe, probe_args={"prototypes_per_class": j}, epochs=args.epochs, device=args.device)
        for probe in args.probes
        for j in args.J
    }
    bank = LoadedBank.load(args.bank, device=args.device)
    table = grid_then_seeds(bank, variants, {name: args.lrs for name in variants}, args.seeds, args.out)
    rows = []
    for name, cell in table.items():
        probe, j = name.split("/J=")
        for seed, value in cell["test_per_seed"].items():
            rows.append({"probe": probe, "prototypes_per_class": int(j), "seed": int(seed), "split": "test",
                         "metric": cell["metric"], "value": value})
    frame = pd.DataFrame(rows)
    metric = next(iter(table.values()))["metric"]
    summary = sweep_plot(frame, "prototypes_per_class", args.out / f"{metric}_vs_prototypes_per_class.png", metric=metric,
                         title=f"test {metric} vs J (lr chosen per point on valid, {len(args.seeds)} seeds)")
    summary["lr"] = [table[f"{p}/J={j}"]["lr"] for p, j in zip(summary["probe"], summary["prototypes_per_class"])]
    summary["lr_at_grid_edge"] = [table[f"{p}/J={j}"]["lr_at_grid_edge"] for p, j in zip(summary["probe"], summary["prototypes_per_class"])]
    summary["parameters"] = [table[f"{p}/J={j}"]["num_parameters"] for p, j in zip(summary["probe"], summary["prototypes_per_class"])]
    write_json(args.out / "j_sweep.json", table)
    (args.out / "j_sweep.md").write_text(markdown_table(summary, floatfmt=".4f") + "\n")
    print(markdown_table(summary, floatfmt=".4f"))


if __name__ == "__main__":
    main()
