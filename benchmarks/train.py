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
  floor: gathering the epoch's pooled rows; a second line sets it beside the read plus the epoch's own
  products (forward and weight gradient) at the fp32 peak, which alone take longer than the read;
- protobin epoch: one training epoch, chunked max over tokens vs the full (B, T F, M) similarities;
  GFLOP/s counts the forward similarity product only (2 N T F M D, the work any method must do) and
  the issue's nominal figure (3x that, forward + two backward products). Peak memory: on CUDA
  max_memory_allocated; on CPU the growth of the process's peak RSS (the full path runs second, so its
  figure is a lower bound) and the similarity values held at once.

- K trials (default 8: an lr grid over the probe's registered range), for `linear` (a global-vector
  head), `mhca` (attentive) and `protobin` (prototypes), on `--trial-clips` clips for `--trial-epochs`
  epochs, each way the trainer can run them: vectorised (`train_probes(..., vectorize=True)`: one
  stacked model), a shared pass (`vectorize=False`: K models, each batch read once), and one at a time
  (K `train_probes` calls). Targets (issue 14): vectorised >= 0.8 K x faster than one at a time for
  global-vector heads, >= 2x for attentive and prototype heads. For protobin also the stacked trials'
  matmul efficiency: the FLOPs the similarity really does (forward: the (N, D) x (D, K M) product;
  backward: a gather of the winning token per prototype, M D per clip, since the bank's tokens need no
  gradient; plus the linear head's three products) over the time, as a fraction of the fp32 peak.
- probes: one trial of every probe with a cost model (`patchprobe.bench_plan.PROBE_COSTS`), trained
  by `train_probes` on the same clips: its training FLOPs (forward and backward, counted from its
  layers) per second as a fraction of the fp32 matmul floor. `patchprobe bench plan` costs training
  with these fractions (`python benchmarks/rates.py` copies them into the package).

Writes benchmarks/results/train-<device>.json and .md; `--before FILE` copies that file's "after"
figures in as "previous_run" (figures of an earlier commit; the trial rows show its times beside this
run's); `--render FILE` rewrites FILE's markdown table only.
"""

from __future__ import annotations

import argparse
import inspect
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

from patchprobe.bank.store import BankSplit, LoadedSplit, SplitMeta, SplitWriter, _chunk_dir
from patchprobe.bench_plan import PROBE_COSTS, HeadShape, training_flop_per_clip
from patchprobe.probes import PROBES, create_probe
from patchprobe.probes.prototypes import SIMILARITY_BLOCK
from patchprobe.train import TrainConfig, train_probes

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


class Floor:
    """The fp32 matmul floor, measured again around every timed row: on a machine shared with other jobs the load
    changes within a run, so each row is set against the mean of the floors measured just before and just after it."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats, self.seen = device, repeats, []

    def measure(self) -> float:
        size = 8192 if self.device.type == "cuda" else 2048
        self.seen.append(matmul_peak(self.device, torch.float32, self.repeats, size))
        return self.seen[-1]

    def around(self, run) -> tuple[float, float]:
        """(seconds of run(), GFLOP/s: mean of the floor just before and just after it)."""
        before = self.measure()
        seconds = run()
        return seconds, (before + self.measure()) / 2


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
    """A synthetic split of `clips` clips: float16 tokens (T, F, D), a global vector of D values per clip (a ViT's
    [cls]: linear reads it, linearc reads it beside the mean of tokens), 2 % positive multi-label targets."""
    meta = SplitMeta(split="train", clip_ids=[f"clip{i:06d}" for i in range(clips)], classes=[f"c{i}" for i in range(classes)],
                     multilabel=True, encoder="synthetic", encoder_config={}, encoder_config_hash="bench", sample_rate=16000,
                     token_dim=dim, freq_dim=freq, global_dim=dim, global_source="cls", dataset="synthetic",
                     dataset_fingerprint="bench")
    writer = SplitWriter(root / "train", meta)
    rng = np.random.default_rng(0)
    for start in range(0, clips, chunk):
        ids = meta.clip_ids[start : start + chunk]
        tokens = [rng.standard_normal((time_steps, freq, dim), dtype=np.float32).astype(np.float16) for _ in ids]
        masks = [np.ones((time_steps, freq), bool) for _ in ids]
        writer.append(ids, tokens, masks, rng.standard_normal((len(ids), dim), dtype=np.float32).astype(np.float16))
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


def first_clips(loaded: LoadedSplit, count: int) -> LoadedSplit:
    """The first `count` clips of a loaded split (views, no copy), with their pooled vectors computed (as a
    bank's are, once, before any trial trains on it)."""
    part = LoadedSplit(tokens=loaded.tokens[:count], mask=loaded.mask[:count],
                       globals_=None if loaded.globals is None else loaded.globals[:count], labels=loaded.labels[:count],
                       lengths=loaded.lengths[:count], meta=loaded.meta.model_copy(update={"clip_ids": loaded.meta.clip_ids[:count]}))
    for kind in ("mean", "freqmean", "global"):
        part.pooled(kind)
    return part


def probe_args(probe: str, prototypes_per_class: int) -> dict:
    return {"prototypes_per_class": prototypes_per_class} if PROBES.spec(probe).family == "prototype" else {}


def lr_grid(probe: str, count: int) -> list[float]:
    """`count` learning rates spread log-evenly over the probe's registered range (the search's lr range)."""
    low, high = PROBES.spec(probe).lr_range
    return [low * (high / low) ** (i / max(1, count - 1)) for i in range(count)]


def trial_data(probe: str, split: LoadedSplit, whole: LoadedSplit, epochs: int) -> tuple[LoadedSplit, int]:
    """(clips, epochs) a probe's trials train on here: heads on pooled vectors all of `whole` for 5x `epochs` (on
    `split` alone a trial would time little but its setup), the others `split` for `epochs`."""
    return (whole, 5 * epochs) if PROBE_COSTS[probe].kind == "pooled" else (split, epochs)


def trial_row(split: LoadedSplit, probe: str, trials: int, epochs: int, shape: HeadShape, floor: Floor, device,
              repeats: int, target: float) -> dict:
    """K trials of one probe (an lr grid), trained vectorised, in one shared pass, and one at a time: seconds and ratios
    (each way against the fp32 floor measured around it)."""
    configs = [TrainConfig(probe=probe, probe_args=probe_args(probe, shape.prototypes_per_class), epochs=epochs, lr=lr,
                           device=str(device)) for lr in lr_grid(probe, trials)]
    vectorizes = "vectorize" in inspect.signature(train_probes).parameters
    ways = {"one_at_a_time_s": lambda: [train_probes(split, [config], progress=False) for config in configs]}
    if vectorizes:
        ways["shared_pass_s"] = lambda: train_probes(split, configs, progress=False, vectorize=False)
        ways["vectorised_s"] = lambda: train_probes(split, configs, progress=False, vectorize=True)
    else:
        ways["shared_pass_s"] = lambda: train_probes(split, configs, progress=False)
    row: dict = {"trials": trials, "clips": len(split), "epochs": epochs, "lrs": [c.lr for c in configs], "target_speedup": target,
                 "floor_gflops": {}}
    flop = training_flop_per_clip(probe, shape) * len(split) * epochs * trials  # all K trials
    row["flop_k_trials"] = flop
    for key, run in ways.items():
        row[key], row["floor_gflops"][key] = floor.around(lambda: best_of(repeats, run))
        row[key.replace("_s", "_vs_matmul_peak")] = flop / row[key] / 1e9 / row["floor_gflops"][key]
    one = row["one_at_a_time_s"]
    row["shared_pass_speedup"] = one / row["shared_pass_s"]
    if vectorizes:
        row["vectorised_speedup"] = one / row["vectorised_s"]
        row["meets_target"] = row["vectorised_speedup"] >= target
    else:
        row["note"] = "this trainer has no vectorize option: vectorised trials not measured"
    return row


def probe_rows(split: LoadedSplit, whole: LoadedSplit, shape: HeadShape, epochs: int, floor: Floor, device, repeats: int) -> dict:
    """One trial of every probe with a cost model: seconds, training FLOPs and their fraction of the fp32 matmul floor
    measured around it. Clips and epochs: `trial_data`."""
    rows = {}
    for probe in PROBE_COSTS:
        if probe not in PROBES:
            continue
        clips, epochs_here = trial_data(probe, split, whole, epochs)
        config = TrainConfig(probe=probe, probe_args=probe_args(probe, shape.prototypes_per_class), epochs=epochs_here, lr=1e-3,
                             device=str(device))
        seconds, peak = floor.around(lambda: best_of(repeats, lambda: train_probes(clips, [config], progress=False)))
        flop = training_flop_per_clip(probe, shape) * len(clips) * epochs_here
        rows[probe] = {"clips": len(clips), "epochs": epochs_here, "seconds": seconds, "flop": flop, "gflops": flop / seconds / 1e9,
                       "floor_gflops": peak, "efficiency": flop / seconds / 1e9 / peak}
        print(f"  {probe}: {seconds:.2f} s, {flop / seconds / 1e9:.1f} GFLOP/s "
              f"({rows[probe]['efficiency']:.1%} of the fp32 floor, {peak:.0f} GFLOP/s around it)", flush=True)
    return rows


def markdown(report: dict) -> str:
    """The result as the issue's table: each figure beside the floor of the same run."""
    floor, rows = report["floor"], report["rows"]
    peak = floor["matmul_fp32_gflops"]
    lines = [f"# benchmarks/train.py on {report['device']} ({report['machine']}, {report['threads']} threads, torch {report['torch']})",
             "", f"`python benchmarks/{report['command']}` at {report['date']}. Shape: {report['shape']}.", "",
             f"Floor measured in the same run: fp32 matmul {peak:.0f} GFLOP/s, memory read {floor['memory_read_gbps']:.1f} GB/s, "
             f"plain read of the bank's files {floor['plain_read_gbps']:.2f} GB/s"
             + ("".join(f", {k.split('_')[1]} matmul {floor[k]:.0f} GFLOP/s" for k in ("matmul_bf16_gflops", "matmul_fp16_gflops")
                        if k in floor)) + ".", "",
             *([f"The fp32 floor was measured again around every timed training row ({seen['count']} times, {seen['min']:.0f} to "
                f"{seen['max']:.0f} GFLOP/s: the machine is shared); each row's ratio uses the mean of the floors just before "
                "and just after it (column floor).", ""] if (seen := floor.get("matmul_fp32_gflops_seen")) else []),
             "| what | before | after | floor | after / floor | target |", "|---|---|---|---|---|---|"]
    load, lin, proto = rows["load"], rows["linear_epoch"], rows["protobin_epoch"]
    lines.append(f"| `BankSplit.load()` | {load['before_gbps']:.2f} GB/s | {load['after_gbps']:.2f} GB/s | plain read "
                 f"{floor['plain_read_gbps']:.2f} GB/s | {load['after_vs_plain_read']:.2f} | >= 5 GB/s or >= 1/3 of a plain read |")
    lines.append(f"| linear, one epoch | {lin['before_s']:.3f} s | {lin['after_s']:.4f} s (+{lin['pooled_cache_once_s']:.3f} s once "
                 f"per bank) | read pooled {lin['floor_read_pooled_s']:.4f} s | {lin['after_vs_floor']:.1f}x | <= 2x |")
    # The read alone is not what an epoch can approach: its products (forward and weight gradient of a D x C
    # layer per clip) take longer than the read even at the fp32 peak.
    shape = report["shape"]
    arithmetic = shape["clips"] * training_flop_per_clip("linear", HeadShape(1, 1, shape["tokens"][2], shape["classes"])) / peak / 1e9
    lines.append(f"| linear, one epoch, against read + its products at the fp32 peak | | {lin['after_s']:.4f} s | "
                 f"{lin['floor_read_pooled_s']:.4f} + {arithmetic:.4f} s | {lin['after_s'] / (lin['floor_read_pooled_s'] + arithmetic):.1f}x | |")
    before = f"{proto['before_s']:.2f} s ({proto['before_vs_matmul_peak']:.0%})" if "before_s" in proto else "skipped"
    lines.append(f"| protobin, one epoch (forward similarity FLOPs / fp32 peak) | {before} | {proto['after_s']:.2f} s | "
                 f"{proto.get('floor_gflops', peak):.0f} GFLOP/s | {proto['after_vs_matmul_peak']:.2f} | >= 0.70 |")
    if "before_peak_bytes" in proto:
        lines.append(f"| protobin peak memory | {proto['before_peak_bytes'] / 1e6:.0f} MB | {proto['after_peak_bytes'] / 1e6:.0f} MB | "
                     f"| | bounded |")
    for probe, row in rows.get("trials", {}).items():
        k = row["trials"]
        target = f">= {row['target_speedup']:.1f}x"
        what = f"{k} {probe} trials (lr grid, {row['clips']} clips x {row['epochs']} epochs), vectorised vs one at a time"
        previous = (report.get("previous_run") or {}).get("trials", {}).get(probe, {})
        earlier = (f"; previous run: {previous['one_at_a_time_s']:.2f} s one at a time, {previous['vectorised_s']:.2f} s vectorised"
                   if "vectorised_s" in previous else "")
        if "vectorised_s" in row:
            floors = "/".join(f"{row['floor_gflops'][k]:.0f}" for k in ("one_at_a_time_s", "shared_pass_s", "vectorised_s"))
            lines.append(f"| {what} | {row['one_at_a_time_s']:.2f} s (shared pass {row['shared_pass_s']:.2f} s{earlier}) | "
                         f"{row['vectorised_s']:.2f} s | {floors} GFLOP/s | {row['vectorised_speedup']:.2f}x | {target} |")
        else:
            lines.append(f"| {what} | {row['one_at_a_time_s']:.2f} s | not measured (shared pass {row['shared_pass_s']:.2f} s) | | | {target} |")
    stacked = rows.get("trials", {}).get("protobin", {})
    if "vectorised_vs_matmul_peak" in stacked:
        lines.append(f"| protobin, {stacked['trials']} stacked trials: counted FLOPs / fp32 peak | "
                     f"{stacked['one_at_a_time_vs_matmul_peak']:.2f} (one at a time) | {stacked['vectorised_vs_matmul_peak']:.2f} | "
                     f"{stacked['floor_gflops']['vectorised_s']:.0f} GFLOP/s | {stacked['vectorised_vs_matmul_peak']:.2f} | >= 0.70 |")
    lines.append("| the demo grid | measured separately (README) | | | | <= 1/3 of 24 min 40 s |")
    if rows.get("probes"):
        lines += ["", "One trial of each probe (training FLOPs counted as `patchprobe.bench_plan.PROBE_COSTS` does; "
                  "`bench plan` costs training with these fractions):", "",
                  "| probe | clips x epochs | seconds | GFLOP/s | floor GFLOP/s | / floor |", "|---|---|---|---|---|---|"]
        lines += [f"| {probe} | {row['clips']} x {row['epochs']} | {row['seconds']:.2f} | {row['gflops']:.1f} | {row['floor_gflops']:.0f} "
                  f"| {row['efficiency']:.3f} |" for probe, row in rows["probes"].items()]
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--trials", type=int, default=8, help="K of the vectorised-trial rows")
    parser.add_argument("--trial-clips", type=int, default=32, help="clips the trial and per-probe rows train on")
    parser.add_argument("--trial-epochs", type=int, default=2, help="epochs of each trial in the trial and per-probe rows")
    parser.add_argument("--skip-trials", action="store_true", help="skip the vectorised-trial rows")
    parser.add_argument("--skip-probes", action="store_true", help="skip the one-trial-per-probe rates")
    parser.add_argument("--before", type=Path, help="an earlier result file whose 'after' figures are kept as 'previous_run'")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="only write the markdown table of an earlier result file (beside it)")
    args = parser.parse_args()
    if args.render:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        print(f"written {args.render.with_suffix('.md')}")
        return
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

    tracker = Floor(device, args.repeats)
    floor = {"matmul_fp32_gflops": tracker.measure(), "memory_read_gbps": memory_read(device, args.repeats)}
    if device.type == "cuda":
        floor["matmul_bf16_gflops"] = matmul_peak(device, torch.bfloat16, args.repeats, 8192)
        floor["matmul_fp16_gflops"] = matmul_peak(device, torch.float16, args.repeats, 8192)
        floor["matmul_fp32_gflops"] = tracker.measure()
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
        peak_key = "floor_gflops"
        floor_before = tracker.measure()
        after, after_peak = measure_peak(device, lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False))
        after = min(after, best_of(max(1, args.repeats - 1), lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False)))
        floor_protobin = {peak_key: (floor_before + tracker.measure()) / 2}
        row = {"forward_flop": forward_flop, "floor_gflops": floor_protobin[peak_key], "after_s": after, "after_peak_bytes": after_peak,
               "after_similarity_values_at_once": min(SIMILARITY_BLOCK, args.batch * args.time_steps * args.freq * prototypes),
               "after_gflops_forward_work": forward_flop / after / 1e9,
               "after_vs_matmul_peak": forward_flop / after / 1e9 / floor_protobin[peak_key],
               "after_nominal_gflops_3x": 3 * forward_flop / after / 1e9,
               "after_nominal_vs_matmul_peak": 3 * forward_flop / after / 1e9 / floor_protobin[peak_key]}
        if device.type == "cuda":
            row["after_vs_bf16_peak"] = forward_flop / after / 1e9 / floor["matmul_bf16_gflops"]
        if not args.skip_full_protobin:
            before, before_peak = measure_peak(
                device, lambda: epoch(protobin, optimizer, loaded, args.batch, device, pooled=False, descriptor=full_descriptor))
            row.update({"before_s": before, "before_peak_bytes": before_peak,
                        "before_similarity_values_at_once": args.batch * args.time_steps * args.freq * prototypes,
                        "before_vs_matmul_peak": forward_flop / before / 1e9 / floor_protobin[peak_key],
                        "before_nominal_vs_matmul_peak": 3 * forward_flop / before / 1e9 / floor_protobin[peak_key],
                        "speedup": before / after})
        rows["protobin_epoch"] = row

        split = first_clips(loaded, args.trial_clips)
        shape = HeadShape(args.time_steps * args.freq, args.freq, args.dim, args.classes, args.prototypes_per_class)
        report["trial_shape"] = {"clips": len(split), "epochs": args.trial_epochs, "tokens": shape.tokens, "freq": shape.freq,
                                 "dim": shape.dim, "classes": shape.classes, "prototypes_per_class": shape.prototypes_per_class}
        for kind in ("mean", "freqmean", "global"):  # pooled once per bank, before any trial (as the trainer does)
            loaded.pooled(kind)
        if not args.skip_trials:
            # issue 14's targets: >= 0.8 K x for global-vector heads, >= 2x for attentive and prototype heads
            targets = {"linear": 0.8 * args.trials, "mhca": 2.0, "protobin": 2.0}
            rows["trials"] = {}
            for probe, target in targets.items():
                print(f"{args.trials} {probe} trials ...", flush=True)
                clips, epochs = trial_data(probe, split, loaded, args.trial_epochs)
                rows["trials"][probe] = trial_row(clips, probe, args.trials, epochs, shape, tracker, device,
                                                  max(1, args.repeats - 1), target)
        if not args.skip_probes:
            print("one trial of every probe:", flush=True)
            rows["probes"] = probe_rows(split, loaded, shape, args.trial_epochs, tracker, device, max(1, args.repeats - 1))
    report["rows"] = rows
    floor["matmul_fp32_gflops_seen"] = {"min": min(tracker.seen), "max": max(tracker.seen), "count": len(tracker.seen)}
    if args.before and args.before.exists():
        report["previous_run"] = json.loads(args.before.read_text()).get("rows")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    table = markdown(report)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"written {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
