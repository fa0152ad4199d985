"""Copy the measured rates `patchprobe bench plan` costs jobs with from benchmarks/results/ into the package.

    python benchmarks/rates.py            # writes src/patchprobe/bench_rates.json
    python benchmarks/rates.py --check    # exit 1 when that file differs from what the results give

Sources: extract-cpu.json, extract-cuda.json and extract-cuda-fp16.json (`benchmarks/extract.py`:
clips/s per encoder) and train-cpu.json (`benchmarks/train.py`: each probe's training FLOP rate as a
fraction of the fp32 matmul floor measured around it, and K trials stacked, or as K members of one
shared pass, vs one at a time). An installed
patchprobe cannot read this folder, so the plan reads the copy; tests/test_bench_plan.py checks that
the copy matches these files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PACKAGE_FILE = Path(__file__).resolve().parents[1] / "src" / "patchprobe" / "bench_rates.json"
# plan device -> the extraction result measured there
EXTRACT_FILES = {"cpu": "extract-cpu.json", "cuda": "extract-cuda.json", "cuda-fp16": "extract-cuda-fp16.json"}
TRAIN_FILE = "train-cpu.json"
# benchmarks/extract.py's model labels -> the registered encoder each was built as (EAT and SSLAM share one
# architecture; the plan gives their fine-tuned variants the same speed)
ENCODER_OF_LABEL = {
    "audiomae (ViT-B)": "audiomae",
    "eat / sslam (ViT-B)": "eat-base",
    "beats (iter3)": "beats",
    "dasheng (base)": "dasheng",
    "asit (ViT-B)": "asit",
    "birdmae-base (ViT-B)": "birdmae-base",
}
# the trial row whose stacked / one-at-a-time time ratio stands for each cost kind of `PROBE_COSTS`
TRIAL_ROW_OF_KIND = {"pooled": "linear", "tokens": "mhca", "prototype": "protobin"}


def extraction(data: dict, source: str) -> dict:
    clips = {}
    for row in data["results"]:
        if row["encoder"] not in ENCODER_OF_LABEL:
            raise ValueError(f"{source}: encoder label {row['encoder']!r} has no registered encoder in ENCODER_OF_LABEL; add it")
        clips[ENCODER_OF_LABEL[row["encoder"]]] = row["clips_per_s"]
    return {"device": f"{data['device']}, {'float16' if data.get('half') else 'float32'}", "clips_per_s": clips}


def training(data: dict, source: str) -> dict:
    rows = data["rows"]
    if "probes" not in rows or "trials" not in rows:
        raise ValueError(f"{source}: no per-probe or trial rows; run benchmarks/train.py without --skip-probes / --skip-trials")
    trials = rows["trials"]
    missing = [row for row in TRIAL_ROW_OF_KIND.values() if "vectorised_s" not in trials.get(row, {})]
    if missing:
        raise ValueError(f"{source}: no vectorised timing for {', '.join(missing)}")
    counts = {row["trials"] for row in trials.values()}
    if len(counts) != 1:
        raise ValueError(f"{source}: the trial rows stack different numbers of trials ({sorted(counts)})")
    return {
        "device": f"{data['device']}, {data['threads']} threads" if data["device"] == "cpu" else data.get("gpu") or data["device"],
        "date": data["date"],
        "floor": data["floor"],
        "efficiency": {probe: row["efficiency"] for probe, row in rows["probes"].items()},
        "stacked_trials": counts.pop(),
        "stacked_time": {kind: trials[row]["vectorised_s"] / trials[row]["one_at_a_time_s"] for kind, row in TRIAL_ROW_OF_KIND.items()},
        "shared_time": {kind: trials[row]["shared_pass_s"] / trials[row]["one_at_a_time_s"] for kind, row in TRIAL_ROW_OF_KIND.items()},
    }


def build_rates(results: Path = RESULTS) -> dict:
    """The package's rate table from the result files in `results`."""
    def read(name: str) -> dict:
        path = results / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run the benchmark that writes it")
        return json.loads(path.read_text())

    sources = {device: f"benchmarks/results/{name}" for device, name in EXTRACT_FILES.items()}
    sources["training"] = f"benchmarks/results/{TRAIN_FILE}"
    return {
        "generated_by": "benchmarks/rates.py",
        "sources": sources,
        "extraction": {device: extraction(read(name), name) for device, name in EXTRACT_FILES.items()},
        "training": training(read(TRAIN_FILE), TRAIN_FILE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = json.dumps(build_rates(), indent=2) + "\n"
    if args.check:
        same = PACKAGE_FILE.exists() and PACKAGE_FILE.read_text() == text
        print(f"{PACKAGE_FILE}: {'up to date' if same else 'differs from benchmarks/results/: run python benchmarks/rates.py'}")
        sys.exit(0 if same else 1)
    PACKAGE_FILE.write_text(text)
    print(f"written {PACKAGE_FILE}")


if __name__ == "__main__":
    main()
