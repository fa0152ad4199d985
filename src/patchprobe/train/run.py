"""Train probes on a bank and write one run folder each (see `store.Run` for the folder's layout)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..bank import LoadedBank
from ..errors import RunError
from ..probes import Probe
from .core import TrainConfig, TrainResult
from .store import Run
from .trainer import train_probes


def fit(
    bank: str | Path | LoadedBank,
    configs: list[TrainConfig],
    out_dirs: list[str | Path],
    progress: bool = True,
    overwrite: bool = False,
    wait_seconds: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """Train each config on the bank's train split, evaluate on its other splits, write one run folder per config.

    A config with lr "auto" (the default) trains its rate grid in the shared pass and writes the run of the
    rate chosen on valid (see `train_probes`).

    A folder that already holds a finished run of the same config on the same bank data is reused
    (its result is loaded, nothing is trained). One holding a different finished run is refused
    unless `overwrite`. Each folder is locked while this call runs, so a second process writing it
    gets a RunError naming it; each run is written whole and renamed into place (see `Run.write`).

    Args:
        bank: a bank folder, or a LoadedBank (saves re-reading the bank when called repeatedly).
        configs, out_dirs: one output folder per config.
        overwrite: replace finished runs of another setting.
        log: called with notable events of training (e.g. lr "auto" choosing on a carve of train).
        wait_seconds: how long to wait for another process writing one of the folders (then reuse its run
            if it is this setting); 0 refuses at once. A lock left by a dead process on this host is taken over.

    Returns:
        one TrainResult per config, in order (`reused` True for the folders that were kept).
    """
    if len(configs) != len(out_dirs):
        raise ValueError(f"{len(configs)} configs but {len(out_dirs)} output folders")
    folders = [Path(out) for out in out_dirs]
    resolved = [folder.resolve() for folder in folders]
    if len(set(resolved)) != len(resolved):
        twice = sorted({str(f) for f in resolved if resolved.count(f) > 1})
        raise ValueError(f"one output folder per config: {', '.join(twice)} given more than once")
    if not configs:
        return []
    loaded = LoadedBank.coerce(bank, device=configs[0].device)
    locks = []
    try:
        deadline = time.monotonic() + wait_seconds
        for folder in folders:
            lock = Run.lock(folder)
            while not lock.acquire():
                if time.monotonic() >= deadline:
                    raise RunError(f"{folder}: another process is writing this run ({lock.describe()}); "
                                   "wait for it to finish, or use another output folder")
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            locks.append(lock)
        results: list[TrainResult | None] = [None] * len(configs)
        todo = []
        for i, (config, folder) in enumerate(zip(configs, folders)):
            existing = Run.check_writable(folder, config, loaded.identity, overwrite=overwrite)
            if existing is not None:
                results[i] = existing.result(device=config.device)
            else:
                todo.append(i)
        trained = train_probes(loaded.train, [configs[i] for i in todo], loaded.evaluation_splits, progress=progress,
                               log=log) if todo else []
        for i, result in zip(todo, trained):
            Run.write(folders[i], result, loaded.identity)
            results[i] = result
        return results  # type: ignore[return-value]
    finally:
        for lock in locks:
            lock.release()


def load_probe(run_dir: str | Path, device: str = "cpu") -> Probe:
    """Rebuild a trained probe from its run folder (eval mode, on `device`)."""
    return Run(run_dir).probe(device)
