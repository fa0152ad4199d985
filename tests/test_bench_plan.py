"""`bench plan`'s estimates: the rates it ships are the benchmark results, its FLOP counts are torch's, it
gives back the benchmark's own timings at the benchmark's shape, and stacked trials and GPUs scale as stated."""

import importlib.util
import json
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from patchprobe.bench_plan import (_LAYERNORM, DEVICES, PROBE_COSTS, RATES_FILE, HeadShape, TrainingRates, load_rates, plan_grid,
                                   rates_from_json, stacks_trials, sweep_seconds, training_flop_per_clip)
from patchprobe.cli import app
from patchprobe.probes import PROBES, create_probe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
runner = CliRunner()


def _rates_script():
    spec = importlib.util.spec_from_file_location("benchmark_rates", ROOT / "benchmarks" / "rates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_rates_are_the_benchmark_results():
    built = _rates_script().build_rates(RESULTS)
    shipped = json.loads(resources.files("patchprobe").joinpath(RATES_FILE).read_text())
    assert shipped == built, "src/patchprobe/bench_rates.json is stale: run python benchmarks/rates.py"
    assert load_rates() == rates_from_json(built)
    # installs carry the table (the plan cannot read benchmarks/ there)
    assert RATES_FILE in (ROOT / "pyproject.toml").read_text()
    # every registered probe has a cost model and a measured rate
    assert set(PROBES.names()) <= set(PROBE_COSTS) and set(PROBE_COSTS) <= set(built["training"]["efficiency"])


def test_the_plan_gives_back_the_benchmarks_timings_at_its_shape():
    result = json.loads((RESULTS / "train-cpu.json").read_text())
    shape_of = result["trial_shape"]
    shape = HeadShape(shape_of["tokens"], shape_of["freq"], shape_of["dim"], shape_of["classes"], shape_of["prototypes_per_class"])
    rates = load_rates()
    for probe, row in result["rows"]["probes"].items():
        clips = {"train": row["clips"], "valid": 0, "test": 0}
        # at the floor measured around that row, the plan's time is the measured one
        seconds = sweep_seconds(probe, shape, clips, trials=1, epochs=row["epochs"], seeds=0, trials_per_pass=1, device="cpu",
                                rates=rates, cpu_peak=row["floor_gflops"] * 1e9)
        assert seconds == pytest.approx(row["seconds"], rel=1e-9), probe
    for probe, row in result["rows"]["trials"].items():
        kind = PROBE_COSTS[probe].kind
        assert rates.training.pass_factor(kind, row["trials"]) == pytest.approx(row["vectorised_s"] / row["one_at_a_time_s"])
        assert rates.training.pass_factor(kind, row["trials"], stacked=False) == pytest.approx(row["shared_pass_s"] / row["one_at_a_time_s"])


def test_stacked_trials_interpolate_between_one_and_the_measured_k():
    rates = TrainingRates(device="cpu", date="", floor={}, efficiency={}, stacked_trials=8, stacked_time={"tokens": 0.25},
                          shared_time={"tokens": 0.9})
    factors = [rates.pass_factor("tokens", k) for k in range(1, 12)]
    assert factors[0] == 1.0 and factors[7] == pytest.approx(0.25)
    assert all(a > b for a, b in zip(factors[:7], factors[1:8]))  # more trials per pass, less time per trial
    assert factors[8:] == [pytest.approx(0.25)] * 3  # no gain extrapolated beyond what was measured
    # the pass time is linear in k: t(4) = t(1) + 3/7 (t(8) - t(1)), t(8) = 0.25 x 8 t(1)
    assert rates.pass_factor("tokens", 4) * 4 == pytest.approx(1 + (2.0 - 1) * 3 / 7)
    assert rates.pass_factor("tokens", 8, stacked=False) == pytest.approx(0.9)


def test_gpu_training_is_the_cpu_estimate_over_the_measured_extraction_ratio():
    rates = load_rates()
    shape = HeadShape(512, 8, 768, 527, 10)
    clips = {"train": 1000, "valid": 100, "test": 100}
    cpu, gpu, gpu_half = (sweep_seconds("protobin", shape, clips, 50, 30, 3, 4, device, rates) for device in ("cpu", "cuda", "cuda-fp16"))
    ratio = rates.extraction["cuda"]["audiomae"] / rates.extraction["cpu"]["audiomae"]
    assert gpu == pytest.approx(cpu / ratio) and gpu_half == gpu  # probes train in float32 either way


@pytest.mark.parametrize("probe", sorted(PROBE_COSTS))
def test_the_cost_model_counts_the_products_torch_counts(probe):
    """One training step's matrix products as torch's FlopCounterMode counts them, against `PROBE_COSTS`. The model
    also counts element-wise work (LayerNorm, normalising tokens) and the prototype heads' gather backward, which
    the counter does not see: it may only count more, and little more where products dominate."""
    torch.manual_seed(0)
    batch, time, freq, dim, classes, per_class = 4, 8, 4, 128, 6, 3
    tokens, mask, global_vector = torch.randn(batch, time, freq, dim), torch.ones(batch, time, freq, dtype=torch.bool), torch.randn(batch, dim)
    args = {"prototypes_per_class": per_class} if PROBES.spec(probe).family == "prototype" else {}
    head = create_probe(probe, dim, classes, global_dim=dim, freq_tokens=freq, **args)
    head.prepare([{"tokens": tokens, "mask": mask, "global": global_vector}])
    head.train()
    # torch's counter ignores `groups` in a grouped convolution's backward (it counts conv's depthwise 3x3 as dense):
    # count conv's forward and double its weight-gradient-only depthwise part by hand instead
    forward_only = probe == "conv"
    with FlopCounterMode(display=False) as counter:
        if head.pooled_inputs:
            pooled = {"mean": tokens.mean((1, 2)), "global": global_vector, "freqmean": tokens.mean(1).reshape(batch, -1)}
            logits = head.forward_pooled(pooled)
        else:
            logits = head(tokens, mask, global_vector)
        if not forward_only:
            logits.sum().backward()
    counted = counter.get_total_flops() / batch
    modelled = training_flop_per_clip(probe, HeadShape(time * freq, freq, dim, classes, per_class))
    if forward_only:
        depthwise, pointwise, linear = 2 * 9 * dim * time * freq, 2 * dim * dim * time * freq, 2 * 2 * dim * classes
        assert counted == depthwise + pointwise + linear
        counted = 2 * depthwise + 3 * pointwise + 3 * linear
    # LayerNorm on every token (x3 where it trains): element-wise work the counter does not see
    layernorm = {"linpre": 3, "simpool": 3, "mhca": 1}.get(probe, 0) * _LAYERNORM * dim * time * freq
    assert counted <= modelled - layernorm <= 1.15 * counted


def _small_grid(tmp_path, **changes) -> Path:
    grid = {"name": "small", "trials": 8, "epochs": 5, "seeds": 2, "probes": ["linear", "mhca", "conv", "protobin"],
            "encoders": [{"name": "audiomae"}],
            "datasets": [{"name": "esc50", "dataset": "esc50", "options": {"protocol": "random"}}], **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_a_plan_costs_stacked_trials_and_names_where_its_rates_come_from(tmp_path):
    path = _small_grid(tmp_path)
    alone, stacked = plan_grid(path, trials_per_pass=1), plan_grid(path, trials_per_pass=8)
    assert alone["trials_per_pass"] == [1] and stacked["trials_per_pass"] == [8]
    rates = load_rates()
    shape = HeadShape(512, 8, 768, 50, 20)  # a 5 s clip is one 10.24 s window of 64 x 8 tokens; ESC-50 has 50 classes
    clips = {"train": 1440, "valid": 160, "test": 400}
    # conv's trials train side by side in one pass; mhca's and protobin's as one stacked model
    assert not stacks_trials("conv") and stacks_trials("mhca") and stacks_trials("protobin")
    for probe in ("linear", "mhca", "conv", "protobin"):
        job = f"sweep/audiomae/esc50/{probe}"
        one, many = ({j["job"]: j for j in plan["jobs"]}[job]["hours"]["cpu"] * 3600 for plan in (alone, stacked))
        assert one == pytest.approx(sweep_seconds(probe, shape, clips, 8, 5, 2, 1, "cpu", rates))
        # only the 8 search trials share a pass; the 2 final seed runs train alone
        trial = sweep_seconds(probe, shape, clips, 1, 5, 0, 1, "cpu", rates)
        factor = rates.training.pass_factor(PROBE_COSTS[probe].kind, 8, stacked=stacks_trials(probe))
        assert one - many == pytest.approx(8 * trial * (1 - factor))
    extract = {j["job"]: j for j in alone["jobs"]}["extract/audiomae/esc50"]
    assert extract["hours"]["cpu"] == pytest.approx(2000 * 1.024 / rates.extraction["cpu"]["audiomae"] / 3600)
    assert "not measured" in alone["rates"]["gpu_training"] and "H100" in alone["rates"]["extraction"]["cuda"]
    result = runner.invoke(app, ["bench", "plan", str(path), "--totals", "--trials-per-pass", "8"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "8 trials per pass" in result.output and "GPU training not measured" in result.output
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        plan_grid(path, devices=("cpu", "tpu"))
    result = runner.invoke(app, ["bench", "plan", str(path), "--trials-per-pass", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert set(DEVICES) == {"cpu", "cuda", "cuda-fp16"}
