"""Training-side speed, each figure beside the machine's own floor measured in the same run.

    python benchmarks/train.py [--device cpu|cuda] [--clips 256] [--threads 2] [--repeats 3]

Default shapes are an as20k-shaped bank slice (issue 14): 256 clips x 64 x 8 tokens x 768 (float16
on disk), 527 classes, J = 10 prototypes per class, batch 128. The bank is synthetic (random tokens):
speed does not depend on the values. Floors, measured first:

- matmul: fp32 GFLOP/s of a 2048^3 torch matmul on `--threads` threads (on CUDA also bf16 and fp16);
- memory: GB/s of a torch sum over a 256 MB float32 tensor (a read of memory);
- read: GB/s of a plain read (readinto, warm page cache) of the bank's chunk files.

Rows ("before" = the code path this work replaced, measured here in the same run; "after" = now):

- load: `BankSplit.load()` (checksums already verified; verified.json fast path) vs a per-clip copy;
- linear epoch: one epoch of a linear head on pooled vectors cached per split vs pooling every batch;
  floor: gathering the epoch's pooled rows;
- protobin epoch: one training epoch, chunked max over tokens vs the full (B, T F, M) similarities;
  GFLOP/s counts the forward similarity product only (2 N T F M D, the work any method must do) and
  the issue's nominal figure (3x that, forward + two backward products). Peak memory: on CUDA
  max_memory_allocated; on CPU the growth of the process's peak RSS (the full path runs second, so its
  figure is a lower bound) and the similarity values held at once.

Writes benchmarks/results/train-<device>.json; `--before FILE` copies that file's "after" figures in
as "previous_run" (figures of an earlier commit).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from patchprobe.bank.store import BankSplit, SplitMeta, SplitWriter, _chunk_dir
from patchprobe.probes import create_probe
from patchprobe.probes.prototypes import SIMILARITY_BLOCK

RESULTS = Path(__file__).parent / "results"


def best_of(repeats: int, run) -> float:
    """Shortest wall time of `repeats` calls of run() (the least disturbed by the other jobs on the machine)."""
    times = []
    for _ in range(repeats):
        sync()
        tick = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - tick)
    return min(times)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int, size: int = 2048) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    seconds = best_of(repeats, lambda: a @ b)
    return 2 * size**3 / seconds / 1e9


def memory_read(device: torch.device, repeats: int) -> float:
    x = torch.ones(64 << 20, device=device)  # 256 MB
    x.sum()
    return x.numel() * 4 / best_of(repeats, x.sum) / 1e9


def plain_read(paths: list[Path], repeats: int) -> tuple[float, int]:
    total = sum(p.stat().st_size for p in paths)
    buffer = bytearray(max(p.stat().st_size for p in paths))

    def run():
        for path in paths:
            with open(path, "rb", buffering=0) as handle:
                view = memoryview(buffer)
                while handle.readinto(view):
                    pass

    run()  # warm the page cache: the bank was just written, but be sure
    return total / best_of(repeats, run) / 1e9, total


def build_bank(root: Path, clips: int, time_steps: int, freq: int, dim: int, classes: int, chunk: int) -> Path:
    meta = SplitMeta(split="train", clip_ids=[f"clip{i:06d}" for i in range(clips)], classes=[f"c{i}" for i in range(classes)],
                     multilabel=True, encoder="synthetic", encoder_config={}, encoder_config_hash="bench", sample_rate=16000,
                     token_dim=dim, freq_dim=freq, global_dim=0, global_source="none", dataset="synthetic",
                     dataset_fingerprint="bench")
    writer = SplitWriter(root / "train", meta)
    rng = np.random.default_rng(0)
    for start in range(0, clips, chunk):
        ids = meta.clip_ids[start : start + chunk]
        tokens = [rng.standard_normal((time_steps, freq, dim), dtype=np.float32).astype(np.float16) for _ in ids]
        masks = [np.ones((time_steps, freq), bool) for _ in ids]
        writer.append(ids, tokens, masks, None)
    writer.write_labels((rng.random((clips, classes)) < 0.02).astype(np.float32))
    writer.finish()
    return root / "train"


def load_per_clip(split: BankSplit):
    """The loader this work replaced: a Python loop copying clip by clip from the memory-mapped chunks."""
    count, t_max = len(split), int(split.lengths.max())
    tokens = np.zeros((count, t_max, split.meta.freq_dim, split.meta.token_dim), dtype=split.meta.dtype)
    mask = np.zeros((count, t_max, split.meta.freq_dim), dtype=bool)
    for i in range(count):
        t, m, _ = split.clip(i)
        tokens[i, : len(t)], mask[i, : len(m)] = t, m
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def epoch(probe, optimizer, loaded, batch_size: int, device, pooled: bool, descriptor=None) -> None:
    """One training epoch as the trainer runs it (batches, forward, asymmetric-free BCE loss, backward, AdamW step)."""
    order = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(0))
    kinds = probe.pooled_inputs if pooled else None
    for start in range(0, len(loaded), batch_size):
        batch = loaded.batch(order[start : start + batch_size].to(loaded.tokens.device), pooled=kinds)
        if descriptor is not None:
            tokens, mask = batch["tokens"].to(device), batch["mask"].to(device)
            logits = probe.classify(descriptor(probe, tokens, mask))
        else:
            logits = probe.forward_batch(batch, device)
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def full_descriptor(probe, tokens, mask):
    """The descriptor this work replaced: the whole (B, T, F, M) similarity map, then amax."""
    return probe.similarities(tokens, mask).amax(dim=(1, 2))


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def measure_peak(device, run) -> tuple[float, int]:
    """(seconds, peak bytes) of one run()."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        seconds = best_of(1, run)
        return seconds, torch.cuda.max_memory_allocated() - base
    base = peak_rss_bytes()
    seconds = best_of(1, run)
    return seconds, max(0, peak_rss_bytes() - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--time-steps", type=int, default=64)
    parser.add_argument("--freq", type=int, default=8)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--prototypes-per-class", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full-protobin", action="store_true", help="skip the old full-similarity epoch (slow, memory-hungry)")
    parser.add_argument("--before", type=Path, help="an earlier result file whose 'after' figures are kept as 'previous_run'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = args.out or RESULTS / f"train-{device.type}.json"
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": str(device),
                    "machine": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": args.threads,
                    "shape": {"clips": args.clips, "tokens": [args.time_steps, args.freq, args.dim], "classes": args.classes,
                              "prototypes_per_class": args.prototypes_per_class, "batch": args.batch},
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    else:
        report["gpu"] = None
        report["note"] = "no GPU in this run: CPU figures only (run with --device cuda for the bf16/fp16 ratios)"

    floor = {"matmul_fp32_gflops": matmul_peak(device, torch.float32, args.repeats), "memory_read_gbps": memory_read(device, args.repeats)}
    if device.type == "cuda":
        floor["matmul_bf16_gflops"] = matmul_peak(device, torch.bfloat16, args.repeats, 8192)
        floor["matmul_fp16_gflops"] = matmul_peak(device, torch.float16, args.repeats, 8192)
        floor["matmul_fp32_gflops"] = matmul_peak(device, torch.float32, args.repeats, 8192)
    rows: dict = {}
    with tempfile.TemporaryDirectory(prefix="pp-bench-") as tmp:
        split_dir = build_bank(Path(tmp), args.clips, args.time_steps, args.freq, args.dim, args.classes, chunk=64)
        files = sorted(_chunk_dir(split_dir).glob("*.npy"))
        floor["plain_read_gbps"], total_bytes = plain_read(files, args.repeats)
        report["floor"] = floor
        print(f"floor: matmul {floor['matmul_fp32_gflops']:.0f} GFLOP/s fp32, memory {floor['memory_read_gbps']:.1f} GB/s, "
              f"plain read {floor['plain_read_gbps']:.2f} GB/s of {total_bytes / 1e6:.0f} MB", flush=True)

        split = BankSplit(split_dir)
        tick = time.perf_counter()
        loaded = split.load(device=device)  # first load verifies every checksum
        first = time.perf_counter() - tick
        after = best_of(args.repeats, lambda: BankSplit(split_dir).load(device=device))
        before = best_of(1, lambda: load_per_clip(BankSplit(split_dir)))
        rows["load"] = {"bytes": total_bytes, "before_gbps": total_bytes / before / 1e9, "after_gbps": total_bytes / after / 1e9,
                        "first_load_with_checksums_s": first,
                        "after_vs_plain_read": (total_bytes / after / 1e9) / floor["plain_read_gbps"],
                        "before_vs_plain_read": (total_bytes / before / 1e9) / floor["plain_read_gbps"]}

        torch.manual_seed(0)
        linear = create_probe("linear", args.dim, args.classes).to(device)
        linear.prepare([{"tokens": loaded.tokens.float(), "mask": loaded.mask, "global": None}])
        optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3)
        cache = best_of(1, lambda: loaded.pooled("mean"))
        after = best_of(args.repeats, lambda: epoch(linear, optimizer, loaded, args.batch, device, pooled=True))
        before = best_of(args.repeats, lambda: epoch(linear, optimizer, loaded, args.batch, device, pooled=False))
        order = torch.randperm(len(loaded))
        pooled = loaded.pooled("mean")
        read = best_of(args.repeats, lambda: [pooled[order[s : s + args.batch].to(pooled.device)].sum() for s in range(0, len(loaded), args.batch)])
        rows["linear_epoch"] = {"before_s": before, "after_s": after, "pooled_cache_once_s": cache, "floor_read_pooled_s": read,
                                "after_vs_floor": after / read, "speedup": before / after}

        torch.manual_seed(0)
        protobin = create_probe("protobin", args.dim, args.classes, prototypes_per_class=args.prototypes_per_class).to(device)
        optimizer = torch.optim.AdamW(protobin.parameters(), lr=1e-3)
        prototypes = protobin.num_prototypes
        forward_flop = 2 * args.clips * args.time_steps * args.freq * prototypes * args.dim
        epoch(protobin, optimizer, loaded, args.batch, device, pooled=False)  # warm-up
        after, after_peak = measure_peak(device, lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False))
        after = min(after, best_of(max(1, args.repeats - 1), lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False)))
        peak_key = "matmul_fp32_gflops"
        row = {"forward_flop": forward_flop, "after_s": after, "after_peak_bytes": after_peak,
               "after_similarity_values_at_once": min(SIMILARITY_BLOCK, args.batch * args.time_steps * args.freq * prototypes),
               "after_gflops_forward_work": forward_flop / after / 1e9, "after_vs_matmul_peak": forward_flop / after / 1e9 / floor[peak_key],
               "after_nominal_gflops_3x": 3 * forward_flop / after / 1e9,
               "after_nominal_vs_matmul_peak": 3 * forward_flop / after / 1e9 / floor[peak_key]}
        if device.type == "cuda":
            row["after_vs_bf16_peak"] = forward_flop / after / 1e9 / floor["matmul_bf16_gflops"]
        if not args.skip_full_protobin:
            before, before_peak = measure_peak(
                device, lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False, descriptor=full_descriptor))
            row.update({"before_s": before, "before_peak_bytes": before_peak,
                        "before_similarity_values_at_once": args.batch * args.time_steps * args.freq * prototypes,
                        "before_vs_matmul_peak": forward_flop / before / 1e9 / floor[peak_key],
                        "before_nominal_vs_matmul_peak": 3 * forward_flop / before / 1e9 / floor[peak_key], "speedup": before / after})
        rows["protobin_epoch"] = row
    report["rows"] = rows
    if args.before and args.before.exists():
        report["previous_run"] = json.loads(args.before.read_text()).get("rows")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    load, lin, proto = rows["load"], rows["linear_epoch"], rows["protobin_epoch"]
    print(f"| what | before | after | floor | after / floor |\n|---|---|---|---|---|")
    print(f"| BankSplit.load() | {load['before_gbps']:.2f} GB/s | {load['after_gbps']:.2f} GB/s | plain read {floor['plain_read_gbps']:.2f} GB/s "
          f"| {load['after_vs_plain_read']:.2f} |")
    print(f"| linear, one epoch | {lin['before_s']:.3f} s | {lin['after_s']:.4f} s (+{lin['pooled_cache_once_s']:.3f} s once) "
          f"| read pooled {lin['floor_read_pooled_s']:.4f} s | {lin['after_vs_floor']:.1f}x |")
    before_text = f"{proto['before_s']:.2f} s ({proto['before_vs_matmul_peak']:.0%})" if "before_s" in proto else "skipped"
    print(f"| protobin, one epoch (forward work / fp32 peak) | {before_text} | {proto['after_s']:.2f} s ({proto['after_vs_matmul_peak']:.0%}; "
          f"nominal 3x: {proto['after_nominal_vs_matmul_peak']:.0%}) | {floor[peak_key]:.0f} GFLOP/s | {proto['after_vs_matmul_peak']:.2f} |")
    if "before_peak_bytes" in proto:
        print(f"| protobin peak memory | {proto['before_peak_bytes'] / 1e6:.0f} MB | {proto['after_peak_bytes'] / 1e6:.0f} MB | | |")
    print(f"written {out}")


if __name__ == "__main__":
    main()
