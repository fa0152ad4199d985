"""Train probes on a loaded bank split. Several probes / hyper-parameter settings share one pass
over the data: each batch is read and cast once, then every member takes its step on it."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from .._progress import ProgressBar
from ..bank import LoadedSplit
from ..probes import Probe, shared_pooled_inputs
from .core import TrainConfig, TrainResult, build_probe, evaluate, loss_name, optional_to
from .lbfgs import fit_lbfgs
from .losses import LOSSES


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_probes(
    train: LoadedSplit,
    configs: list[TrainConfig],
    evaluate_on: dict[str, LoadedSplit] | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, list[Probe]], None] | None = None,
) -> list[TrainResult]:
    """Train every config on `train`, sharing the passes over the data, then evaluate each.

    Configs that share (epochs, batch_size, data_seed) see the same batches in the same order;
    other configs are trained in their own pass.

    Args:
        train: the training split (tokens (N, T, F, D) in RAM or on a GPU).
        configs: one per probe / hyper-parameter setting.
        evaluate_on: named splits to score at the end, e.g. {"valid": ..., "test": ...}.
        on_epoch: called after every epoch with (epoch number from 1, the group's probes); it may raise
            to stop training (a search's pruner does).

    Returns:
        one TrainResult per config, in order.
    """
    results: list[TrainResult | None] = [None] * len(configs)
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        if config.solver == "lbfgs":
            results[i] = fit_lbfgs(train, config)
            continue
        groups.setdefault((config.epochs, config.batch_size, config.data_seed), []).append(i)
    for (epochs, batch_size, data_seed), members in groups.items():
        trained = _train_group(train, [configs[i] for i in members], epochs, batch_size, data_seed, progress, on_epoch)
        for i, result in zip(members, trained):
            results[i] = result
    for result in results:
        if result.diverged:
            continue
        for name, split in (evaluate_on or {}).items():
            result.metrics[name] = evaluate(result.probe, split)
    return results  # type: ignore[return-value]


def _train_group(train: LoadedSplit, configs, epochs, batch_size, data_seed, progress, on_epoch=None) -> list[TrainResult]:
    multilabel = train.meta.multilabel
    members = []
    for config in configs:
        probe = build_probe(train, config)
        optimizer = torch.optim.AdamW(probe.param_groups(config.lr, config.weight_decay))
        for group in optimizer.param_groups:
            group["base_lr"] = group["lr"]
        members.append(
            {
                "config": config,
                "probe": probe,
                "optimizer": optimizer,
                "loss": LOSSES[loss_name(config, multilabel)],
                "history": [],
                "seconds": 0.0,
                "diverged": None,
            }
        )
    count = len(train)
    steps_per_epoch = max(1, sum(1 for s in range(0, count, batch_size) if min(batch_size, count - s) >= 2))
    total = steps_per_epoch * epochs
    step = 0
    bar = ProgressBar(progress, f"training {', '.join(c.probe for c in configs)}", total)
    for epoch in range(epochs):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(data_seed * 100_003 + epoch))
        sums = [0.0] * len(members)
        batches = 0
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # BatchNorm cannot train on one sample
                continue
            # heads that read only pooled vectors get those (pooled once per split), not the token maps
            batch = train.batch(index.to(train.tokens.device), pooled=shared_pooled_inputs([m["probe"] for m in members]))
            for slot, member in enumerate(members):
                if member["diverged"]:
                    continue
                tick = time.perf_counter()
                try:
                    sums[slot] += _step(member, batch, step, total, steps_per_epoch)
                except FloatingPointError as exc:
                    member["diverged"] = str(exc)
                member["seconds"] += time.perf_counter() - tick
            batches += 1
            step += 1
            bar.advance()
        for slot, member in enumerate(members):
            if not member["diverged"]:
                member["history"].append({"epoch": epoch + 1, "loss": sums[slot] / max(batches, 1)})
        if on_epoch is not None:
            try:
                on_epoch(epoch + 1, [member["probe"] for member in members])
            except BaseException:
                bar.close()
                raise
    bar.close()
    return [
        TrainResult(config=m["config"], probe=m["probe"].eval(), history=m["history"], seconds=round(m["seconds"], 2),
                    diverged=m["diverged"])
        for m in members
    ]


def _step(member: dict, batch: dict, step: int, total: int, steps_per_epoch: int) -> float:
    config, probe, optimizer = member["config"], member["probe"], member["optimizer"]
    device = config.device
    probe.train()
    factor = _lr_factor(step, total, int(round(config.warmup_epochs * steps_per_epoch)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    logits = probe.forward_batch(batch, device)
    loss = member["loss"](logits, batch["labels"].to(device))
    auxiliary = probe.auxiliary_loss()
    if auxiliary is not None:
        loss = loss + auxiliary
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip:
        torch.nn.utils.clip_grad_norm_(probe.parameters(), config.grad_clip)
    optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"{config.probe}: loss became {value} at step {step}; lower the learning rate (lr={config.lr})")
    return value
