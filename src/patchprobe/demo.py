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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._io import write_json
from ._version import __version__
from .bank import Bank, LoadedBank, extract_bank
from .datasets import SyntheticConfig, load_synthetic_dataset
from .encoders import create_encoder
from .probes import PROBES
from .report import ReportConfig, grouped_bar_chart, markdown_table, ranked_bar_chart, write_report
from .sweep import grid_then_seeds, seed_summary
from .train import Run, TrainConfig, fit, primary_metric, search_l2

DATASETS = {"multilabel": 0, "singlelabel": 1}  # kind -> generator seed (pretraining used seed 1000)
_METRIC_LABELS = {"map": "macro mAP", "accuracy": "accuracy"}




def registered_probes() -> list[str]:
    """Every registered probe, family by family (the order of the demo's tables)."""
    return [name for names in PROBES.families().values() for name in names]


def registered_lr_grids() -> dict[str, list[float]]:
    """probe -> the learning rates the demo tries, declared with each probe's registration (`lr_grid`).

    The best rate on validation (first seed) is reported on test; a pick at a grid edge is flagged in the table.
    """
    return {name: list(PROBES.spec(name).lr_grid) for name in registered_probes()}


# The rate the full demo chose on validation for its three default probes; the quick demo trains only that one.
QUICK_PICKS = {"linear": 1e-1, "mhca": 1e-2, "protobin": 1e-1}


