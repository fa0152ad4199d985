"""Train probes on a loaded bank split. Several probes / hyper-parameter settings share one pass
over the data: each batch is read and cast once, then every member takes its step on it.

A config with lr "auto" becomes one member per rate of its grid in the same pass; the best on the
valid split (or on a seeded carve of train) is kept (`LrSelection`). After training every run is
checked for a loss that rose (`TrainResult.unstable`) and for too few optimiser steps, and is scored
per split: metrics, per-class metrics, per-clip probabilities and, on valid, decision thresholds.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import numpy as np
import torch

from .._progress import ProgressBar
from ..bank import LoadedSplit
from ..probes import Probe, shared_pooled_inputs
from .core import (ClassMetrics, DecisionThresholds, LrSelection, SplitScores, TrainConfig, TrainResult, autocast, build_probe, lr_grid,
                   make_loss, optional_to, predict, probabilities)
from .lbfgs import fit_lbfgs
from .stacked import MAX_STACK, StackedMembers, stack_key
from .metrics import compute_metrics, evaluate_scores, f1_optimal_thresholds, per_class_metrics, primary_metric

# Fewer optimiser steps than this in a whole run get a warning: the cosine schedule then has little room to converge.
FEW_STEPS = 100
# A loss that ends above this multiple of its first epoch's mean has diverged in all but name.
LOSS_RISE = 1.5
# lr "auto" on a bank without a valid split: this fraction of train (seeded by data_seed) picks the rate.
CARVE_FRACTION = 0.2


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
    on_epoch: Callable[[int, list[Probe]], Iterable[int] | None] | None = None,
    log: Callable[[str], None] | None = None,
    vectorize: bool = True,
) -> list[TrainResult]:
    """Train every config on `train`, sharing the passes over the data, then evaluate each.

    Configs that share (epochs, batch_size, data_seed) see the same batches in the same order;
    other configs are trained in their own pass. A config with lr "auto" trains every rate of its grid
    (`lr_grid`) in that pass and returns the one best on `evaluate_on["valid"]`; without a valid split,
    the grid is trained on 80 % of train, chosen on the other 20 % (seeded by data_seed), and the
    chosen rate is trained again on all of train.

    Args:
        train: the training split (tokens (N, T, F, D) in RAM or on a GPU).
        configs: one per probe / hyper-parameter setting.
        evaluate_on: named splits to score at the end, e.g. {"valid": ..., "test": ...}. A "valid" split is
            also scored after every epoch (history's "valid_<metric>") and fits the decision thresholds.
        on_epoch: called after every epoch with (epoch number from 1, the group's probes, lr "auto"
            expanded to one probe per rate). It may return indices into that list: those probes take no
            more steps (a search's pruner stopping some trials of a batch; their `stopped_epoch` is set);
            or raise to stop the whole group.
        log: called with one line per notable event (the carve used to choose a rate).
        vectorize: train configs of one probe that differ only in lr, weight decay, seed, warm-up or
            clipping as one stacked model (`StackedMembers`): the same results to float rounding, at a
            fraction of the cost. False trains each as its own model (still in the shared pass).

    Returns:
        one TrainResult per config, in order (for lr "auto": the chosen rate's run, `lr_selection` set).
    """
    evaluate_on = evaluate_on or {}
    valid = evaluate_on.get("valid")
    auto = [i for i, c in enumerate(configs) if c.lr == "auto" and c.solver == "adamw"]
    if auto and valid is None:
        return _train_with_carve(train, configs, auto, evaluate_on, progress, on_epoch, log, vectorize)
    members: list[TrainConfig] = []
    owner: list[int] = []  # members[k] belongs to configs[owner[k]]
    for i, config in enumerate(configs):
        for candidate in ([config.model_copy(update={"lr": lr}) for lr in lr_grid(config)] if i in auto else [config]):
            members.append(candidate)
            owner.append(i)
    trained = _train_members(train, members, valid, progress, on_epoch, vectorize)
    results: list[TrainResult] = []
    for i, config in enumerate(configs):
        candidates = [result for result, o in zip(trained, owner) if o == i]
        results.append(_select(candidates, "valid", train.meta.multilabel) if i in auto else candidates[0])
    for result in results:
        _score(result, evaluate_on)
    return results


def _train_members(train: LoadedSplit, members: list[TrainConfig], valid: LoadedSplit | None, progress: bool,
                   on_epoch, vectorize: bool = True) -> list[TrainResult]:
    results: list[TrainResult | None] = [None] * len(members)
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(members):
        if config.solver == "lbfgs":
            results[i] = fit_lbfgs(train, config)
            continue
        groups.setdefault((config.epochs, config.batch_size, config.data_seed), []).append(i)
    for (epochs, batch_size, data_seed), indices in groups.items():
        trained = _train_group(train, [members[i] for i in indices], epochs, batch_size, data_seed, progress, on_epoch, valid, vectorize)
        for i, result in zip(indices, trained):
            results[i] = result
    return results  # type: ignore[return-value]


def _train_with_carve(train, configs, auto, evaluate_on, progress, on_epoch, log, vectorize=True) -> list[TrainResult]:
    """lr "auto" without a valid split: choose each auto config's rate on a seeded carve of train, then train on all of it."""
    chosen: dict[int, LrSelection] = {}
    for data_seed in sorted({configs[i].data_seed for i in auto}):
        owners = [i for i in auto if configs[i].data_seed == data_seed]
        fit_part, carve = carve_split(train, CARVE_FRACTION, seed=data_seed)
        where = f"a carve of train ({len(carve)} of {len(train)} clips, seed {data_seed}; the bank has no valid split)"
        if log:
            log(f"lr auto: no valid split; choosing the rate on {where}, then training it on all {len(train)} clips")
        grids = [(i, configs[i].model_copy(update={"lr": lr})) for i in owners for lr in lr_grid(configs[i])]
        trained = _train_members(fit_part, [config for _, config in grids], carve, progress, None, vectorize)
        for i in owners:
            candidates = [result for (owner, _), result in zip(grids, trained) if owner == i]
            chosen[i] = _select(candidates, where, train.meta.multilabel).lr_selection  # type: ignore[assignment]
    final = [configs[i].model_copy(update={"lr": chosen[i].chosen}) if i in chosen else configs[i] for i in range(len(configs))]
    results = train_probes(train, final, evaluate_on, progress=progress, on_epoch=on_epoch, vectorize=vectorize)
    for i, selection in chosen.items():
        results[i].lr_selection = selection
    return results


def carve_split(split: LoadedSplit, fraction: float, seed: int) -> tuple[LoadedSplit, LoadedSplit]:
    """A seeded random split of `split` into (rest, carve) with round(fraction * N) clips (at least 2) in the carve."""
    count = len(split)
    if count < 4:
        raise ValueError(f"lr auto needs a valid split, or at least 4 training clips to carve one from; this bank has "
                         f"{count} training clips and no valid split: pass a learning rate (--lr)")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    size = min(count - 2, max(2, round(fraction * count)))
    return _subset(split, order[size:].sort().values, "train-rest"), _subset(split, order[:size].sort().values, "train-carve")


def _subset(split: LoadedSplit, index: torch.Tensor, name: str) -> LoadedSplit:
    device_index = index.to(split.tokens.device)
    ids = [split.meta.clip_ids[i] for i in index.tolist()] if split.meta.clip_ids else []
    return LoadedSplit(tokens=split.tokens[device_index], mask=split.mask[device_index],
                       globals_=None if split.globals is None else split.globals[device_index],
                       labels=split.labels[device_index], lengths=split.lengths[device_index],
                       meta=split.meta.model_copy(update={"split": name, "clip_ids": ids}))


def _select(candidates: list[TrainResult], chosen_on: str, multilabel: bool) -> TrainResult:
    """The candidate with the best final-epoch selection score; stable runs before unstable ones, ties to the lower rate."""
    metric = primary_metric(multilabel)
    key = f"valid_{metric}"

    def score(result: TrainResult) -> float | None:
        if result.diverged or not result.history or not math.isfinite(result.history[-1].get(key, math.nan)):
            return None
        return result.history[-1][key]

    ranked = sorted(candidates, key=lambda r: (score(r) is not None, r.unstable is None, score(r) or 0.0, -r.config.lr))
    best = ranked[-1]
    grid = tuple(r.config.lr for r in candidates)
    edge = None
    if len(grid) > 1 and best.config.lr == grid[0]:
        edge = "low"
    elif len(grid) > 1 and best.config.lr == grid[-1]:
        edge = "high"
    best.lr_selection = LrSelection(grid=grid, scores=[score(r) for r in candidates],
                                    unstable=[r.config.lr for r in candidates if r.unstable], chosen=best.config.lr, edge=edge,
                                    metric=metric, chosen_on=chosen_on)
    return best


def _score(result: TrainResult, evaluate_on: dict[str, LoadedSplit]) -> None:
    """Metrics, per-class metrics and per-clip probabilities on every split; thresholds from valid."""
    if result.diverged:
        return
    for name, split in evaluate_on.items():
        labels = split.labels.cpu().numpy()
        logits = predict(result.probe, split)
        multilabel = split.meta.multilabel
        result.metrics[name] = evaluate_scores(labels, logits, multilabel, split.meta.metrics or None)
        result.class_metrics[name] = ClassMetrics(classes=list(split.meta.classes), **per_class_metrics(labels, logits, multilabel))
        result.scores[name] = SplitScores(clip_ids=list(split.meta.clip_ids), labels=(labels > 0.5).astype(np.uint8),
                                          scores=probabilities(logits, multilabel).astype(np.float32))
    first = next(iter(evaluate_on.values()), None)
    if first is None:
        return
    classes = list(first.meta.classes)
    if not first.meta.multilabel:
        result.thresholds = DecisionThresholds(rule="argmax", classes=classes)
    elif "valid" in result.scores:
        valid = result.scores["valid"]
        values, f1 = f1_optimal_thresholds(valid.labels, valid.scores)
        result.thresholds = DecisionThresholds(rule="f1", classes=classes, values=values, f1=f1, chosen_on="valid",
                                               fallback=[c for c, v in zip(classes, f1) if v is None])
    else:  # no valid split: nothing unseen to fit them on; readers apply their stated fallback
        result.thresholds = DecisionThresholds(rule="f1", classes=classes, fallback=classes, chosen_on=None)


def loss_rise(history: list[dict]) -> str | None:
    """Why a finite loss curve is not trusted, or None.

    Flags a final epoch's mean loss above LOSS_RISE x the first epoch's, and a loss rising over the last
    third of training (positive least-squares slope and its end above 1.1 x the lowest loss before it):
    with a cosine schedule the rate is small there, so a rise means the run went astray.
    """
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if len(losses) < 2:
        return None
    first, last = losses[0], losses[-1]
    if first > 0 and last > LOSS_RISE * first:
        return f"the training loss ended at {last:.4g}, {last / first:.1f}x its first epoch's {first:.4g}: lower the learning rate"
    tail = max(2, len(losses) // 3)
    if len(losses) >= 6:
        before, end = min(losses[:-tail]), losses[-tail:]
        slope = np.polyfit(np.arange(len(end)), np.asarray(end), 1)[0]
        if slope > 0 and end[-1] > 1.1 * before:
            return (f"the training loss rose over the last {tail} epochs (to {end[-1]:.4g}, lowest before {before:.4g}): "
                    "lower the learning rate")
    return None


def _train_group(train: LoadedSplit, configs, epochs, batch_size, data_seed, progress, on_epoch=None,
                 valid: LoadedSplit | None = None, vectorize: bool = True) -> list[TrainResult]:
    multilabel = train.meta.multilabel
    metric = primary_metric(multilabel)
    valid_labels = None if valid is None else valid.labels.cpu().numpy()
    members = []
    for config in configs:
        probe = build_probe(train, config)
        members.append({"config": config, "probe": probe, "loss": make_loss(config, multilabel), "history": [], "seconds": 0.0,
                        "diverged": None, "stopped": None, "stack": None})
    stacks = _make_stacks(members, multilabel) if vectorize else []
    for member in members:
        if member["stack"] is None:
            optimizer = torch.optim.AdamW(member["probe"].param_groups(member["config"].lr, member["config"].weight_decay))
            for group in optimizer.param_groups:
                group["base_lr"] = group["lr"]
            member["optimizer"] = optimizer
    singles = [slot for slot, m in enumerate(members) if m["stack"] is None]
    count = len(train)
    steps_per_epoch = max(1, sum(1 for s in range(0, count, batch_size) if min(batch_size, count - s) >= 2))
    total = steps_per_epoch * epochs
    step = 0
    bar = ProgressBar(progress, f"training {', '.join(dict.fromkeys(c.probe for c in configs))}"
                      + (f" ({len(configs)} settings)" if len(configs) > 1 else ""), total)
    # heads that read only pooled vectors get those (pooled once per split), not the token maps
    pooled = shared_pooled_inputs([m["probe"] for m in members])
    for epoch in range(epochs):
        order = torch.randperm(count, generator=torch.Generator().manual_seed(data_seed * 100_003 + epoch))
        sums = [0.0] * len(members)
        batches = 0
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # BatchNorm cannot train on one sample
                continue
            batch = train.batch(index.to(train.tokens.device), pooled=pooled)
            for stack, slots in stacks:
                _stacked_step(stack, slots, members, sums, batch, step, total, steps_per_epoch)
            for slot in singles:
                member = members[slot]
                if member["diverged"] or member["stopped"]:
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
        for stack, _ in stacks:
            stack.sync()
        valid_logits = {}
        if valid is not None:
            # one forward pass over valid per epoch: the curve users ask for, and lr "auto"'s selection score
            for stack, slots in stacks:
                for slot, logits in zip(slots, stack.predict(valid)):
                    valid_logits[slot] = logits
        for slot, member in enumerate(members):
            if not member["diverged"] and not member["stopped"]:
                entry = {"epoch": epoch + 1, "loss": sums[slot] / max(batches, 1)}
                if valid is not None:
                    logits = valid_logits[slot] if slot in valid_logits else predict(member["probe"], valid)
                    entry[f"valid_{metric}"] = compute_metrics(valid_labels, logits, [metric])[metric]
                member["history"].append(entry)
        if on_epoch is not None:
            try:
                stop = on_epoch(epoch + 1, [member["probe"] for member in members])
            except BaseException:
                bar.close()
                raise
            for slot in stop or ():
                member = members[slot]
                if not member["stopped"] and not member["diverged"]:
                    member["stopped"] = epoch + 1
                    if member["stack"] is not None:
                        member["stack"][0].active[member["stack"][1]] = False
            if all(m["stopped"] or m["diverged"] for m in members):
                break
        _drop_stopped(stacks, members)
    bar.close()
    few = None
    if total < FEW_STEPS:
        few = (f"only {total} optimiser steps ({epochs} epochs x {steps_per_epoch} batches of up to {batch_size} of {count} clips): "
               f"the schedule may end before the probe converges; lower --batch-size or raise --epochs (>= {FEW_STEPS} steps advised)")
    results = []
    for m in members:
        history = m["history"]
        curve = [entry.get(f"valid_{metric}") for entry in history]
        peak = None
        if valid is not None and curve and all(v is not None and math.isfinite(v) for v in curve):
            peak = int(np.argmax(curve)) + 1
        results.append(TrainResult(
            config=m["config"], probe=m["probe"].eval(), history=history, seconds=round(m["seconds"], 2), diverged=m["diverged"],
            unstable=None if m["diverged"] else loss_rise(history), warnings=[few] if few else [], peak_epoch=peak,
            optimizer_steps=total, stopped_epoch=m["stopped"]))
    return results


def _make_stacks(members: list[dict], multilabel: bool) -> list[tuple[StackedMembers, list[int]]]:
    """Members that differ only in `STACKABLE_FIELDS`, in groups of two to MAX_STACK: one stacked model each
    (heads with `stack_trials` False train as separate members of the shared pass)."""
    by_key: dict[str, list[int]] = {}
    for slot, member in enumerate(members):
        if member["probe"].stack_trials:
            by_key.setdefault(stack_key(member["config"]), []).append(slot)
    stacks = []
    for slots in by_key.values():
        for start in range(0, len(slots), MAX_STACK):
            part = slots[start : start + MAX_STACK]
            if len(part) < 2:
                continue
            stack = StackedMembers([members[i]["probe"] for i in part], [members[i]["config"] for i in part],
                                   members[part[0]]["loss"])
            for position, slot in enumerate(part):
                members[slot]["stack"] = (stack, position)
            stacks.append((stack, part))
    return stacks


def _drop_stopped(stacks: list[tuple[StackedMembers, list[int]]], members: list[dict]) -> None:
    """Take stopped (pruned or diverged) members out of their stacks: they cost nothing in later epochs."""
    for stack, slots in stacks:
        positions = [p for p, slot in enumerate(slots) if not (members[slot]["stopped"] or members[slot]["diverged"])]
        if positions and len(positions) < len(slots):
            stack.keep(positions)
            slots[:] = [slots[p] for p in positions]
            for position, slot in enumerate(slots):
                members[slot]["stack"] = (stack, position)


def _stacked_step(stack: StackedMembers, slots: list[int], members: list[dict], sums: list[float], batch: dict, step: int,
                  total: int, steps_per_epoch: int) -> None:
    """One step of a stack whose members are members[slots]; adds each one's loss to sums[slot]."""
    if not bool(stack.active.any()):
        return
    tick = time.perf_counter()
    factors = [_lr_factor(step, total, int(round(members[slot]["config"].warmup_epochs * steps_per_epoch))) for slot in slots]
    values = stack.step(batch, factors)
    share = (time.perf_counter() - tick) / int(stack.active.sum())
    for position, slot in enumerate(slots):
        member = members[slot]
        if not bool(stack.active[position]):
            continue
        member["seconds"] += share
        value = float(values[position])
        if math.isfinite(value):
            sums[slot] += value
        else:
            config = member["config"]
            member["diverged"] = (f"{config.probe}: loss became {value} at step {step}; lower the learning rate (lr={config.lr})")
            stack.active[position] = False


def _step(member: dict, batch: dict, step: int, total: int, steps_per_epoch: int) -> float:
    config, probe, optimizer = member["config"], member["probe"], member["optimizer"]
    device = config.device
    probe.train()
    factor = _lr_factor(step, total, int(round(config.warmup_epochs * steps_per_epoch)))
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    with autocast(config):
        logits = probe.forward_batch(batch, device)
    loss = member["loss"](logits.float(), batch["labels"].to(device))
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
