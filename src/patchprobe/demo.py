"""The offline demo: synthetic localized events -> frozen encoder -> bank -> three probes -> table.

It goes through the same public API a user calls: `load_synthetic_dataset` (written to disk and read
back through the CSV manifest loader), `extract_bank`, `fit`, and the report helpers. Every step is
resumable: rerunning the same command reuses finished data, banks and runs.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from . import __version__
from ._io import read_json, write_json
from .bank import Bank, extract_bank
from .datasets import SyntheticConfig, load_synthetic_dataset
from .encoders import create_encoder
from .report import grouped_bar_chart, markdown_table
from .train import TrainConfig, fit, load_bank_splits, primary_metric

DATASETS = {"multilabel": 0, "singlelabel": 1}  # kind -> generator seed (pretraining used seed 1000)
_METRIC_LABELS = {"map": "macro mAP", "accuracy": "accuracy"}


class DemoConfig(BaseModel):
    """Settings of `patchprobe demo`; saved as `demo_config.json` in the results folder."""

    encoder: str = "tiny-mae"
    encoder_args: dict = Field(default_factory=dict)
    out: Path = Path("patchprobe-demo")
    quick: bool = False
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 1000, "valid": 200, "test": 400})
    clip_seconds: float = 6.0
    probes: list[str] = Field(default_factory=lambda: ["linear", "mhca", "protobin"])
    # Learning rates tried per probe (two decades each); the best on validation is reported on test.
    # protobin needs ~30x larger steps than attentive probes: encoder tokens share a dominant
    # direction, so max-cosine descriptors vary little across clips and the head needs large weights
    # (measured on tiny-mae: lr 1e-3 -> 0.60 mAP, 1e-2 -> 0.70, 1e-1 -> 0.79, 3e-1 -> 0.76).
    lr_grid: dict[str, list[float]] = Field(
        default_factory=lambda: {"linear": [1e-3, 1e-2, 1e-1], "mhca": [1e-3, 3e-3, 1e-2], "protobin": [1e-2, 3e-2, 1e-1]}
    )
    epochs: int = 30
    weight_decay: float = 1e-4
    prototypes_per_class: int = 20
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def quick_mode(cls, **overrides) -> "DemoConfig":
        """The CI-sized demo: fewer, same-length clips and fewer epochs (under 4 minutes on 2 cores)."""
        base = {
            "quick": True,
            "sizes": {"train": 400, "valid": 100, "test": 200},
            "epochs": 30,
            "lr_grid": {"linear": [1e-2], "mhca": [3e-3], "protobin": [1e-1]},
        }
        return cls(**{**base, **overrides})


def _say(message: str, console) -> None:
    if console is not None:
        console.print(message)


def run_demo(config: DemoConfig, progress: bool = True, console=None) -> dict:
    """Run the demo end to end and write `summary.json`, `results.md` and `demo_results.png` under `config.out`.

    Returns:
        the summary dict (also written to summary.json).
    """
    started = time.time()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "demo_config.json", config.model_dump(mode="json"))
    encoder = create_encoder(config.encoder, device=config.device, **config.encoder_args)
    _say(f"[bold]patchprobe demo[/bold] encoder={encoder.name} ({encoder.global_source} global vector, D={encoder.token_dim})", console)
    summary: dict = {
        "encoder": encoder.describe(),
        "config": config.model_dump(mode="json"),
        "library_version": __version__,
        "torch": torch.__version__,
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform()},
        "datasets": {},
        "timings": {},
    }
    for kind, seed in DATASETS.items():
        tick = time.time()
        synthetic = SyntheticConfig(kind=kind, seed=seed, sizes=config.sizes, clip_seconds=config.clip_seconds)
        dataset = load_synthetic_dataset(out / "data" / kind, synthetic, progress=progress)
        # Keyed by config hash, so another size or seed of the same encoder gets its own bank.
        bank_dir = out / "banks" / f"{encoder.name}-{encoder.config_hash()[:8]}" / kind
        _say(f"{kind}: {dataset.describe()['sizes']} clips, {len(dataset.classes)} classes -> bank {bank_dir}", console)
        extract_bank(dataset, encoder, bank_dir, progress=progress)
        extracted = time.time()
        summary["datasets"][kind] = _train_and_select(config, kind, bank_dir, out, progress)
        summary["datasets"][kind]["bank"] = _bank_summary(bank_dir)
        summary["timings"][kind] = {"data_and_extract_s": round(extracted - tick, 1), "train_s": round(time.time() - extracted, 1)}
    summary["timings"]["total_s"] = round(time.time() - started, 1)
    summary["gaps"] = _gaps(summary, config.probes)
    write_json(out / "summary.json", summary)
    (out / "results.md").write_text(results_markdown(summary) + "\n")
    _figure(summary, out / "demo_results.png")
    return summary


def _train_and_select(config: DemoConfig, kind: str, bank_dir: Path, out: Path, progress: bool) -> dict:
    splits = load_bank_splits(bank_dir, device=config.device)
    multilabel = splits["train"].meta.multilabel
    metric = primary_metric(multilabel)
    configs, dirs = [], []
    for probe in config.probes:
        args = {"prototypes_per_class": config.prototypes_per_class} if probe == "protobin" else {}
        for lr in config.lr_grid.get(probe, [1e-3]):
            configs.append(
                TrainConfig(
                    probe=probe, probe_args=args, epochs=config.epochs, lr=lr, weight_decay=config.weight_decay,
                    seed=config.seed, data_seed=config.seed, device=config.device,
                )
            )
            dirs.append(out / "runs" / bank_dir.parent.name / kind / probe / f"lr={lr:g}")
    todo = [i for i, (c, d) in enumerate(zip(configs, dirs)) if not _finished(d, c)]
    if todo:
        fit(bank_dir, [configs[i] for i in todo], [dirs[i] for i in todo], splits=splits, progress=progress)
    table = {}
    for probe in config.probes:
        candidates = [(read_json(d / "metrics.json"), d) for c, d in zip(configs, dirs) if c.probe == probe]
        metrics, best_dir = max(candidates, key=lambda item: item[0]["valid"][metric])
        table[probe] = {
            "metric": metric,
            "test": metrics["test"][metric],
            "valid": metrics["valid"][metric],
            "test_auroc": metrics["test"]["auroc"],
            "lr": read_json(best_dir / "config.json")["train"]["lr"],
            "num_parameters": metrics["num_parameters"],
            "train_seconds": metrics["train_seconds"],
            "run": str(best_dir.relative_to(out)),
            "lr_candidates": {str(read_json(d / "config.json")["train"]["lr"]): m["valid"][metric] for m, d in candidates},
        }
    return {"multilabel": multilabel, "metric": metric, "probes": table}


def _finished(run_dir: Path, config: TrainConfig) -> bool:
    if not (run_dir / "metrics.json").exists():
        return False
    return read_json(run_dir / "config.json")["train"] == config.model_dump()


def _bank_summary(bank_dir: Path) -> dict:
    described = Bank(bank_dir).describe()
    return {name: {k: split[k] for k in ("clips", "token_grid", "bytes", "bytes_per_clip")} for name, split in described["splits"].items()}


def _gaps(summary: dict, probes: list[str]) -> dict:
    gaps = {}
    for kind, block in summary["datasets"].items():
        scores = {p: block["probes"][p]["test"] for p in probes}
        if "protobin" in scores:
            gaps[kind] = {f"protobin_minus_{p}": round(scores["protobin"] - s, 4) for p, s in scores.items() if p != "protobin"}
    return gaps


def results_markdown(summary: dict) -> str:
    """The demo's comparison table in Markdown."""
    import pandas as pd

    kinds = list(summary["datasets"])
    probes = list(summary["datasets"][kinds[0]]["probes"])
    rows = []
    for probe in probes:
        row = {"probe": probe}
        for kind in kinds:
            cell = summary["datasets"][kind]["probes"][probe]
            row[f"{kind} test {cell['metric']}"] = cell["test"]
            row[f"{kind} lr"] = f"{cell['lr']:g}"
        row["params (multilabel)"] = summary["datasets"][kinds[0]]["probes"][probe]["num_parameters"]
        rows.append(row)
    header = f"encoder: {summary['encoder']['name']} (global vector: {summary['encoder']['global_source']})"
    return header + "\n\n" + markdown_table(pd.DataFrame(rows))


def _figure(summary: dict, path: Path) -> None:
    values = {
        f"{kind}\n(test {_METRIC_LABELS.get(block['metric'], block['metric'])})": {p: c["test"] for p, c in block["probes"].items()}
        for kind, block in summary["datasets"].items()
    }
    grouped_bar_chart(values, path, title=f"patchprobe demo: {summary['encoder']['name']} on synthetic events", ylabel="score")