def quick_rate(probe: str) -> float:
    """The one learning rate `--quick` trains `probe` at, always a member of its registered grid (the one source of
    rates): the full demo's pick where known, else the grid's middle value.

    Raises:
        ValueError when a pick is no longer in the probe's registered grid (the registration changed: re-pick).
    """
    grid = list(PROBES.spec(probe).lr_grid)
    rate = QUICK_PICKS.get(probe, grid[len(grid) // 2])
    if not any(abs(rate - value) <= 1e-9 * value for value in grid):
        raise ValueError(f"quick demo: {probe}'s pick {rate:g} is not in its registered lr_grid {grid}; choose one of those")
    return rate


def _family_of() -> dict[str, str]:
    return {name: PROBES.spec(name).family for name in PROBES.names()}


class DemoConfig(BaseModel):
    """Settings of `patchprobe demo`; saved as `demo_config.json` in the results folder.

    `probes=["all"]` means every registered probe. With several `seeds`, the learning rate is chosen
    on validation with the first seed, then every seed trains at that rate and the table reports
    mean and standard deviation over seeds.
    """

    model_config = ConfigDict(extra="forbid")

    encoder: str = "tiny-mae"
    encoder_args: dict = Field(default_factory=dict)
    out: Path = Path("patchprobe-demo")
    quick: bool = False
    kinds: list[str] = Field(default_factory=lambda: list(DATASETS))
    sizes: dict[str, int] = Field(default_factory=lambda: {"train": 1000, "valid": 200, "test": 400})
    clip_seconds: float = 6.0
    probes: list[str] = Field(default_factory=lambda: ["linear", "mhca", "protobin"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    lr_grid: dict[str, list[float]] = Field(default_factory=registered_lr_grids)
    epochs: int = 30
    weight_decay: float = 1e-4
    prototypes_per_class: int = 20
    # the linear probe also solved to convergence (L-BFGS, L2 chosen on validation): the fair baseline
    converged_baseline: bool = True
    device: str = "cpu"

    @field_validator("probes")
    @classmethod
    def _known_probes(cls, probes: list[str]) -> list[str]:
        if probes == ["all"]:
            return registered_probes()
        for name in probes:
            PROBES.get(name)  # raises with the list of known probes
        return probes

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in DATASETS]
        if unknown or not kinds:
            raise ValueError(f"unknown demo dataset kind(s) {unknown}; choose from {list(DATASETS)}")
        return kinds

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers (got {seeds})")
        return seeds

    @classmethod
    def quick_mode(cls, **overrides) -> "DemoConfig":
        """The CI-sized demo: fewer, same-length clips and one learning rate per probe (under 4 minutes on 2 cores).

        The rate is taken from the probe's registered grid: the full demo's pick where known (`QUICK_PICKS`),
        else the middle of the grid.
        """
        base = {
            "quick": True,
            "sizes": {"train": 400, "valid": 100, "test": 200},
            "epochs": 30,
            "lr_grid": {name: [quick_rate(name)] for name in registered_probes()},
        }
        return cls(**{**base, **overrides})

    def grid(self, probe: str) -> list[float]:
        return self.lr_grid.get(probe) or list(PROBES.spec(probe).lr_grid)


def _say(message: str, console) -> None:
    if console is not None:
        console.print(message)


def run_demo(config: DemoConfig, progress: bool = True, console=None) -> dict:
    """Run the demo end to end and write `summary.json`, `results.md`, `demo_results.png` and `report/` (the
    `patchprobe report` page of its runs) under `config.out`.

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
    for kind in config.kinds:
        seed = DATASETS[kind]
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
    # the comparison as the paper shows it, read back from the folder just written (as `patchprobe report` would)
    write_report([out], out / "report", ReportConfig(title=f"patchprobe demo: {encoder.name} on synthetic events"))
    _say(f"report: {out / 'report' / 'index.html'} (tables, figures and statistics; opens offline)", console)
    return summary


def _train_and_select(config: DemoConfig, kind: str, bank_dir: Path, out: Path, progress: bool) -> dict:
    """Learning-rate search with the first seed, then the remaining seeds at each probe's chosen rate."""
    bank = LoadedBank.load(bank_dir, device=config.device)
    variants = {
        probe: TrainConfig(
            probe=probe, probe_args={"prototypes_per_class": config.prototypes_per_class} if PROBES.spec(probe).family == "prototype" else {},
            epochs=config.epochs, weight_decay=config.weight_decay, device=config.device,
        )
        for probe in config.probes
    }
    table = grid_then_seeds(bank, variants, {probe: config.grid(probe) for probe in config.probes}, config.seeds,
                            out / "runs" / bank_dir.parent.name / kind, progress=progress)
    if config.converged_baseline:
        table["linear (L-BFGS)"] = _converged_linear(bank, out / "runs" / bank_dir.parent.name / kind / "linear-lbfgs",
                                                     config.device, progress)
    for cell in table.values():
        cell["run"] = str(Path(cell["run"]).relative_to(out))
    return {"multilabel": bank.multilabel, "metric": primary_metric(bank.multilabel), "seeds": config.seeds, "probes": table}


def _converged_linear(bank: LoadedBank, runs: Path, device: str, progress: bool) -> dict:
    """The linear probe solved to convergence (L-BFGS), its L2 strength chosen on validation: the fair baseline."""
    chosen, scores, edge = search_l2(bank.train, bank["valid"], TrainConfig(probe="linear", device=device))
    folder = runs / f"l2={chosen.weight_decay:g}"
    # a finished run of this setting is reused; a stale one (another bank) is retrained
    fit(bank, [chosen], [folder], progress=progress, overwrite=True)
    return {
        **seed_summary([Run(folder)], primary_metric(bank.multilabel)),
        "lr": None, "l2": chosen.weight_decay, "lr_at_grid_edge": edge is not None,
        "l2_candidates": {f"{k:g}": v for k, v in scores.items()}, "solver": "lbfgs",
    }


def _bank_summary(bank_dir: Path) -> dict:
    described = Bank(bank_dir).describe()
    return {name: {k: split[k] for k in ("clips", "token_grid", "bytes", "bytes_per_clip")} for name, split in described["splits"].items()}


def _gaps(summary: dict, probes: list[str]) -> dict:
    gaps = {}
    for kind, block in summary["datasets"].items():
        scores = {p: cell["test"] for p, cell in block["probes"].items()}
        if "protobin" in scores:
            gaps[kind] = {f"protobin_minus_{p}": round(scores["protobin"] - s, 4) for p, s in scores.items() if p != "protobin"}
    return gaps


def results_markdown(summary: dict) -> str:
    """The demo's comparison table in Markdown (mean ± sd over seeds when there are several)."""
    import pandas as pd

    kinds = list(summary["datasets"])
    probes = list(summary["datasets"][kinds[0]]["probes"])
    family_of = _family_of()
    rows = []
    for probe in probes:
        row = {"probe": probe, "family": family_of.get(probe, "-")}
        for kind in kinds:
            cell = summary["datasets"][kind]["probes"][probe]
            seeds = len(cell.get("test_per_seed", {})) or 1
            row[f"{kind} test {cell['metric']}"] = f"{cell['test']:.3f} ± {cell['test_sd']:.3f}" if seeds > 1 else cell["test"]
            setting = f"L2 {cell['l2']:g}" if cell.get("solver") == "lbfgs" else f"{cell['lr']:g}"
            row[f"{kind} lr"] = setting + (" (edge)" if cell.get("lr_at_grid_edge") else "")
        row[f"params ({kinds[0]})"] = summary["datasets"][kinds[0]]["probes"][probe]["num_parameters"]
        rows.append(row)
    seeds = summary["config"].get("seeds", [0])
    header = f"encoder: {summary['encoder']['name']} (global vector: {summary['encoder']['global_source']})"
    if len(seeds) > 1:
        header += f"; mean ± sd over seeds {seeds}; lr chosen on validation with seed {seeds[0]}"
    return header + "\n\n" + markdown_table(pd.DataFrame(rows))


def _figure(summary: dict, path: Path) -> None:
    blocks = summary["datasets"]
    probes = list(next(iter(blocks.values()))["probes"])
    title = f"patchprobe demo: {summary['encoder']['name']} on synthetic events"
    label = {kind: f"{kind} (test {_METRIC_LABELS.get(b['metric'], b['metric'])})" for kind, b in blocks.items()}
    if len(probes) <= 4:
        values = {label[k].replace(" (", "\n("): {p: c["test"] for p, c in b["probes"].items()} for k, b in blocks.items()}
        errors = {label[k].replace(" (", "\n("): {p: c.get("test_sd", 0.0) for p, c in b["probes"].items()} for k, b in blocks.items()}
        grouped_bar_chart(values, path, title=title, ylabel="score", errors=errors)
        return
    family_of = _family_of()
    panels = {label[k]: {p: (c["test"], c.get("test_sd", 0.0)) for p, c in b["probes"].items()} for k, b in blocks.items()}
    ranked_bar_chart(panels, path, title=title, groups=family_of)
