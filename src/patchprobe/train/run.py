"""Train probes from a bank folder and write self-contained run folders (config, metrics, weights)."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from .. import __version__
from .._io import read_json, write_json, atomic_write_with
from ..bank import Bank, LoadedSplit
from ..errors import BankError
from ..probes import Probe, create_probe
from .trainer import TrainConfig, TrainResult, train_probes


def load_bank_splits(bank: str | Path, device: str = "cpu") -> dict[str, LoadedSplit]:
    """Every split of a bank in memory on `device`; the bank must have a train split."""
    handle = Bank(bank)
    if "train" not in handle.splits:
        raise BankError(f"{bank}: no train split; extract one with `patchprobe extract`")
    return {name: handle.split(name).load(device=device) for name in handle.splits}


def fit(
    bank: str | Path,
    configs: list[TrainConfig],
    out_dirs: list[str | Path],
    splits: dict[str, LoadedSplit] | None = None,
    progress: bool = True,
) -> list[TrainResult]:
    """Train each config on the bank's train split, evaluate on valid/test, write one folder per run.

    Each folder gets `config.json` (the TrainConfig and the bank's identity), `metrics.json`
    (`{"valid": {...}, "test": {...}}`), `history.json` (loss per epoch) and `probe.safetensors`.

    Args:
        bank: bank root folder.
        configs, out_dirs: one output folder per config.
        splits: already loaded splits (saves re-reading the bank when called repeatedly).
    """
    if len(configs) != len(out_dirs):
        raise ValueError(f"{len(configs)} configs but {len(out_dirs)} output folders")
    splits = splits or load_bank_splits(bank, device=configs[0].device if configs else "cpu")
    evaluate_on = {name: split for name, split in splits.items() if name != "train"}
    results = train_probes(splits["train"], configs, evaluate_on, progress=progress)
    train_meta = splits["train"].meta
    identity = {
        "path": str(Path(bank).resolve()),
        "encoder": train_meta.encoder,
        "encoder_config_hash": train_meta.encoder_config_hash,
        "dataset": train_meta.dataset,
        "dataset_fingerprints": {name: split.meta.dataset_fingerprint for name, split in splits.items()},
        "classes": train_meta.classes,
        "multilabel": train_meta.multilabel,
    }
    for result, out in zip(results, out_dirs):
        save_run(result, out, identity)
    return results


def save_run(result: TrainResult, out: str | Path, bank_identity: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probe = result.probe
    architecture = {
        "name": result.config.probe,
        **probe.architecture(),
        "probe_args": result.config.probe_args,
        "num_parameters": probe.num_parameters(),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
    atomic_write_with(out / "probe.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json(out / "history.json", result.history)
    write_json(
        out / "config.json",
        {"train": result.config.model_dump(), "probe": architecture, "bank": bank_identity, "library_version": __version__},
    )
    # metrics.json is written last: its presence marks a finished run.
    write_json(
        out / "metrics.json",
        {**result.metrics, "probe": result.config.probe, "num_parameters": architecture["num_parameters"],
         "train_seconds": result.seconds, "diverged": result.diverged},
    )


def load_probe(run_dir: str | Path, device: str = "cpu") -> Probe:
    """Rebuild a trained probe from its run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise BankError(f"{run_dir}: not a run folder (no config.json)")
    arch = read_json(run_dir / "config.json")["probe"]
    probe = create_probe(
        arch["name"], arch["token_dim"], arch["num_classes"], arch["global_dim"], arch.get("freq_tokens", 0), **arch["probe_args"]
    )
    probe.load_state_dict(load_file(str(run_dir / "probe.safetensors")))
    return probe.to(device).eval()


