"""The `patchprobe` command line. Thin: every command calls the public Python API."""

from __future__ import annotations

import functools
import json
import math
import os
import types
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import PatchprobeError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Probe frozen audio encoders through their patch tokens.")
console = Console()


def _print_version(value: bool) -> None:
    if value:
        from ._version import __version__

        console.print(f"patchprobe {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Probe frozen audio encoders through their patch tokens."""


def _parse_pairs(items: list[str] | None, option: str) -> dict:
    """KEY=VALUE strings -> dict; values are read as JSON when they parse (numbers, true/false), else as text."""
    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def _positive_finite(value: float) -> float:
    """Typer callback for rates: a finite number above 0 (typer has no open lower bound)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not in the range x>0 (a finite number above 0)")
    return value


def _learning_rate(value: str) -> str | float:
    """Typer callback for --lr: "auto" or a finite number above 0."""
    if value == "auto":
        return value
    try:
        return _positive_finite(float(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not auto or a number in the range x>0") from None


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _keyword_types(factory: Callable, names: Optional[list[str]] = None) -> Optional[dict[str, object]]:
    """keyword -> type hint (None where it has none) of what a registered factory accepts; None when it takes
    **kwargs (it checks those itself). `names` narrows the keywords (e.g. a probe's own arguments)."""
    import inspect
    import typing

    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # an annotation that cannot be resolved: check names only
        hints = {}
    keywords = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return {name: hints.get(name) for name in keywords if names is None or name in names}


def _type_text(hint: object) -> str:
    """`int | None` -> "int", `str | Path | None` -> "str or Path": the type a value given on the command line must have."""
    import typing

    members = [m for m in typing.get_args(hint) if m is not type(None)] if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    return " or ".join(getattr(m, "__name__", None) or str(m).replace("typing.", "") for m in members)


def _checked_option(accepted: Optional[dict[str, object]], subject: str, key: str, value, flag: str,
                    flags: Optional[dict[str, str]] = None) -> object:
    """One option of a registered encoder, probe or dataset, checked before anything is read or written.

    An unknown key or a value of the wrong type raises a usage error naming `flag` and what is allowed (keys with a
    flag of their own are listed with it, from `flags`). Returns the value converted to the keyword's type.
    """
    from pydantic import TypeAdapter, ValidationError

    if accepted is None:
        return value
    if key not in accepted:
        listed = ", ".join(f"{name} ({flags[name]})" if flags and name in flags else name for name in accepted) or "none"
        raise typer.BadParameter(f"{subject} takes no option {key!r}; its options are: {listed}", param_hint=flag)
    hint = accepted[key]
    if hint is None:
        return value
    for candidate in (value, str(value)) if not isinstance(value, str) else (value,):
        try:
            return TypeAdapter(hint).validate_python(candidate)
        except ValidationError:
            continue
    shown = f"{key}={value}" if flag.endswith("-arg") else str(value)
    raise typer.BadParameter(f"{shown!r}: {subject} takes {key} as {_type_text(hint)}", param_hint=flag)


def _checked_options(accepted: Optional[dict[str, object]], subject: str, options: dict, flag: str,
                     flags: Optional[dict[str, str]] = None) -> dict:
    """`_checked_option` for every KEY=VALUE of a repeatable option."""
    return {key: _checked_option(accepted, subject, key, value, flag, flags) for key, value in options.items()}


def _encoder_options(encoder: str, options: dict, flag: str = "--encoder-arg", **own_flags: tuple[object, str]) -> dict:
    """--encoder-arg KEY=VALUE pairs plus the options with a flag of their own (own_flags: keyword -> (value, flag),
    None values left out), checked against the encoder's factory; an option the encoder lacks names the encoders
    that take it."""
    from .encoders import ENCODERS

    accepted = _keyword_types(ENCODERS.get(encoder))
    flags = {key: flag_name for key, (_, flag_name) in own_flags.items()} | {"device": "--device"}
    checked = {}
    for key, (value, flag_name) in own_flags.items():
        if value is None:
            continue
        if accepted is not None and key not in accepted:
            takers = [name for name in ENCODERS.names() if key in (_keyword_types(ENCODERS.get(name)) or {})]
            raise typer.BadParameter(f"encoder {encoder!r} takes no {flag_name}; encoders that do: {', '.join(takers) or 'none'}",
                                     param_hint=flag_name)
        checked[key] = _checked_option(accepted, f"encoder {encoder!r}", key, value, flag_name)
    return checked | _checked_options(accepted, f"encoder {encoder!r}", options, flag, flags)


def _run_encoder_options(run: Path, options: dict) -> dict:
    """`predict`/`export` --encoder-arg pairs, checked against the encoder the run's bank was extracted with."""
    if not options:
        return options
    from .train import Run

    return _encoder_options(Run(run).bank.encoder, options)


def _probe_options(probe: str, options: dict, flag: str = "--probe-arg") -> dict:
    """--probe-arg KEY=VALUE pairs checked against the probe's own arguments (`patchprobe probes` lists them)."""
    from .probes import PROBES

    names = list(PROBES.spec(probe).arguments())
    return _checked_options(_keyword_types(PROBES.get(probe), names), f"probe {probe!r}", options, flag,
                            {"prototypes_per_class": "--prototypes-per-class"})


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/bold red] {escape(_describe_error(exc))}", soft_wrap=True)  # one line, whatever the width
    raise typer.Exit(code=2)


# What bad input raises: patchprobe's own errors, pydantic's (a ValueError), bad values and types passed on to
# constructors, and files that cannot be read. A bug raises something else and keeps its traceback.
USER_ERRORS = (PatchprobeError, ValueError, TypeError, OSError, EOFError)


def _describe_error(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def command(*args, **kwargs) -> Callable:
    """`app.command`, with the one error handler every command shares: a user error is one red line and exit code 2.

    Set PATCHPROBE_DEBUG=1 to get the traceback instead.
    """

    def register(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*call_args, **call_kwargs):
            try:
                return function(*call_args, **call_kwargs)
            except USER_ERRORS as exc:
                if os.environ.get("PATCHPROBE_DEBUG"):
                    raise
                _fail(exc)

        return (kwargs.pop("app", None) or app).command(*args, **kwargs)(run)

    return register


@command()
def demo(
    encoder: str = typer.Option("tiny-mae", help="encoder to probe (tiny-mae, toy-vit, birdnet)"),
    out: Path = typer.Option(Path("patchprobe-demo"), help="results folder (reused and resumed on rerun)"),
    quick: bool = typer.Option(False, "--quick", help="small, fast version (the CI run): under 4 minutes on 2 cores"),
    encoder_arg: Optional[list[str]] = typer.Option(None, help="encoder argument KEY=VALUE, repeatable (e.g. width=192)"),
    probes: str = typer.Option("linear,mhca,protobin", help="comma-separated probe names, or 'all' for the whole zoo"),
    seeds: int = typer.Option(1, min=1, help="train every probe with seeds 0..N-1 and report mean ± sd"),
    kinds: str = typer.Option("multilabel,singlelabel", help="which synthetic datasets: multilabel, singlelabel or both"),
    prototypes_per_class: int = typer.Option(20, min=1, help="J for the prototype probes"),
    device: str = typer.Option("cpu", help="torch device for encoder and probes"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Synthetic localized events -> encoder -> bank -> probes (linear / mhca / protobin by default) -> table and figure."""
    from .demo import DATASETS as DEMO_KINDS
    from .demo import DemoConfig, results_markdown, run_demo
    from .encoders.base import check_device

    chosen_kinds = list(DEMO_KINDS) if kinds.strip() == "both" else _split_list(kinds)
    if not chosen_kinds or any(kind not in DEMO_KINDS for kind in chosen_kinds):
        raise typer.BadParameter(f"{kinds!r}: choose {', '.join(DEMO_KINDS)} or both", param_hint="--kinds")
    check_device(device)
    settings = {
        "encoder": encoder, "encoder_args": _encoder_options(encoder, _parse_pairs(encoder_arg, "--encoder-arg")), "out": out, "device": device,
        "probes": _split_list(probes), "seeds": list(range(seeds)), "kinds": chosen_kinds,
        "prototypes_per_class": prototypes_per_class,
    }
    config = DemoConfig.quick_mode(**settings) if quick else DemoConfig(**settings)
    summary = run_demo(config, progress=not quiet, console=console)
    console.print()
    console.print(results_markdown(summary))
    for kind, gaps in summary["gaps"].items() if len(config.probes) <= 4 else ():
        console.print(f"{kind}: " + ", ".join(f"{k} = {v:+.3f}" for k, v in gaps.items()))
    console.print(f"\nwrote {out / 'summary.json'}, {out / 'results.md'}, {out / 'demo_results.png'}  ({summary['timings']['total_s']:.0f} s)")


@command()
def extract(
    encoder: str = typer.Option(..., help="registered encoder name (see `patchprobe encoders`)"),
    bank: Path = typer.Option(..., help="bank folder to create or resume"),
    manifest: Optional[Path] = typer.Option(None, help="CSV with columns path, labels, split (your own data)"),
    dataset: Optional[str] = typer.Option(None, help="registered dataset instead of a manifest: a benchmark key (see `patchprobe datasets`) or `folder`"),
    data_dir: Optional[Path] = typer.Option(None, help="local copy of the dataset (save_to_disk folder or Parquet files; for `folder`: the class folders)"),
    dataset_arg: Optional[list[str]] = typer.Option(None, help="dataset protocol option KEY=VALUE, repeatable (e.g. k=64, seed=2)"),
    augment_variants: int = typer.Option(0, help="mixup variants per training clip stored beside it (BirdSet few-shot protocol: 5)"),
    split: Optional[list[str]] = typer.Option(None, help="split(s) to extract (default: all non-empty)"),
    batch_size: Optional[int] = typer.Option(None, help="clips per encoder call"),
    layer: Optional[str] = typer.Option(None, help="block index (or named layer, e.g. birdnet's act_post) to store; default: last"),
    device: str = typer.Option("cpu", help="torch device"),
    dtype: str = typer.Option("float16", help="storage dtype of token maps: float16 or float32"),
    chunk_clips: int = typer.Option(256, help="clips per committed chunk (resume granularity)"),
    encoder_arg: Optional[list[str]] = typer.Option(None, help="encoder argument KEY=VALUE, repeatable"),
    checkpoint: Optional[Path] = typer.Option(None, help="official weights file (default: the Hugging Face hub copy, cached, where `patchprobe encoders` lists one)"),
    half: bool = typer.Option(False, "--half", help="float16 network on a CUDA device (front-end stays float32)"),
    multilabel: Optional[bool] = typer.Option(None, "--multilabel/--multiclass", help="override the inferred task type (manifests)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="leave out clips that fail validation or decoding, and record them in the bank"),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="check every clip's labels and audio header before extracting"),
    strict: bool = typer.Option(False, "--strict", help="make data-hygiene warnings errors (the same audio in two splits, classes without training clips)"),
    refresh_changed: bool = typer.Option(False, "--refresh-changed", help="re-extract clips whose audio changed since they were stored (default: refuse)"),
    shard: Optional[str] = typer.Option(None, help="I/N: extract only shard I (0-based, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-(N-1)) of every split; N processes fill one bank. Under torchrun: RANK/WORLD_SIZE"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Build (or resume, or repair) a token-map bank from a manifest, a benchmark dataset, or class folders."""
    from .bank import Bank, extract_bank, shard_for_process
    from .datasets import MixupAugmented, MixupConfig, checked
    from .encoders import create_encoder

    chosen_shard, device, torchrun_note = shard_for_process(shard, device)
    if torchrun_note:
        console.print(torchrun_note)
    _check_extract_options(batch_size, chunk_clips, device)
    if (manifest is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --manifest CSV or --dataset NAME")
    chosen_layer = int(layer) if layer and layer.lstrip("-").isdigit() else layer
    encoder_options = _encoder_options(encoder, _parse_pairs(encoder_arg, "--encoder-arg"), layer=(chosen_layer, "--layer"),
                                       checkpoint=(None if checkpoint is None else str(checkpoint), "--checkpoint"),
                                       half=(True if half else None, "--half"))
    if half and not device.startswith("cuda"):
        raise typer.BadParameter(f"half precision runs on a CUDA device, and --device is {device!r}: drop --half, or pass --device cuda",
                                 param_hint="--half")
    if manifest is not None:
        data = _manifest_dataset(manifest, multilabel)
    else:
        data = _named_dataset(dataset, data_dir, _parse_pairs(dataset_arg, "--dataset-arg"), multilabel)
    if validate:
        data = checked(data, skip_bad=skip_bad, splits=split, progress=not quiet, strict=strict,
                       warn=lambda text: console.print(f"[yellow]warning:[/yellow] {escape(text)}"))
    elif strict:
        raise typer.BadParameter("--strict needs validation; drop --no-validate")
    if augment_variants:
        data = MixupAugmented(data, MixupConfig(variants=augment_variants))
    model = create_encoder(encoder, device=device, **{"layer": chosen_layer, **encoder_options})
    extract_bank(data, model, bank, splits=split, batch_size=batch_size, chunk_clips=chunk_clips,
                 dtype=dtype, skip_bad=skip_bad, progress=not quiet, shard=chosen_shard,
                     refresh_changed=refresh_changed, log=lambda text: console.print(f"[yellow]{escape(text)}[/yellow]"))
    _print_info(Bank(bank).describe())


@command()
def train(
    bank: Path = typer.Option(..., help="bank folder built by `patchprobe extract`"),
    probe: str = typer.Option(..., help="probe name (see `patchprobe probes`)"),
    out: Path = typer.Option(..., help="run folder for config.json, metrics.json, scores and weights"),
    epochs: int = typer.Option(30, min=1),
    lr: str = typer.Option("auto", callback=_learning_rate, help="peak learning rate (AdamW, cosine schedule with warm-up), or auto: "
                           "the probe's lr grid (`patchprobe probes`) trained in one pass, the best on valid kept"),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 1e-4); with --solver lbfgs: the L2 strength (default: searched on valid)"),
    solver: str = typer.Option("adamw", help="adamw (the paper's 30-epoch protocol) or lbfgs (linear, linearc, freqpool solved to convergence)"),
    batch_size: int = typer.Option(128, min=1),
    loss: str = typer.Option("auto", help="auto (ASL for multi-label, CE for multi-class), asl, bce or ce"),
    seed: int = typer.Option(0),
    prototypes_per_class: Optional[int] = typer.Option(None, help="J for the prototype probes (default: the probe's, see `patchprobe probes`)"),
    probe_arg: Optional[list[str]] = typer.Option(None, help="extra probe argument KEY=VALUE (JSON value), repeatable"),
    device: str = typer.Option("cpu"),
    precision: str = typer.Option("fp32", help="fp32, or bf16: the probe's forward pass under bfloat16 autocast (GPUs with bf16 "
                                  "matrix units; weights, optimiser and evaluation stay float32)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run of another setting in --out"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Train one probe on a bank and evaluate it on the bank's valid and test splits.

    By default (--lr auto) every rate of the probe's grid is trained in one shared pass and the best on valid is kept (on a seeded carve of train when the bank has no valid split).

    A finished run of the same setting in --out is kept and shown; one of another setting is refused unless --overwrite.
    """
    from .bank import LoadedBank
    from .encoders.base import check_device
    from .train import TrainConfig, fit, search_l2

    args = _probe_options(probe, _parse_pairs(probe_arg, "--probe-arg"))
    if prototypes_per_class is not None:
        args |= _probe_options(probe, {"prototypes_per_class": prototypes_per_class}, "--prototypes-per-class")
    if weight_decay is not None and not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise typer.BadParameter(f"{weight_decay} is not a finite number >= 0", param_hint="--weight-decay")
    check_device(device)
    if solver not in ("adamw", "lbfgs"):
        raise typer.BadParameter(f"{solver!r} is not adamw or lbfgs", param_hint="--solver")
    if loss not in ("auto", "asl", "bce", "ce"):
        raise typer.BadParameter(f"{loss!r} is not auto, asl, bce or ce", param_hint="--loss")
    if precision not in ("fp32", "bf16"):
        raise typer.BadParameter(f"{precision!r} is not fp32 or bf16", param_hint="--precision")
    config = TrainConfig(probe=probe, probe_args=args, epochs=epochs, lr=lr, weight_decay=1e-4 if weight_decay is None else weight_decay,
                         batch_size=batch_size, loss=loss, seed=seed, data_seed=seed, device=device, solver=solver,
                         precision=precision)
    loaded = LoadedBank.load(bank, device=device)
    if solver == "lbfgs" and weight_decay is None:
        loaded.require("valid", purpose="searching the L2 strength (or pass --weight-decay)")
        config, scores, edge = search_l2(loaded.train, loaded["valid"], config)
        console.print("L2 strength on valid: " + ", ".join(f"{k:g}: {v:.4f}" for k, v in scores.items())
                      + f" -> {config.weight_decay:g}" + (f" (at the {edge} end of the grid)" if edge else ""))
    warn = lambda text: console.print(f"[yellow]warning:[/yellow] {escape(text)}")  # noqa: E731
    result = fit(loaded, [config], [out], progress=not quiet, overwrite=overwrite, log=lambda text: console.print(escape(text)))[0]
    if result.diverged:
        raise ValueError(result.diverged)
    if result.lr_selection is not None:
        console.print(escape(result.lr_selection.describe()))
    table = Table(title=f"{probe} on {bank}, lr {result.config.lr_text} ({result.probe.num_parameters():,} parameters, {result.seconds:.1f} s)")
    table.add_column("split")
    metrics = sorted({k for m in result.metrics.values() for k in m})
    for name in metrics:
        table.add_column(name, justify="right")
    for split, values in result.metrics.items():
        table.add_row(split, *[_fmt(values.get(name)) for name in metrics])
    console.print(table)
    if result.peak_epoch is not None:
        console.print(f"valid metric peaked at epoch {result.peak_epoch} of {result.config.epochs} (history.json has it per epoch)")
    if result.unstable:
        warn(f"loss not trusted: {result.unstable}")
    for text in result.warnings:
        warn(text)
    if result.reused:
        console.print(f"{out} already held this finished run: kept it (nothing trained)")
    else:
        console.print(f"wrote {out}/config.json, metrics.json, history.json, class_metrics.json, scores.npz, thresholds.json, probe.safetensors")


@command()
def analyze(
    run: Path = typer.Argument(..., help="run folder of a prototype or attentive probe"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: RUN/analysis)"),
    split: str = typer.Option("test", help="bank split to analyse"),
    clips: int = typer.Option(3, min=0, help="clips that get heatmaps"),
    compare: Optional[list[Path]] = typer.Option(None, help="another prototype run whose similarity histogram is overlaid (repeatable)"),
    manifest: Optional[Path] = typer.Option(None, help="CSV manifest of the bank's audio (default: the one bank.json records)"),
) -> None:
    """Prototype similarity histogram, dead prototypes and heatmaps (or attention maps) over the spectrogram."""
    from .report import analyze_run

    report = analyze_run(run, out=out, split=split, clips=clips, compare=compare, manifest=manifest)
    folder = out or run / "analysis"
    for name, stats in report.get("cosine_similarity", {}).items():
        console.print(f"{name}: pairwise cosine mean {stats['mean']:+.3f}, sd {stats['sd']:.3f}, mean |cos| {stats['mean_abs']:.3f}")
    if "dead_prototypes" in report:
        total = report["num_prototypes"]
        console.print(f"dead prototypes (never the best match of any token): {report['dead_prototypes']['count']} of {total}")
        console.print(f"never-winning prototypes (never the top contribution to a true class): {report['never_winning_prototypes']['count']} of {total}")
    console.print(f"spectrograms: {report['spectrograms']}")
    console.print(f"wrote {folder}/analysis.json and {len(report['figures'])} figures: {', '.join(report['figures'])}")


@command()
def plot(
    runs: Path = typer.Argument(..., help="folder holding run folders (searched recursively)"),
    x: str = typer.Option(..., help="setting on the x axis: a probe argument (prototypes_per_class), lr or weight_decay"),
    metric: str = typer.Option("map", help="metric to plot (map, auroc, accuracy)"),
    split: str = typer.Option("test", help="valid or test"),
    out: Optional[Path] = typer.Option(None, help="PNG path (default: RUNS/<metric>_vs_<x>.png)"),
    linear_x: bool = typer.Option(False, "--linear-x", help="linear instead of log x axis"),
) -> None:
    """Plot a metric against one setting over many runs (e.g. mAP vs J), mean ± sd over seeds, one line per probe."""
    from .report import collect_runs, markdown_table, sweep_plot

    if split not in ("valid", "test"):
        raise typer.BadParameter(f"{split!r} is not valid or test (the splits runs are scored on)", param_hint="--split")
    path = out or runs / f"{metric}_vs_{x}.png"
    table = sweep_plot(collect_runs(runs), x, path, metric=metric, split=split, log_x=not linear_x)
    console.print(markdown_table(table, floatfmt=".4f"))
    console.print(f"wrote {path}")


@command()
def report(
    inputs: list[Path] = typer.Argument(..., help="results table (.parquet/.csv), grid file (.yaml), sweep, run or demo folder; several are merged"),
    out: Path = typer.Option(..., help="output folder: index.html, tables (md/tex/csv), figures (PNG + SVG), report.json"),
    split: str = typer.Option("test", help="split the tables and statistics use"),
    metric: Optional[str] = typer.Option(None, help="one metric for every dataset (default: map where reported, else accuracy)"),
    pair: Optional[list[str]] = typer.Option(None, help="A,B: probes compared by re-ranking and paired bootstrap (repeatable; default linear,protobin)"),
    resamples: int = typer.Option(1000, min=10, help="bootstrap resamples over test clips"),
    seed: int = typer.Option(0, help="bootstrap generator seed"),
    title: str = typer.Option("patchprobe report", help="page title"),
) -> None:
    """The paper's tables and figures from any results, with their statistics, as one self-contained HTML page."""
    from .report import ReportConfig, read_results, write_report

    pairs = [tuple(_split_list(item)) for item in pair or ["linear,protobin"]]
    if any(len(p) != 2 for p in pairs):
        raise typer.BadParameter("give two probe names: --pair linear,protobin", param_hint="--pair")
    config = ReportConfig(split=split, metric=metric, pairs=pairs, resamples=resamples, seed=seed, title=title)
    summary = write_report(read_results(inputs, extra_readers=[_grid_reader()]), out, config)
    console.print(f"{len(summary['encoders'])} encoder(s), {len(summary['datasets'])} dataset(s), {len(summary['probes'])} probe(s): "
                  f"{summary['cells']} cells, {summary['runs']} runs")
    for note in summary["notes"]:
        console.print(f"note: {escape(note)}")
    console.print(f"wrote {out / 'index.html'} (open it in a browser; works offline), tables.md/.tex/.csv and "
                  f"{sum(len(f['files']) for f in summary['figures'].values())} figure files")


def _grid_reader():
    """Report input: a grid file, read through the bench (which the report layer may not import): its results
    table, collected afresh, with the run folder of every row so that per-clip scores can be read."""
    from .bench import Grid, Job, collect_results
    from .report import Reader

    def read(path: Path):
        import pandas as pd

        grid = Grid(path)
        table = collect_results(grid)
        if table.empty:
            return table, [f"{path}: no finished search yet"]
        cell = [name if pd.isna(draw) else f"{name}-draw{int(draw)}" for name, draw in zip(table["dataset"], table["draw"])]
        table["run"] = [str(grid.sweep_dir(Job(kind="sweep", encoder=e, dataset=c, probe=p)) / "final" / f"seed={s}")
                        for e, c, p, s in zip(table["encoder"], cell, table["probe"], table["seed"])]
        table["probe_name"] = table["probe"]
        return table, []

    return Reader("grid file", lambda path: path.is_file() and path.suffix in (".yaml", ".yml"), read)


@command()
def sweep(
    bank: Path = typer.Option(..., help="bank folder (train and valid drive the search, test the final runs)"),
    probe: str = typer.Option(..., help="probe name (see `patchprobe probes`)"),
    out: Path = typer.Option(..., help="folder for sweep.json, summary.json, trials.csv, the final seed runs (and the default SQLite storage)"),
    trials: int = typer.Option(50, min=1, help="trials in the whole study, whatever the number of workers; a larger value extends a finished study"),
    startup_trials: Optional[int] = typer.Option(None, min=0, help="Sobol trials before TPE (default: half, fixed when the study is created)"),
    epochs: int = typer.Option(30, min=1),
    seeds: int = typer.Option(3, min=1, help="seeds for retraining the best setting (initialisation and data order)"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL: default sqlite:///OUT/optuna.db; postgresql+psycopg://user:pw@host/db lets workers on other machines join"),
    study_name: Optional[str] = typer.Option(None, help="default: <bank folder>/<probe>"),
    lr_range: Optional[str] = typer.Option(None, help="LOW,HIGH learning-rate bounds (default per probe: see docs/sweeps.md)"),
    no_prune: bool = typer.Option(False, "--no-prune", help="train every trial for all epochs"),
    probe_arg: Optional[list[str]] = typer.Option(None, help="extra probe argument KEY=VALUE, repeatable"),
    heartbeat_seconds: int = typer.Option(30, min=1, help="seconds between a running trial's heartbeats"),
    grace_seconds: int = typer.Option(120, min=2, help="a trial whose worker is silent this long is reclaimed (must exceed --heartbeat-seconds)"),
    wait_seconds: Optional[float] = typer.Option(None, min=0, help="when only trials held by other workers are left: wait at most this long for them (reclaiming silent ones), then exit 3; default: as long as they run"),
    db_retry_seconds: float = typer.Option(120.0, min=0, help="wait out a database outage this long before giving up (exit 2)"),
    device: str = typer.Option("cpu"),
    trials_per_pass: int = typer.Option(1, min=1, help="trials this worker asks for and trains together (one stacked model where the probe stacks); each is still reported, pruned and told on its own. Pays off without pruning (--no-prune): see docs/sweeps.md"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar (notices about waiting and outages are still printed)"),
) -> None:
    """The paper's search for one (bank, probe): Sobol then TPE over lr and weight decay, pruned, then 3 seeds.

    Start it again anywhere (same --storage) to add workers; rerun it to resume. Exit 0 with the summary, 2 on bad input
    or a database gone longer than --db-retry-seconds, 3 when --wait-seconds ran out.
    """
    from .errors import SweepIncompleteError
    from .sweep import SweepConfig, run_sweep

    from .encoders.base import check_device

    try:
        bounds = tuple(float(x) for x in _split_list(lr_range)) if lr_range else None
    except ValueError:
        bounds = ()
    if bounds is not None and (len(bounds) != 2 or not 0 < bounds[0] < bounds[1] < math.inf):
        raise typer.BadParameter(f"{lr_range!r}: give LOW,HIGH, two numbers with 0 < LOW < HIGH (e.g. 1e-3,1)", param_hint="--lr-range")
    check_device(device)
    if grace_seconds <= heartbeat_seconds:
        raise typer.BadParameter(f"{grace_seconds} must exceed --heartbeat-seconds ({heartbeat_seconds}), or live workers' "
                                 "trials are taken for dead", param_hint="--grace-seconds")
    config = SweepConfig(probe=probe, probe_args=_probe_options(probe, _parse_pairs(probe_arg, "--probe-arg")), trials=trials,
                         startup_trials=startup_trials, epochs=epochs, seeds=seeds, lr_range=bounds, prune=not no_prune,
                         heartbeat_seconds=heartbeat_seconds, grace_seconds=grace_seconds, device=device,
                         trials_per_pass=trials_per_pass)
    try:
        summary = run_sweep(bank, config, out, storage=storage, study_name=study_name, progress=not quiet,
                            wait_seconds=math.inf if wait_seconds is None else wait_seconds, db_retry_seconds=db_retry_seconds,
                            log=lambda message: console.print(escape(message)))
    except SweepIncompleteError as exc:
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        raise typer.Exit(code=3)
    assert summary is not None  # a waiting search returns only once the study is finished
    _print_trials(out / "trials.csv")
    metric = next(iter(summary["test"]), None)
    best = summary["best"]
    console.print(f"best lr {best['lr']:.3g}, weight decay {best['weight_decay']:.3g} (trial {best['trial']}, valid {best['valid']:.4f})"
                  + (f"; at the {summary['edge']['lr']} edge of the lr range: widen it with --lr-range" if summary["edge"]["lr"] else ""))
    if metric:
        console.print(f"test {metric}: {summary['test'][metric]['mean']:.4f} ± {summary['test'][metric]['sd']:.4f} over {len(summary['seeds'])} seeds")
    console.print(f"trials: {summary['trials']}; written {out / 'summary.json'} and {out / 'trials.csv'}")


def _print_trials(path: Path) -> None:
    """The trials table of a finished search (trials.csv), over-budget placeholders left out."""
    import csv

    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if not row["note"].startswith("over budget")]
    table = Table("trial", "state", "lr", "weight decay", "valid", "pruned at", "s", "note", title="trials")

    def number(text: str) -> str:
        return f"{float(text):.4g}" if text else "-"

    for row in rows:
        table.add_row(row["trial"], row["state"], number(row["lr"]), number(row["weight_decay"]), number(row["valid"]),
                      row["pruned_at_epoch"] or "-", number(row["seconds"]), row["note"])
    console.print(table)


bench_app = typer.Typer(help="The benchmark grid: encoders x datasets x probes as resumable jobs shared by any number of workers.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@command("run", app=bench_app)
def bench_run(
    grid: Path = typer.Argument(..., help="GRID.yaml (see docs/sweeps.md)"),
    poll: float = typer.Option(10.0, help="seconds between looks at jobs other workers hold"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Do every unfinished job of the grid (start this on as many machines as you like), then write the results table."""
    from .bench import run_grid

    from .bench import Grid, summarize_results

    table = run_grid(grid, poll_seconds=poll, progress=not quiet, log=lambda message: console.print(escape(message)))
    if table.empty:
        console.print("no results yet")
        return
    cells = summarize_results(table)
    test = cells[cells["split"] == "test"].drop(columns=["split"])
    console.print(test.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    console.print(f"mean ± sd over k-shot draws (n = draws) or seeds (n = seeds); tables in {Grid(grid).results}: "
                  "results.parquet / results.csv (one row per seed and metric), cells.csv (the summary above)")


@command("status", app=bench_app)
def bench_status(grid: Path = typer.Argument(..., help="GRID.yaml")) -> None:
    """Progress of a grid: every job's state, trials done per search, and an ETA for one worker."""
    from .bench import grid_status

    status = grid_status(grid)
    table = Table("job", "state", "trials", title=f"grid {status['grid']}")
    for job in status["jobs"]:
        table.add_row(job["job"], job["state"], "-" if job["trials"] is None else str(job["trials"]))
    console.print(table)
    counts = ", ".join(f"{v} {k}" for k, v in status["counts"].items() if v)
    eta = status["eta_seconds"]
    eta_text = "unknown until a job of each kind has finished" if eta is None else f"{eta / 60:.1f} min for one worker" + (
        "" if status["eta_complete"] else " (lower bound: some job kinds have no timing yet)")
    console.print(f"{counts}; ETA {eta_text}")


@command("plan", app=bench_app)
def bench_plan(
    grid: Path = typer.Argument(..., help="GRID.yaml"),
    jobs: bool = typer.Option(True, "--jobs/--totals", help="list every job, or only the totals"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    trials_per_pass: Optional[int] = typer.Option(None, "--trials-per-pass", min=1, help="cost searches as training this many "
                                                  "trials together as one stacked model (default: what `bench run` does)"),
) -> None:
    """Every job of a grid before anything runs: bank sizes and estimated hours per device, from measured rates
    (see docs/benchmark.md)."""
    from .bench_plan import plan_grid

    plan = plan_grid(grid, trials_per_pass=trials_per_pass)
    if as_json:
        console.print_json(json.dumps(plan))
        return
    devices = list(plan["devices"])
    hours = lambda value: "?" if value is None else f"{value:,.2f}"  # noqa: E731
    if jobs:
        table = Table("job", "bank GB", *[f"h {d}" for d in devices], title=f"grid {plan['grid']}: {len(plan['jobs'])} jobs")
        for job in plan["jobs"]:
            bank = "" if job["bank_gb"] is None else f"{job['bank_gb']:,.2f}"
            table.add_row(escape(job["job"]) + ("" if job["exact"] else " [?]"), bank, *[hours(job["hours"][d]) for d in devices])
        console.print(table)
    kinds = {kind: sum(j["kind"] == kind for j in plan["jobs"]) for kind in ("extract", "sweep")}
    console.print(f"{kinds['extract']} extractions, {kinds['sweep']} searches of {plan['trials']} trials x {plan['epochs']} epochs "
                  f"+ {plan['seeds']} seed runs; banks {plan['totals']['bank_gb']:,.0f} GB (float16)")
    passes = " or ".join("one trial at a time" if k == 1 else f"{k} trials per pass" for k in plan["trials_per_pass"])
    for device, label in plan["devices"].items():
        total, extract = plan["totals"]["hours"][device], plan["totals"]["extract_hours"][device]
        console.print(f"  {label}: {total:,.0f} h ({total / 24:,.1f} days) for one worker: extraction {extract:,.1f} h, searches "
                      f"{plan['totals']['sweep_hours'][device]:,.0f} h ({passes}, unpruned: an upper bound)")
    rates = plan["rates"]
    console.print(f"rates: extraction measured on {'; '.join(dict.fromkeys(rates['extraction'].values()))}; training on "
                  f"{rates['training']}; GPU training {rates['gpu_training']}", soft_wrap=True)
    if plan["unknown"]:
        console.print(f"[yellow]no estimate for: {', '.join(plan['unknown'])}[/yellow] (no measured geometry, or not a benchmark dataset)")


@command()
def info(
    bank: Path = typer.Argument(..., help="bank folder"),
    verify: bool = typer.Option(False, "--verify", help="also check every chunk file's checksum and values (reads the whole bank)"),
) -> None:
    """Print a bank's shape, size on disk, metadata and problems (exit code 2 when it is incomplete or damaged)."""
    from .bank import Bank

    _print_bank_check(Bank(bank), verify)


@command()
def encoders() -> None:
    """List the registered encoders: input rate, front-end, token grid of a 10 s clip, [cls], where the weights live."""
    from .encoders import ENCODERS

    columns = ("sample_rate", "front_end", "tokens_10s", "cls", "weights")
    table = Table(title="registered encoders")
    for column in ("name", *columns):
        table.add_column(column.replace("_", " "), overflow="fold")
    for name in ENCODERS.names():
        facts = ENCODERS.facts(name)
        table.add_row(name, *(escape(facts.get(c, "-")) for c in columns))
    console.print(table)


datasets_app = typer.Typer(help="The benchmark datasets: list them, or check a local copy before extracting.",
                           invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback()
def datasets(ctx: typer.Context) -> None:
    """List the benchmark datasets: source, classes, task, metrics and protocol options (with defaults)."""
    if ctx.invoked_subcommand is not None:
        return
    from .datasets import DATASETS, SPECS

    table = Table(title="benchmark datasets")
    for column in ("key", "source", "classes", "task", "metrics", "options (default)"):
        table.add_column(column, overflow="fold")
    for key, spec in SPECS.items():
        table.add_row(key, escape(spec.hub_id + (f" ({spec.config})" if spec.config else "")), spec.classes,
                      "multi-label" if spec.multilabel else "multi-class", ", ".join(spec.metrics),
                      escape(", ".join(f"{k}={v}" for k, v in spec.options.items())))
    console.print(table)
    others = [name for name in DATASETS.names() if name not in SPECS]
    console.print(f"also: {', '.join(f'{n} ({DATASETS.description(n)})' for n in others)}")
    console.print("`patchprobe datasets check KEY --data-dir DIR` checks a local copy against the published counts.")


@command("check", app=datasets_app)
def datasets_check(
    key: str = typer.Argument(..., help="benchmark dataset key (see `patchprobe datasets`)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="the local copy (default: the Hugging Face cache)"),
    dataset_arg: Optional[list[str]] = typer.Option(None, "--dataset-arg", help="protocol option KEY=VALUE (repeatable)"),
    sample: int = typer.Option(200, min=0, help="audio headers to read (0 = every clip)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Check a benchmark dataset's copy before extracting: rows per split and classes against the published
    counts, sample rates, missing or unreadable audio. Exit code 1 when something differs."""
    from .datasets import SPECS, check_dataset

    if key not in SPECS:
        raise typer.BadParameter(f"{key!r} is not a benchmark dataset; choose one of {', '.join(SPECS)}", param_hint="KEY")
    report = check_dataset(key, data_dir=data_dir, sample=sample or None, **_parse_pairs(dataset_arg, "--dataset-arg"))
    if as_json:
        console.print_json(json.dumps({**report.model_dump(), "ok": report.ok}))
    else:
        table = Table(title=f"{key}: source rows per split")
        for column in ("split", "found", "expected", ""):
            table.add_column(column)
        for row in report.source:
            expected = "-" if row.expected is None else f"{row.expected:,}"
            table.add_row(row.split, "-" if row.found is None else f"{row.found:,}", expected, "ok" if row.matches else "[red]differs[/red]")
        console.print(table)
        expected_classes = "" if report.expected_classes is None else f" (expected {report.expected_classes})"
        console.print(f"classes: {report.classes}{expected_classes}; clips we build: "
                      + ", ".join(f"{split} {count:,}" for split, count in report.clips.items()))
        console.print(f"audio headers read: {report.checked:,}; sample rates: "
                      + (", ".join(f"{rate:,} Hz x {count:,}" for rate, count in report.sample_rates.items()) or "none"))
        for label, problems in (("missing", report.missing), ("unreadable", report.unreadable)):
            if problems:
                console.print(f"[red]{label}: {len(problems)}[/red]; first: " + "; ".join(escape(p) for p in problems[:5]))
        console.print("[green]matches the published counts[/green]" if report.ok else "[red]differs from the published counts[/red]")
    if not report.ok:
        raise typer.Exit(code=1)


@command()
def probes(
    dim: int = typer.Option(768, min=1, help="token dimension D to count parameters for"),
    classes: int = typer.Option(527, min=1, help="number of classes C"),
    global_dim: Optional[int] = typer.Option(None, min=0, help="global vector size G (default: D; 0 = none)"),
    freq_tokens: int = typer.Option(8, min=1, help="frequency tokens F of the grid (freqpool's input is F x D)"),
    prototypes_per_class: int = typer.Option(20, min=1, help="J for the prototype probes"),
) -> None:
    """List every registered probe: family, trainable parameters for D, C (and G, F, J), search range, the lr grid
    `train --lr auto` tries, the default J and epochs, arguments."""
    from .probes import PROBES, create_probe
    from .train import TrainConfig

    epochs = TrainConfig.model_fields["epochs"].default

    glob = dim if global_dim is None else global_dim
    table = Table(title=f"registered probes (D={dim}, C={classes}, G={glob}, F={freq_tokens}, J={prototypes_per_class})")
    for column in ("name", "family", "parameters", "lr range", "J", "epochs"):  # short cells stay whole; the long ones fold
        table.add_column(column, no_wrap=True)
    for column in ("lr grid (--lr auto)", "arguments (default)", "description"):
        table.add_column(column, overflow="fold")
    for name in (name for names in PROBES.families().values() for name in names):
        spec = PROBES.spec(name)
        arguments = spec.arguments()
        chosen = {"prototypes_per_class": prototypes_per_class} if "prototypes_per_class" in arguments else {}
        try:
            count = f"{create_probe(name, dim, classes, glob, freq_tokens, **chosen).num_parameters():,}"
        except ValueError as exc:  # e.g. ep's query count must divide D
            count = f"- ({exc})"
        j_default = str(arguments["prototypes_per_class"]) if "prototypes_per_class" in arguments else "-"
        table.add_row(name, spec.family, count, f"{spec.lr_range[0]:g}-{spec.lr_range[1]:g}", j_default, str(epochs),
                      ", ".join(f"{lr:g}" for lr in spec.lr_grid),
                      escape(", ".join(f"{key}={value}" for key, value in arguments.items()) or "-"), escape(spec.description))
    console.print(table)


@command()
def predict(
    run: Path = typer.Argument(..., help="run folder written by `patchprobe train`"),
    inputs: list[Path] = typer.Argument(..., help="audio files, folders (searched recursively) or CSV manifests (`path` column)"),
    out: Path = typer.Option(..., help="output file: .csv, .json or .txt (Raven selection table, as BirdNET writes)"),
    format: Optional[str] = typer.Option(None, "--format", help="csv, json or raven (default: from --out's suffix)"),
    window: Optional[float] = typer.Option(None, help="window length in seconds (default: the encoder's natural input length)"),
    hop: Optional[float] = typer.Option(None, help="hop between windows in seconds (default: the window; smaller = overlap)"),
    batch_size: int = typer.Option(16, help="windows per encoder call"),
    device: str = typer.Option("cpu", help="torch device for encoder and probe (cpu, cuda, cuda:N)"),
    timeline: Optional[Path] = typer.Option(None, help="per-class activity over time (prototype heads): .csv or .json rows file, time_s, class, activity"),
    plot: Optional[Path] = typer.Option(None, help="PNG: spectrogram and activity curves of one file (prototype heads)"),
    plot_file: Optional[str] = typer.Option(None, help="which file --plot draws (default: the first)"),
    encoder_arg: Optional[list[str]] = typer.Option(None, help="encoder argument KEY=VALUE the bank was extracted with (e.g. checkpoint=PATH)"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore the partial results beside --out (OUT.partial.jsonl) and predict everything again"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Label new recordings with a trained run: scores per window and per file, decisions, optional activity curves.

    Resumable: finished files are appended to OUT.partial.jsonl after every batch; a rerun skips them
    (same path, size and modification time) and predicts only new or changed files.
    """
    from .encoders.base import check_device
    from .predict import Predictor, collect_audio, output_format, plot_timeline, write_predictions, write_timeline

    check_device(device)
    fmt = output_format(out, format)
    for value, flag in ((window, "--window"), (hop, "--hop")):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise typer.BadParameter(f"{value} is not a number of seconds > 0", param_hint=flag)
    if timeline is not None and timeline.suffix.lower() not in (".csv", ".json"):
        raise typer.BadParameter(f"{timeline}: the activity rows are written as .csv or .json", param_hint="--timeline")
    if plot_file is not None and plot is None:
        raise typer.BadParameter("chooses the file --plot draws: pass --plot PNG too", param_hint="--plot-file")
    encoder_args = _run_encoder_options(run, _parse_pairs(encoder_arg, "--encoder-arg"))
    paths = collect_audio(inputs)
    predictor = Predictor.from_run(run, device=device, window_s=window, hop_s=hop, batch_size=batch_size, encoder_args=encoder_args)
    sidecar = out.with_name(out.name + ".partial.jsonl")
    if fresh:
        sidecar.unlink(missing_ok=True)
    wants_curves = bool(timeline or plot)
    if wants_curves and not predictor.has_timeline:
        raise ValueError(f"--timeline/--plot: activity curves come from prototype heads (proto, protobin, protofloat); "
                         f"{run} holds {predictor.probe.name!r}")
    results = predictor.predict_files(paths, timeline=wants_curves or None, progress=not quiet, resume=sidecar,
                                      log=lambda text: console.print(f"[yellow]{escape(text)}[/yellow]", soft_wrap=True))
    write_predictions(results, out, fmt)
    windows = sum(len(p.begin_s) for p in results.predictions)
    console.print(f"{len(results.predictions)} file(s) ({results.reused} reused from {sidecar.name}), {windows} window(s) of "
                  f"{predictor.window_s:g} s, hop {predictor.hop_s:g} s{predictor.window_note}; decisions: {results.decisions.source}")
    if results.failed:
        console.print(f"[yellow]{len(results.failed)} file(s) could not be read and were left out (rerun to retry)[/yellow]")
    console.print(f"wrote {out} ({fmt})")
    if timeline:
        console.print(f"wrote {write_timeline(results, timeline)}")
    if plot:
        console.print(f"wrote {plot_timeline(results, plot, source=plot_file)}")


@command()
def export(
    run: Path = typer.Argument(..., help="run folder written by `patchprobe train`"),
    format: str = typer.Option("packed", "--format", help="packed (protobin: 1 bit per prototype entry) or onnx (any probe)"),
    out: Optional[Path] = typer.Option(None, help="output file (default: inside the run folder)"),
    with_encoder: bool = typer.Option(False, "--with-encoder", help="ONNX from waveform to class scores: fbank front-end + encoder + probe (fbank ViTs: tiny-mae, EAT, SSLAM, Audio-MAE, ASiT, Bird-MAE)"),
    encoder_arg: Optional[list[str]] = typer.Option(None, help="encoder argument KEY=VALUE the bank was extracted with (e.g. checkpoint=PATH)"),
) -> None:
    """Export a trained probe (or, --with-encoder, the whole pipeline) for deployment; ONNX exports are checked
    against PyTorch with onnxruntime and carry the class names and encoder settings as metadata."""
    from .export import export_run

    encoder_args = _run_encoder_options(run, _parse_pairs(encoder_arg, "--encoder-arg"))
    result = export_run(run, format, out, with_encoder=with_encoder, encoder_args=encoder_args)
    console.print(f"wrote {result['path']} ({_bytes(result['bytes'])})")
    if "prototype_bytes" in result:
        ratio = result["float32_prototype_bytes"] / result["prototype_bytes"]
        console.print(f"prototypes: {_bytes(result['prototype_bytes'])} packed vs {_bytes(result['float32_prototype_bytes'])} as float32 ({ratio:.0f}x smaller)")
    if "checked" in result:
        console.print(f"input: {result['statement']}")
        console.print("onnxruntime vs PyTorch (encoder + probe) on clips of " + ", ".join(
            f"{seconds} s: {diff:.2e}" for seconds, diff in result["checked"].items()) + " (max |score difference|)")
    elif "max_abs_diff" in result:
        console.print(f"onnxruntime vs PyTorch on random inputs: max |logit difference| = {result['max_abs_diff']:.2e}")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _manifest_dataset(manifest: Path, multilabel: Optional[bool]):
    """`extract --manifest`: the manifest read with the task type --multilabel/--multiclass asks for."""
    from .datasets import ManifestDataset

    data = ManifestDataset(manifest, multilabel=True if multilabel else None)
    if multilabel is False and data.multilabel:
        clip, count = next((c, int(data.labels_of(c).sum())) for s in data.splits for c in data.clip_ids(s) if data.labels_of(c).sum() != 1)
        raise typer.BadParameter(f"multi-class data needs exactly one label per clip; {manifest} gives {data.path_of(clip)} "
                                 f"{count} labels: drop --multiclass (the manifest is then read as multi-label) or fix that row",
                                 param_hint="--multiclass")
    return data


def _named_dataset(name: str, data_dir: Optional[Path], options: dict, multilabel: Optional[bool]):
    """`extract --dataset NAME`: a registered dataset, its --data-dir and --dataset-arg options checked before it is read."""
    import inspect

    from pydantic import ValidationError

    from .datasets import DATASETS, create_dataset

    factory = DATASETS.get(name)
    if multilabel is not None:
        raise typer.BadParameter(f"sets the task type of a --manifest; --dataset {name} has its own: drop the flag",
                                 param_hint="--multilabel/--multiclass")
    folder = inspect.signature(factory).parameters.get("data_dir")
    if data_dir is None and folder is not None and folder.default is inspect.Parameter.empty:
        raise typer.BadParameter(f"dataset {name!r} reads a local folder: pass --data-dir DIR", param_hint="--data-dir")
    options = _checked_options(_keyword_types(factory), f"dataset {name!r}", options, "--dataset-arg", {"data_dir": "--data-dir"})
    try:
        return create_dataset(name, data_dir=data_dir, **options)
    except ValidationError as exc:  # the dataset's typed options (e.g. the synthetic generator's)
        raise typer.BadParameter(_describe_error(exc), param_hint="--dataset-arg") from None


def _check_extract_options(batch_size: int | None, chunk_clips: int, device: str) -> None:
    """`extract`: sizes and device are checked before any data is read or written."""
    from .encoders.base import check_device

    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size: batch size must be a positive number of clips; got {batch_size}")
    if chunk_clips < 1:
        raise ValueError(f"--chunk-clips: chunk size must be a positive number of clips; got {chunk_clips}")
    check_device(device)


def _print_bank_check(handle, verify: bool) -> None:
    """`info`: the description, then every problem (with --verify: checksums and values too); exit 2 if any."""
    described = handle.describe()
    _print_info(described)
    problems = handle.verify(full=True) if verify else described["problems"]
    found = [problem for listed in problems.values() for problem in listed]
    for problem in found:
        console.print(f"[bold red]problem:[/bold red] {escape(problem)}", soft_wrap=True)
    if found:
        raise typer.Exit(code=2)
    if verify:
        console.print("verified: every chunk file matches its checksum and holds finite values")


def _print_info(described: dict) -> None:
    # Piped output (rich defaults to 80 columns off a terminal) goes through a wide console so no column is cut.
    out = console if console.is_terminal else Console(width=400)
    out.print(f"[bold]{escape(described['path'])}[/bold]", soft_wrap=True)
    for key in ("encoder", "encoder_config_hash", "dataset", "multilabel", "library_version"):
        out.print(f"  {key}: {escape(str(described.get(key)))}", soft_wrap=True)
    classes = described.get("classes", [])
    out.print(f"  classes ({len(classes)}): {escape(', '.join(classes[:12]))}{' ...' if len(classes) > 12 else ''}", soft_wrap=True)
    table = Table("split", "clips", "token grid", "time steps", "global", "dtype", "layer", "sample rate", "size", "per clip",
                  "complete", "skipped", "created")
    for name, split in described["splits"].items():
        steps = split["time_steps"]
        table.add_row(
            name, f"{split['clips']}/{split['of']}", split["token_grid"], f"{steps['min']}-{steps['max']}" if steps else "-",
            str(split["global_dim"]), split["dtype"], escape(str(split["layer"] if split["layer"] is not None else "last")),
            f"{split['sample_rate']} Hz", _bytes(split["bytes"]), _bytes(split["bytes_per_clip"]),
            "yes" if split["complete"] else f"no ({split['missing']} missing)" if split["missing"] else "no", str(split["skipped"]),
            split["created"] or "-",
        )
    out.print(table)
    for name, split in described["splits"].items():
        if split["skipped"]:
            shown = "; ".join(f"{clip}: {reason}" for clip, reason in split["skipped_clips"].items())
            more = f" (and {split['skipped'] - len(split['skipped_clips'])} more)" if split["skipped"] > len(split["skipped_clips"]) else ""
            out.print(f"  {name}: {split['skipped']} clip(s) left out by --skip-bad: {escape(shown)}{more}", soft_wrap=True)
    splits = list(described["splits"])
    if splits and classes:
        # At most 40 rows: the rarest classes in the first split are what a user needs to see.
        rows = sorted(classes, key=lambda c: described["splits"][splits[0]]["positives"].get(c, 0))
        title = "positives per class" + ("" if len(rows) <= 40 else f" (the 40 rarest in {splits[0]} of {len(rows)})")
        positives = Table("class", *splits, title=title)
        for label in rows[:40]:
            positives.add_row(escape(label), *(str(described["splits"][s]["positives"].get(label, 0)) for s in splits))
        out.print(positives)


def _bytes(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


if __name__ == "__main__":  # pragma: no cover
    app()
