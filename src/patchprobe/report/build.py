"""`patchprobe report`: the paper's tables and figures from any results, as files and one HTML page.

`write_report(inputs, out)` reads the inputs (see `results.py`), then writes into `out`:
tables.md / tables.tex / tables.csv, win_matrix.csv, one PNG + SVG per figure, report.json (every
number the page shows) and index.html (everything embedded; opens offline).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from .._io import write_json
from ..errors import RunError
from ..probes import PROBES
from ..train import METRICS, Run
from . import paper_figures, stats
from .html import PageFigure, Section, frame_to_html, render_page
from .results import ResultsInput, read_results
from .tables import paper_table


class ReportConfig(BaseModel):
    """Settings of a report."""

    model_config = ConfigDict(extra="forbid")

    split: str = "test"
    metric: str | None = None  # default: each dataset's own (map, else accuracy)
    pairs: list[tuple[str, str]] = Field(default_factory=lambda: [("linear", "protobin")])  # re-ranking and paired tests
    resamples: int = Field(default=1000, ge=10)  # bootstrap resamples over test clips
    seed: int = 0  # bootstrap generator seed
    alpha: float = Field(default=0.05, gt=0, lt=1)
    title: str = "patchprobe report"


def write_report(inputs: list[str | Path] | ResultsInput, out: str | Path, config: ReportConfig | None = None) -> dict:
    """Write the report of `inputs` into `out`; returns what report.json holds (paths relative to `out`)."""
    config = config or ReportConfig()
    results = inputs if isinstance(inputs, ResultsInput) else read_results(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_report(out)
    table = results.table
    split_rows = table[table["split"] == config.split]
    if split_rows.empty:
        raise ValueError(f"no {config.split!r} scores in the inputs (splits found: {sorted(set(table['split']))})")
    metrics = {d: config.metric for d in split_rows["dataset"].unique()} if config.metric else stats.primary_metrics(split_rows)
    judged = split_rows[split_rows["metric"] == split_rows["dataset"].map(metrics)]
    if judged.empty:
        raise ValueError(f"no {config.split} scores of metric {config.metric!r} (found {sorted(set(split_rows['metric']))})")
    cells = stats.cell_summary(judged, config.split)
    encoders, datasets, probes = (list(dict.fromkeys(judged[c])) for c in ("encoder", "dataset", "probe"))
    matrix = stats.score_matrix(cells).reindex(columns=probes)
    report: dict = {"inputs": results.sources, "notes": list(results.notes), "split": config.split, "metrics": metrics,
                    "encoders": encoders, "datasets": datasets, "probes": probes, "cells": int(len(matrix)),
                    "runs": int(len(judged.drop_duplicates(["encoder", "dataset", "draw", "probe", "seed"]))), "figures": {}}
    seeds = judged.groupby(["encoder", "dataset", "draw", "probe"], dropna=False)["seed"].nunique()
    report["seeds_per_cell"] = {"min": int(seeds.min()), "max": int(seeds.max())}
    seed_count = (f"{seeds.min()} seed{'s' if seeds.min() > 1 else ''}" if seeds.min() == seeds.max()
                  else f"{seeds.min()}-{seeds.max()} seeds")
    page_sections: list[Section] = []

    # 1. tables
    section = Section("Tables: test scores per encoder")
    tables = [paper_table(e, cells, judged, probes, [d for d in datasets if d in set(cells[cells["encoder"] == e]["dataset"])], metrics)
              for e in encoders]
    (out / "tables.md").write_text("\n\n".join(t.to_markdown() for t in tables) + "\n")
    (out / "tables.tex").write_text("\n\n".join(t.to_latex() for t in tables) + "\n")
    ranked = cells.assign(rank=cells.groupby(["encoder", "dataset"])["mean"].rank(ascending=False, method="average"))
    ranked.to_csv(out / "tables.csv", index=False)
    section.add_text(f"Each cell: mean ± sd over seeds (over k-shot draws of each draw's seed mean where a dataset has "
                     f"draws; n says which). Files: tables.md, tables.tex, tables.csv.")
    for paper in tables:
        section.add_html(paper.to_html())
    page_sections.append(section)
    rests = f"{len(matrix)} (encoder, dataset) cells, {seed_count} per cell"

    # 2. win matrix
    section = Section("Win matrix")
    if len(probes) >= 2:
        wins, shared, fraction = stats.win_matrix(cells, probes)
        fraction.to_csv(out / "win_matrix.csv")
        report["win_matrix"] = {"wins": wins.to_dict(), "shared": shared.to_dict()}
        section.add_figure(_figure(paper_figures.win_heatmap(fraction, wins, shared), out, "win_matrix", "Pairwise wins",
                                   "each square is the share of cells (encoder, dataset) on which the row's probe beats the column's "
                                   "by at least the column's sd over seeds; 'w/n' counts wins and cells both probes have. "
                                   "Near-ties count for neither, so a row and its mirror need not add up to 1.", rests, report))
    else:
        section.add_text("A win matrix needs at least two probes; the inputs hold one.", "warn")
    page_sections.append(section)

    # 3. backbone re-ranking
    section = Section("Backbone re-ranking")
    report["rerank"] = {}
    for a, b in config.pairs:
        if a not in probes or b not in probes:
            section.add_text(f"{a} vs {b}: not drawn, the inputs hold no {a if a not in probes else b} runs.", "warn")
            continue
        result = stats.rerank(matrix, a, b)
        report["rerank"][f"{a} vs {b}"] = result
        if len(result["encoders"]) < 2:
            section.add_text(f"{a} vs {b}: re-ranking needs at least two encoders with both probes; the inputs hold "
                             f"{len(result['encoders'])}.", "warn")
            continue
        section.add_figure(_figure(paper_figures.slope_chart(result, a, b), out, f"rerank_{a}_vs_{b}", f"Encoders ranked under {a} and {b}",
                                   f"each line is an encoder, its rank (1 = best, mean score over the shared datasets) under {a} on the "
                                   f"left and {b} on the right; crossing lines mean the probe changes which backbone looks best. "
                                   "Kendall's tau is 1 for the same order, -1 for the reverse.",
                                   f"{len(result['encoders'])} encoders x {len(result['datasets'])} datasets where both probes have every "
                                   f"encoder; {seed_count} per cell", report))
    page_sections.append(section)

    # 4. parameter efficiency
    section = Section("Parameter efficiency")
    points = _efficiency_points(judged, matrix)
    if len(points):
        section.add_figure(_figure(paper_figures.efficiency_plot(points), out, "parameter_efficiency", "Score vs trainable parameters",
                                   "each marker is a probe (shape and colour: its family), placed at its trainable parameters (log "
                                   "scale, median over datasets) and its mean test score over the encoder's datasets; up and left "
                                   "is better.", f"{len(points)} probe points; only probes with a score on every dataset of the encoder",
                                   report))
    page_sections.append(section)

    # 5. statistics
    page_sections.append(_statistics_section(matrix, config, out, report, seed_count))
    page_sections.append(_bootstrap_section(judged, metrics, config, out, report))

    write_json(out / "report.json", report)
    intro = [f"<p>{len(encoders)} encoder(s), {len(datasets)} dataset(s), {len(probes)} probe(s): {report['cells']} cells, "
             f"{report['runs']} runs, {seed_count} per cell; "
             f"{config.split} split, metric per dataset: " + ", ".join(f"{d} {m}" for d, m in metrics.items()) + ".</p>",
             "<ul class='sources'>" + "".join(f"<li>{_esc(s)}</li>" for s in results.sources) + "</ul>"]
    intro += [f"<p class='note'>{_esc(n)}</p>" for n in report["notes"]]
    intro.append(f"<p class='note'>Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; every number is also in report.json.</p>")
    (out / "index.html").write_text(render_page(config.title, intro, page_sections), encoding="utf-8")
    return report


# What a report writes; a rerun into the same folder removes them first, so no file of an earlier report (a
# figure this input cannot draw, a test this input cannot run) is left beside the new page.
REPORT_FILES = ("index.html", "report.json", "tables.md", "tables.tex", "tables.csv", "win_matrix.csv", "wilcoxon_holm.csv",
                "bootstrap_ci.csv", "paired_bootstrap.csv", "win_matrix.*", "rerank_*_vs_*.*", "parameter_efficiency.*",
                "critical_difference.*")


def _remove_previous_report(out: Path) -> None:
    for pattern in REPORT_FILES:
        for path in out.glob(pattern):
            if path.is_file() and path.suffix in (".html", ".json", ".md", ".tex", ".csv", ".png", ".svg"):
                path.unlink()


def _esc(text: str) -> str:
    from html import escape

    return escape(text)


def _figure(figure, out: Path, stem: str, title: str, how_to_read: str, rests_on: str, report: dict) -> PageFigure:
    paths = paper_figures.save_all(figure, out / stem)
    report["figures"][stem] = {"files": [p.name for p in paths.values()], "rests_on": rests_on}
    return PageFigure(title, paths["png"].read_bytes(), how_to_read, rests_on, [p.name for p in paths.values()])


def _family(probe_name: str) -> str:
    return PROBES.spec(probe_name).family if probe_name in PROBES else "other"


def _efficiency_points(judged: pd.DataFrame, matrix: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for encoder, scores in matrix.groupby(level="encoder", sort=False):
        for probe in scores.columns:
            if scores[probe].notna().all():
                mine = judged[(judged["encoder"] == encoder) & (judged["probe"] == probe)]
                parameters = float(mine["num_parameters"].median())
                if np.isfinite(parameters) and parameters > 0:
                    rows.append({"encoder": encoder, "probe": probe, "family": _family(str(mine["probe_name"].iloc[0])),
                                 "parameters": parameters, "score": float(scores[probe].mean())})
    return pd.DataFrame(rows, columns=["encoder", "probe", "family", "parameters", "score"])


def _statistics_section(matrix: pd.DataFrame, config: ReportConfig, out: Path, report: dict, seed_count: str) -> Section:
    section = Section("Across cells: Friedman test and critical differences")
    result = stats.friedman_nemenyi(matrix, config.alpha)
    report["friedman"] = result
    if result["statistic"] is None:
        section.add_text(f"The Friedman test needs at least 3 probes and 2 complete cells (every probe scored); the inputs have "
                         f"{result['probes']} probes and {result['cells']} complete cells ({result['cells_dropped']} with a missing "
                         "probe left out).", "warn")
        return section
    rests = (f"{result['cells']} complete cells x {result['probes']} probes ({result['cells_dropped']} cells with a missing probe left "
             f"out); each cell's score is a mean over {seed_count}")
    section.add_text(f"Friedman chi-square = {result['statistic']:.2f}, p = {result['p_value']:.3g} over {result['cells']} cells; "
                     f"Nemenyi critical difference at alpha {config.alpha}: {result['critical_difference']:.2f} ranks.")
    section.add_figure(_figure(paper_figures.cd_diagram(result["mean_ranks"], result["critical_difference"], result["cells"],
                                                        result["p_value"]), out, "critical_difference", "Critical-difference diagram",
                               "probes sit at their mean rank over cells (1 = best, left); probes joined by a thick bar are within "
                               "the Nemenyi critical difference (CD, the bar at the top) of each other, i.e. not significantly "
                               "different. With few cells the CD is wide: most probes are joined.", rests, report))
    pairs = stats.wilcoxon_holm(matrix, config.alpha)
    pairs.to_csv(out / "wilcoxon_holm.csv", index=False)
    report["wilcoxon_holm"] = pairs.to_dict(orient="records")
    section.add_html(frame_to_html(pairs, ".3g", f"Pairwise Wilcoxon signed-rank tests over the {result['cells']} complete cells, "
                                                 f"Holm-corrected (wilcoxon_holm.csv)"))
    return section


NO_RUN_PATHS = "the input does not say where its runs are"
GENERAL_REASONS = (NO_RUN_PATHS,)


def _clip_scores(run_folder: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(clip_ids, labels (N, C), scores (N, C) float32) of a run, or why there are none."""
    if not run_folder:
        return NO_RUN_PATHS
    try:
        clip_ids, labels, scores = Run(run_folder).scores(split)
    except RunError as exc:  # an absent or unreadable score file is reported, never faked
        return str(exc)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float32)
    if labels.ndim == 1:  # class indices -> one-hot
        labels = np.eye(scores.shape[1], dtype=bool)[labels.astype(int)]
    return np.asarray(clip_ids), labels > 0.5, scores


