"""Pretrain the `tiny-mae` encoder with masked-patch reconstruction on unlabeled synthetic audio.

Deterministic (fixed seeds, fixed thread count, step-based schedule) and resumable: a checkpoint is
written every `--checkpoint-every` steps into the work folder, and rerunning the same command
continues from it. The result is written as package data:

    src/patchprobe/encoders/weights/tiny_mae.safetensors   encoder weights (float16, decoder dropped)
    src/patchprobe/encoders/weights/tiny_mae.json          recipe, recipe hash, ViT config, loss curve

Usage (about 40 minutes on 2 CPU cores):

    python scripts/pretrain_tiny_mae.py --work scratch/pretrain

The unlabeled clips use seed 1000 and the generator's "unlabeled" stream, so they never coincide
with an evaluation clip (the demo uses seeds 0 and 1 with train/valid/test streams).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from patchprobe._io import read_json, stable_hash, write_json
from patchprobe.audio import FbankConfig, kaldi_fbank
from patchprobe.datasets.synthetic import SyntheticConfig, clip_rng, synthesize_clip
from patchprobe.encoders.vit import Block, SpectrogramViT, ViTConfig, count_parameters, init_weights, sincos_2d

# Masked-autoencoder pretraining: only this script trains an encoder, so the decoder and loss live here.


class MAEDecoder(nn.Module):
    """Light MAE decoder: predicts the (per-patch normalised) pixels of masked patches."""

    def __init__(self, config: ViTConfig, width: int = 128, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(config.width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, config.patch_size**2)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)


def patchify(spec: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T, M) -> (B, T' * F', patch * patch), time-major like the patch embedding."""
    batch, time, mels = spec.shape
    x = spec.reshape(batch, time // patch, patch, mels // patch, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(batch, (time // patch) * (mels // patch), patch * patch)


def mae_loss(
    encoder: SpectrogramViT, decoder: MAEDecoder, spec: torch.Tensor, mask_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Masked-patch reconstruction loss (MAE, normalised-pixel targets) on full-length clips.

    Args:
        spec: (B, T, M) normalised log-mel, T a multiple of the patch size, no padding.
        generator: source of the random masks (keeps pretraining deterministic).
    """
    tokens = encoder.embed_patches(spec)
    batch, length, dim = tokens.shape
    keep = max(1, int(round(length * (1 - mask_ratio))))
    noise = torch.rand(batch, length, generator=generator, device=spec.device)
    order = noise.argsort(dim=1)
    restore = order.argsort(dim=1)
    kept = torch.gather(tokens, 1, order[:, :keep, None].expand(-1, -1, dim))
    x = torch.cat([encoder.cls_token.expand(batch, -1, -1), kept], dim=1)
    for block in encoder.blocks:
        x = block(x)
    x = decoder.embed(encoder.norm(x))
    filler = decoder.mask_token.expand(batch, length - keep, -1)
    patches = torch.cat([x[:, 1:], filler], dim=1)
    patches = torch.gather(patches, 1, restore[:, :, None].expand(-1, -1, patches.shape[-1]))
    time_patches = spec.shape[1] // encoder.config.patch_size
    patches = patches + sincos_2d(time_patches, encoder.config.freq_patches, patches.shape[-1]).to(patches)
    x = torch.cat([x[:, :1], patches], dim=1)
    for block in decoder.blocks:
        x = block(x)
    prediction = decoder.pred(decoder.norm(x))[:, 1:]
    target = patchify(spec, encoder.config.patch_size)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    masked = torch.ones(batch, length, device=spec.device)
    masked[:, :keep] = 0
    masked = torch.gather(masked, 1, restore)
    per_patch = ((prediction - target) ** 2).mean(-1)
    return (per_patch * masked).sum() / masked.sum()


RECIPE = {
    "version": 1,
    "seed": 1000,
    "clips": 6000,
    "clip_seconds": 6.0,
    "singlelabel_every": 5,  # every 5th clip is a "one class fills the clip" clip, the rest are sparse events
    "mask_ratio": 0.8,
    "batch_size": 64,
    "steps": 1300,
    "warmup_steps": 100,
    "lr": 5e-4,
    "weight_decay": 0.05,
    "betas": [0.9, 0.95],
    "decoder": {"width": 128, "depth": 2, "heads": 4},
    "encoder": {"width": 192, "depth": 6, "heads": 3, "patch_size": 16, "num_mel_bins": 128},
    "threads": 2,
}
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "patchprobe" / "encoders" / "weights"


def build_spectrograms(recipe: dict) -> tuple[torch.Tensor, float, float]:
    """Synthesize the unlabeled clips; return their log-mel fbanks (N, T, 128) float16 and the mean/std."""
    fbank = FbankConfig(num_mel_bins=recipe["encoder"]["num_mel_bins"])
    multi = SyntheticConfig(kind="multilabel", clip_seconds=recipe["clip_seconds"])
    single = SyntheticConfig(kind="singlelabel", clip_seconds=recipe["clip_seconds"])
    specs = []
    for index in range(recipe["clips"]):
        config = single if index % recipe["singlelabel_every"] == 0 else multi
        waveform, _ = synthesize_clip(config, clip_rng(recipe["seed"], "unlabeled", index))
        specs.append(kaldi_fbank(torch.from_numpy(waveform - waveform.mean()), fbank))
        if index % 1000 == 0:
            print(f"  synthesized {index}/{recipe['clips']}", flush=True)
    stacked = torch.stack(specs)
    mean, std = stacked.mean().item(), stacked.std().item()
    patch = recipe["encoder"]["patch_size"]
    stacked = torch.nn.functional.pad(stacked, (0, 0, 0, (-stacked.shape[1]) % patch), value=mean)
    return stacked.to(torch.float16), mean, std


def lr_at(step: int, recipe: dict) -> float:
    if step < recipe["warmup_steps"]:
        return recipe["lr"] * (step + 1) / recipe["warmup_steps"]
    progress = (step - recipe["warmup_steps"]) / max(1, recipe["steps"] - recipe["warmup_steps"])
    return recipe["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("scratch/pretrain"), help="checkpoints and cached spectrograms")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the weights and recipe JSON are written")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's step count (changes the hash)")
    args = parser.parse_args()

    recipe = dict(RECIPE)
    if args.steps is not None:
        recipe["steps"] = args.steps
    recipe_hash = stable_hash(recipe, length=16)
    torch.set_num_threads(recipe["threads"])
    torch.use_deterministic_algorithms(True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    cache = args.work / f"specs-{stable_hash({k: recipe[k] for k in ('seed', 'clips', 'clip_seconds', 'singlelabel_every', 'encoder')})}.pt"
    if cache.exists():
        blob = torch.load(cache)
        specs, mean, std = blob["specs"], blob["mean"], blob["std"]
    else:
        print("synthesizing unlabeled clips ...", flush=True)
        specs, mean, std = build_spectrograms(recipe)
        torch.save({"specs": specs, "mean": mean, "std": std}, cache)
    print(f"spectrograms {tuple(specs.shape)}, fbank mean {mean:.3f} std {std:.3f}", flush=True)

    vit_config = ViTConfig(**recipe["encoder"], fbank_mean=round(mean, 4), fbank_std=round(std, 4))
    torch.manual_seed(recipe["seed"])
    encoder = SpectrogramViT(vit_config)
    decoder = MAEDecoder(vit_config, **recipe["decoder"])
    params = list(encoder.parameters()) + list(decoder.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe["lr"],
        betas=tuple(recipe["betas"]),
    )
    generator = torch.Generator().manual_seed(recipe["seed"])
    state = {"step": 0, "losses": [], "elapsed": 0.0}
    checkpoint = args.work / f"checkpoint-{recipe_hash}.pt"
    if checkpoint.exists():
        blob = torch.load(checkpoint, weights_only=False)
        encoder.load_state_dict(blob["encoder"])
        decoder.load_state_dict(blob["decoder"])
        optimizer.load_state_dict(blob["optimizer"])
        generator.set_state(blob["generator"])
        state = blob["state"]
        print(f"resumed at step {state['step']}", flush=True)
    print(f"encoder {count_parameters(encoder):,} params, decoder {count_parameters(decoder):,}; recipe {recipe_hash}", flush=True)

    normalised = (specs.float() - mean) / (2 * std)
    batches_per_epoch = len(normalised) // recipe["batch_size"]
    order_epoch, order = -1, None
    window = []
    encoder.train()
    decoder.train()
    while state["step"] < recipe["steps"]:
        step = state["step"]
        if order_epoch != step // batches_per_epoch:  # a new epoch, or the first step after a resume
            order_epoch = step // batches_per_epoch
            order = torch.randperm(len(normalised), generator=torch.Generator().manual_seed(recipe["seed"] + order_epoch))
        slot = step % batches_per_epoch
        batch = normalised[order[slot * recipe["batch_size"] : (slot + 1) * recipe["batch_size"]]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe)
        tick = time.time()
        loss = mae_loss(encoder, decoder, batch, recipe["mask_ratio"], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        state["elapsed"] += time.time() - tick
        window.append(loss.item())
        state["step"] += 1
        if len(window) == 25 or state["step"] == recipe["steps"]:
            state["losses"].append([state["step"], float(np.mean(window))])
            print(f"step {state['step']:5d}  loss {np.mean(window):.4f}  lr {lr_at(step, recipe):.2e}  {state['elapsed']/60:.1f} min", flush=True)
            window = []
        if state["step"] % args.checkpoint_every == 0 or state["step"] == recipe["steps"]:
            blob = {
                "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "state": state,
            }
            tmp = checkpoint.with_suffix(".tmp")
            torch.save(blob, tmp)
            tmp.replace(checkpoint)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to(torch.float16).contiguous() for k, v in encoder.state_dict().items()}
    save_file(weights, str(args.out / "tiny_mae.safetensors"), metadata={"recipe_hash": recipe_hash})
    write_json(
        args.out / "tiny_mae.json",
        {
            "recipe": recipe,
            "recipe_hash": recipe_hash,
            "vit_config": vit_config.model_dump(),
            "loss_curve": state["losses"],
            "train_seconds": round(state["elapsed"], 1),
            "wall_seconds_this_run": round(time.time() - started, 1),
            "torch": torch.__version__,
            "script": "scripts/pretrain_tiny_mae.py",
        },
    )
    print(json.dumps({"recipe_hash": recipe_hash, "final_loss": state["losses"][-1]}), flush=True)
    _plot(read_json(args.out / "tiny_mae.json"))


def _plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = np.array(record["loss_curve"])
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(curve[:, 0], curve[:, 1])
    axis.set_xlabel("step (batch 64)")
    axis.set_ylabel("masked-patch loss (normalised)")
    axis.set_title(f"tiny-mae pretraining, recipe {record['recipe_hash'][:8]}")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    target = Path(__file__).resolve().parents[1] / "docs" / "figures" / "tiny_mae_pretrain_loss.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=150)


if __name__ == "__main__":
    main()
