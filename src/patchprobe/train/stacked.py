"""K settings of one probe trained as one model: parameters stacked along a leading axis, one
vmapped forward/backward per batch, one AdamW step over the stacked tensors.

The settings a stack may differ in are those that do not change the computation's shape: the
learning rate, weight decay, initialisation seed, warm-up and gradient clipping (`stack_key`).
Each member keeps its own optimiser state, learning-rate schedule and clipping, so a stacked run
equals the same member trained alone up to float rounding (tests/test_stacked.py). What the stack
saves is everything the K runs would otherwise do K times: reading, casting and pooling the batch,
the Python and dispatch overhead of K small steps, and (for prototype heads) K small similarity
matrix products, which become one product with K times as many prototypes.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..bank import LoadedSplit
from ..probes import Probe, shared_pooled_inputs
from .core import TrainConfig, autocast

# AdamW's constants (torch.optim.AdamW's defaults, which the one-at-a-time path uses).
BETAS = (0.9, 0.999)
EPS = 1e-8
# At most this many settings share one stacked model: activations grow with K, and past a few
# dozen the batched step no longer gets cheaper per member.
MAX_STACK = 16
# Settings that may differ inside one stack (everything else must be equal).
STACKABLE_FIELDS = ("lr", "lr_grid", "weight_decay", "seed", "warmup_epochs", "grad_clip")


def stack_key(config: TrainConfig) -> str:
    """Configs with equal keys can be trained as one stacked model."""
    return json.dumps(config.model_dump(mode="json", exclude=set(STACKABLE_FIELDS)), sort_keys=True)


class _LossOfBatch(nn.Module):
    """One member's training loss on a batch: the probe's logits, its loss, and its auxiliary term.

    A module so that `functional_call` can swap the probe's parameters for one slice of the stack.
    """

    def __init__(self, probe: Probe, loss, config: TrainConfig) -> None:
        super().__init__()
        self.probe = probe
        self.loss = loss
        self.config = config

    def forward(self, batch: dict, device, labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.config):
            logits = self.probe.forward_batch(batch, device)
        loss = self.loss(logits.float(), labels)
        auxiliary = self.probe.auxiliary_loss()
        return loss if auxiliary is None else loss + auxiliary


class _Logits(nn.Module):
    def __init__(self, probe: Probe) -> None:
        super().__init__()
        self.probe = probe

    def forward(self, batch: dict, device) -> torch.Tensor:
        return self.probe.forward_batch(batch, device)


class StackedMembers:
    """K probes of one architecture trained together; `probes` are written back with `sync()`.

    Args:
        probes: K freshly built probes (same class and arguments; each seeded by its own config).
        configs: their TrainConfigs (equal `stack_key`).
        loss: the loss all of them train with: (logits (B, C), targets (B, C)) -> scalar.
    """

    def __init__(self, probes: list[Probe], configs: list[TrainConfig], loss) -> None:
        keys = {stack_key(c) for c in configs}
        if len(keys) != 1 or len(probes) != len(configs) or not probes:
            raise ValueError("StackedMembers: every config must differ only in " + ", ".join(STACKABLE_FIELDS))
        self.probes, self.configs = probes, configs
        self.count = len(probes)
        self.device = configs[0].device
        self._loss_template = _LossOfBatch(copy.deepcopy(probes[0]), loss, configs[0])
        self._logits_template = _Logits(self._loss_template.probe)
        self.params, self.buffers = stack_module_state(probes)
        # per stacked parameter: each member's base lr and weight decay, from the member's own groups
        settings = [_group_settings(probe, config) for probe, config in zip(probes, configs)]  # name -> (lr, decay)
        self.base_lr: dict[str, torch.Tensor] = {}
        self.weight_decay: dict[str, torch.Tensor] = {}
        for name in list(self.params):
            lrs = [member.get(name, (None, 0.0))[0] for member in settings]
            decays = [member.get(name, (None, 0.0))[1] for member in settings]
            if any(lr is None for lr in lrs):  # not in any optimiser group: frozen
                self.params[name].requires_grad_(False)
                continue
            self.base_lr[name] = torch.tensor(lrs, dtype=torch.float32, device=self.params[name].device)
            self.weight_decay[name] = torch.tensor(decays, dtype=torch.float32, device=self.params[name].device)
        self.trained = [name for name in self.params if name in self.base_lr]
        self.exp_avg = {name: torch.zeros_like(self.params[name]) for name in self.trained}
        self.exp_avg_sq = {name: torch.zeros_like(self.params[name]) for name in self.trained}
        self.steps = torch.zeros(self.count, dtype=torch.float64)
        self.active = torch.ones(self.count, dtype=torch.bool)
        self.grad_clip = [c.grad_clip for c in configs]
        self._loss_fn = vmap(self._member_loss, in_dims=(0, 0, None, None), randomness="different")
        self._logits_fn = vmap(self._member_logits, in_dims=(0, 0, None), randomness="different")

    def _member_loss(self, params, buffers, batch, labels):
        return functional_call(self._loss_template, _probe_state(params, buffers), (batch, self.device, labels))

    def _member_logits(self, params, buffers, batch):
        return functional_call(self._logits_template, _probe_state(params, buffers), (batch, self.device))

    def step(self, batch: dict, factors: list[float]) -> torch.Tensor:
        """One optimiser step of every active member on `batch`; returns each member's loss: (K,) float64.

        factors: each member's schedule factor (lr = base lr x factor) for this step.
        A member whose loss is not finite takes no step (the caller marks it diverged).
        """
        self._loss_template.train()
        for tensor in self.params.values():
            tensor.grad = None
        labels = batch["labels"].to(self.device)
        losses = self._loss_fn(self.params, self.buffers, batch, labels)  # (K,)
        losses.sum().backward()  # members share no parameter: each slice's gradient is its own loss's
        values = losses.detach().double().cpu()
        update = self.active & torch.isfinite(values)
        if not bool(update.any()):
            return values
        self._clip_gradients()
        self._adamw(update, torch.tensor(factors, dtype=torch.float32))
        return values

    def _clip_gradients(self) -> None:
        limits = self.grad_clip
        if not any(limits):
            return
        squares = sum(self.params[name].grad.flatten(1).double().pow(2).sum(dim=1) for name in self.trained
                      if self.params[name].grad is not None)
        norms = squares.sqrt()  # (K,): each member's global gradient norm, as clip_grad_norm_ computes it
        scale = torch.ones_like(norms)
        for k, limit in enumerate(limits):
            if limit:
                scale[k] = torch.clamp(limit / (norms[k] + 1e-6), max=1.0)
        for name in self.trained:
            grad = self.params[name].grad
            if grad is None:
                continue
            grad.mul_(scale.to(grad.dtype).view(-1, *([1] * (grad.ndim - 1))))

    @torch.no_grad()
    def _adamw(self, update: torch.Tensor, factors: torch.Tensor) -> None:
        """AdamW (decoupled weight decay, bias-corrected moments) with a learning rate per member.

        In place on the stacked tensors, one temporary per parameter: an optimiser step is a handful of
        passes over K times a probe's parameters, and temporaries of that size (an earlier version made
        eight, then selected with `where`) made it the slowest part of a stacked step for large heads
        (mhca, 8 x 7 M parameters: 2.3 s of a 2.6 s step). Members not in `update` are left untouched.
        """
        beta1, beta2 = BETAS
        self.steps += update.double()
        steps = self.steps.clamp(min=1)
        correction1 = (1 - beta1 ** steps).float()
        correction2_sqrt = (1 - beta2 ** steps).sqrt().float()
        lr_factors = factors.float()
        if bool(update.all()):
            members = [slice(None)]
        else:  # a member diverged within this epoch (rare: stopped members leave the stack at its end)
            members = [int(k) for k in torch.nonzero(update).flatten()]
        for name in self.trained:
            param, grad = self.params[name], self.params[name].grad
            if grad is None:  # no gradient reached it (as torch's AdamW, no step and no decay)
                continue
            device = param.device
            lr = self.base_lr[name] * lr_factors.to(device)  # (K,)
            decay = 1 - lr * self.weight_decay[name]
            step_size = lr / correction1.to(device)
            root = correction2_sqrt.to(device)
            for k in members:
                shape = (-1,) + (1,) * (param.ndim - 1) if isinstance(k, slice) else ()
                p, g, m, v = param[k], grad[k], self.exp_avg[name][k], self.exp_avg_sq[name][k]
                p.mul_(decay[k].view(shape))
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                # p -= step_size * m / (sqrt(v) / root + eps), as (sqrt(v) / root + eps) / step_size
                denom = v.sqrt().div_(root[k].view(shape)).add_(EPS).div_(step_size[k].view(shape))
                p.addcdiv_(m, denom, value=-1.0)

    @torch.no_grad()
    def keep(self, positions: list[int]) -> None:
        """Drop every member but those at `positions` (in that order), optimiser state included, so stopped
        (pruned or diverged) members cost nothing from here on. `sync()` first: dropped probes keep what they had."""
        index = torch.tensor(positions, dtype=torch.long)

        def take(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name: tensor.index_select(0, index.to(tensor.device)) for name, tensor in tensors.items()}

        trained = {name: tensor.requires_grad for name, tensor in self.params.items()}
        self.params = {name: tensor.requires_grad_(trained[name]) for name, tensor in take(self.params).items()}
        self.buffers = take(self.buffers)
        self.base_lr, self.weight_decay = take(self.base_lr), take(self.weight_decay)
        self.exp_avg, self.exp_avg_sq = take(self.exp_avg), take(self.exp_avg_sq)
        self.steps, self.active = self.steps[index], self.active[index]
        self.probes = [self.probes[k] for k in positions]
        self.configs = [self.configs[k] for k in positions]
        self.grad_clip = [self.grad_clip[k] for k in positions]
        self.count = len(positions)

    @torch.no_grad()
    def sync(self) -> list[Probe]:
        """Copy every member's slice into its own probe (for evaluation, callbacks and the results)."""
        for k, probe in enumerate(self.probes):
            for name, tensor in probe.named_parameters():
                tensor.copy_(self.params[name][k])
            for name, tensor in probe.named_buffers():
                if name in self.buffers:
                    tensor.copy_(self.buffers[name][k])
        return self.probes

    @torch.no_grad()
    def predict(self, split: LoadedSplit, batch_size: int = 256) -> np.ndarray:
        """Logits of every member on every clip of `split`, its tokens read once: (K, N, C) float32."""
        self._logits_template.eval()
        pooled = shared_pooled_inputs([self._logits_template.probe])
        parts = []
        for start in range(0, len(split), batch_size):
            index = torch.arange(start, min(start + batch_size, len(split)), device=split.tokens.device)
            batch = split.batch(index, pooled=pooled)
            parts.append(self._logits_fn(self.params, self.buffers, batch).float().cpu())
        if not parts:
            return np.zeros((self.count, 0, self.probes[0].num_classes), np.float32)
        return torch.cat(parts, dim=1).numpy()


def _group_settings(probe: Probe, config: TrainConfig) -> dict[str, tuple[float, float]]:
    """parameter name -> (base lr, weight decay) from the probe's optimiser groups (`Probe.param_groups`);
    a parameter in no group is absent (frozen)."""
    names = {id(tensor): name for name, tensor in probe.named_parameters()}
    return {names[id(tensor)]: (float(group["lr"]), float(group.get("weight_decay", 0.0)))
            for group in probe.param_groups(config.lr, config.weight_decay) for tensor in group["params"]}


def _probe_state(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One member's parameters and buffers named as inside the wrapper modules (`probe.<name>`)."""
    return {f"probe.{name}": tensor for name, tensor in (*params.items(), *buffers.items())}