def _metric_function(name: str):
    def metric(labels: np.ndarray, scores: np.ndarray) -> float:
        return float(METRICS[name](labels, scores.astype(np.float64))[name])
    return metric


def _bootstrap_section(judged: pd.DataFrame, metrics: dict, config: ReportConfig, out: Path, report: dict) -> Section:
    section = Section("Over test clips: bootstrap confidence intervals and paired tests")
    units = judged.drop_duplicates(["encoder", "dataset", "draw", "probe", "seed"])
    # NaN never equals itself, so a dataset without draws gets draw -1 as a dictionary key
    units = units.assign(draw=pd.to_numeric(units["draw"], errors="coerce").fillna(-1).astype(int))
    loaded: dict[tuple, list] = {}
    reasons: dict[str, int] = {}
    for key, group in units.groupby(["encoder", "dataset", "draw", "probe"], sort=False):
        runs = []
        for folder in group["run"].fillna("").astype(str):
            got = _clip_scores(folder, config.split)
            if isinstance(got, str):
                reason = (got if got in GENERAL_REASONS or ": missing" not in got
                          else "runs without a per-clip score file (written before patchprobe saved scores.npz)")
                reasons[reason] = reasons.get(reason, 0) + 1
                runs = []
                break
            runs.append(got)
        if runs and all(np.array_equal(r[0], runs[0][0]) for r in runs):
            loaded[key] = runs
    report["bootstrap"] = {"cells_with_scores": len(loaded), "cells": int(units.groupby(["encoder", "dataset", "draw", "probe"]).ngroups),
                           "missing": reasons, "resamples": config.resamples, "seed": config.seed}
    if reasons:
        section.add_text("No bootstrap for " + "; ".join(f"{count} run(s): {reason}" for reason, count in reasons.items())
                         + ". Intervals over test clips need each run's per-clip test scores; none are invented.", "warn")
    if not loaded:
        return section
    rows = []
    for (encoder, dataset, draw, probe), runs in loaded.items():
        ci = stats.bootstrap_ci(runs[0][1], [r[2] for r in runs], _metric_function(metrics[dataset]), config.resamples, config.seed)
        rows.append({"encoder": encoder, "dataset": dataset if draw < 0 else f"{dataset} draw {draw}", "probe": probe,
                     "metric": metrics[dataset], "estimate": ci["estimate"], "ci_low": ci["low"], "ci_high": ci["high"],
                     "seeds": ci["seeds"], "clips": ci["clips"]})
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "bootstrap_ci.csv", index=False)
    report["bootstrap"]["intervals"] = rows
    section.add_html(frame_to_html(frame, ".3f", f"95 % percentile bootstrap intervals over test clips ({config.resamples} resamples, "
                                                 f"seed {config.seed}) of the seed-mean score; bootstrap_ci.csv"))
    paired = []
    for a, b in config.pairs:
        for (encoder, dataset, draw, probe), runs_a in loaded.items():
            runs_b = loaded.get((encoder, dataset, draw, b))
            if probe != a or runs_b is None or not np.array_equal(runs_a[0][0], runs_b[0][0]):
                continue
            test = stats.paired_bootstrap(runs_a[0][1], [r[2] for r in runs_a], [r[2] for r in runs_b],
                                          _metric_function(metrics[dataset]), config.resamples, config.seed)
            paired.append({"encoder": encoder, "dataset": dataset if draw < 0 else f"{dataset} draw {draw}",
                           "a": a, "b": b, "difference": test["difference"], "ci_low": test["low"], "ci_high": test["high"],
                           "p_value": test["p_value"], "clips": test["clips"]})
    report["paired_bootstrap"] = paired
    if paired:
        pd.DataFrame(paired).to_csv(out / "paired_bootstrap.csv", index=False)
        section.add_html(frame_to_html(pd.DataFrame(paired), ".3g", "Paired bootstrap of A - B on the same test clips (two-sided p); "
                                                                    "paired_bootstrap.csv"))
    return section
