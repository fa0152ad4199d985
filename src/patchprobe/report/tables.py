"""Result tables: collect run folders into a tidy DataFrame, render Markdown, and the paper's per-encoder tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..train import Run


def collect_runs(root: str | Path) -> pd.DataFrame:
    """One row per (run folder, evaluated split, metric) under `root` (folders holding metrics.json).

    Columns: run, encoder, dataset, probe, multilabel, solver, lr (None for L-BFGS), lr_setting ("auto" or
    the rate given), weight_decay, epochs, batch_size, loss, seed, split, metric, value,
    num_parameters, train_seconds, and one column per probe argument (e.g. prototypes_per_class;
    missing where a run does not set it).
    """
    rows = []
    for run in Run.find(root):
        config, metrics = run.config, run.metrics
        probe_args = {key: value for key, value in config.probe_args.items() if not isinstance(value, (dict, list))}
        for split in ("valid", "test"):
            for metric, value in metrics.split(split).items():
                rows.append(
                    {
                        "run": str(run.root.relative_to(root)),
                        "encoder": run.bank.encoder,
                        "dataset": run.bank.dataset,
                        "probe": config.probe,
                        "multilabel": run.bank.multilabel,
                        "solver": config.solver,
                        # the rate trained (None for L-BFGS, which has none) and how it was set ("auto" or the rate)
                        "lr": None if config.solver == "lbfgs" else config.lr,
                        "lr_setting": "-" if config.solver == "lbfgs" else "auto" if run.lr_selection is not None else f"{config.lr:g}",
                        "weight_decay": config.weight_decay,
                        "epochs": config.epochs,
                        "batch_size": config.batch_size,
                        "loss": config.loss,
                        "seed": config.seed,
                        "split": split,
                        "metric": metric,
                        "value": value,
                        "num_parameters": metrics.num_parameters,
                        "train_seconds": metrics.train_seconds,
                        **probe_args,
                    }
                )
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency on `tabulate`)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- the paper's tables: per encoder, datasets x probes -------------------------------------------

MISSING = "—"  # a cell with no finished run: shown as missing, never as 0


@dataclass
class Cell:
    """One table cell: its text and its mark ("best", "second" or None)."""

    text: str
    mark: str | None = None


@dataclass
class PaperTable:
    """A rendered-format-free table: a title, column names, labelled rows of cells, footnotes."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """GitHub Markdown: best **bold**, second <u>underlined</u>."""
        wrap = {"best": "**{}**", "second": "<u>{}</u>", None: "{}"}
        lines = [f"**{self.title}**", "", "| | " + " | ".join(self.columns) + " |", "|---|" + "---|" * len(self.columns)]
        lines += ["| " + label + " | " + " | ".join(wrap[c.mark].format(c.text) for c in cells) + " |" for label, cells in self.rows]
        return "\n".join(lines + [""] + [f"{note}  " for note in self.notes])

    def to_latex(self) -> str:
        """A booktabs tabular: best \\textbf, second \\underline (needs \\usepackage{booktabs})."""
        wrap = {"best": "\\textbf{{{}}}", "second": "\\underline{{{}}}", None: "{}"}
        def tex(text: str) -> str:
            return (text.replace("\\", "\\textbackslash{}").replace("&", "\\&").replace("%", "\\%").replace("_", "\\_")
                    .replace("#", "\\#").replace("±", "$\\pm$").replace(MISSING, "--"))
        lines = [f"% {tex(self.title)}", "\\begin{tabular}{l" + "c" * len(self.columns) + "}", "\\toprule",
                 " & " + " & ".join(tex(c) for c in self.columns) + " \\\\", "\\midrule"]
        lines += [tex(label) + " & " + " & ".join(wrap[c.mark].format(tex(c.text)) for c in cells) + " \\\\" for label, cells in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"] + [f"% {tex(note)}" for note in self.notes]
        return "\n".join(lines)

    def to_html(self) -> str:
        """An HTML table: best <b>, second <u>; missing cells get class "missing"."""
        from html import escape

        def td(cell: Cell) -> str:
            text = escape(cell.text)
            text = {"best": f"<b>{text}</b>", "second": f"<u>{text}</u>"}.get(cell.mark, text)
            return f'<td class="missing">{text}</td>' if cell.text == MISSING else f"<td>{text}</td>"
        head = "<tr><th></th>" + "".join(f"<th>{escape(c)}</th>" for c in self.columns) + "</tr>"
        body = "".join(f"<tr><th>{escape(label)}</th>" + "".join(td(c) for c in cells) + "</tr>" for label, cells in self.rows)
        notes = "".join(f"<p class='note'>{escape(n)}</p>" for n in self.notes)
        return f"<table><caption>{escape(self.title)}</caption><thead>{head}</thead><tbody>{body}</tbody></table>{notes}"


def _marks(values: dict[str, float], higher_is_better: bool = True) -> dict[str, str]:
    """probe -> "best" / "second" among finite values, by competition rank: ties share a mark, and after
    two tied best values no value is second."""
    finite = [v for v in values.values() if np.isfinite(v)]
    marks = {}
    for probe, value in values.items():
        if np.isfinite(value):
            better = sum((other > value) if higher_is_better else (other < value) for other in finite)
            if better < 2:
                marks[probe] = "best" if better == 0 else "second"
    return marks


def human_count(count: float) -> str:
    """1234 -> "1.2k", 446986 -> "447k", 2.5e6 -> "2.5M"."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= size:
            value = count / size
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{count:.0f}"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def paper_table(encoder: str, cells: pd.DataFrame, table: pd.DataFrame, probes: list[str], datasets: list[str],
                metrics: dict[str, str]) -> PaperTable:
    """The paper's table for one encoder: a row per dataset (mean ± sd), then mean over datasets, mean rank,
    trainable parameters and search time per probe; best bold and second underlined in every score row.

    Args:
        cells: `stats.cell_summary` rows (already one metric per dataset); table: the tidy results (for
            parameters and search time); metrics: dataset -> its metric.
    """
    mine = cells[cells["encoder"] == encoder]
    means = mine.pivot_table(index="dataset", columns="probe", values="mean", aggfunc="first").reindex(index=datasets, columns=probes)
    sds = mine.pivot_table(index="dataset", columns="probe", values="sd", aggfunc="first").reindex(index=datasets, columns=probes)
    units = mine.set_index(["dataset", "probe"])[["n", "over"]]
    rows, notes = [], []
    for dataset in datasets:
        values = means.loc[dataset].to_dict()
        marks = _marks(values)
        row = []
        for probe in probes:
            mean = values[probe]
            row.append(Cell(MISSING) if not np.isfinite(mean) else Cell(f"{mean:.3f} ± {sds.loc[dataset, probe]:.3f}", marks.get(probe)))
        present = units.loc[dataset] if dataset in units.index.get_level_values(0) else None
        unit = "" if present is None else f", n = {int(present['n'].min())}{'' if present['n'].nunique() == 1 else '-' + str(int(present['n'].max()))} {present['over'].iloc[0]}"
        rows.append((f"{dataset} ({metrics.get(dataset, '?')}{unit})", row))
    complete = means.notna().all(axis=0)
    ranked = means.rank(axis=1, ascending=False, method="average")
    summaries = {"mean over datasets": (means.mean(axis=0), True), "mean rank": (ranked.mean(axis=0), False)}
    for label, (values, higher) in summaries.items():
        marks = _marks({p: (v if complete[p] else np.nan) for p, v in values.items()}, higher)
        row = []
        for probe in probes:
            value = values[probe]
            text = MISSING if not np.isfinite(value) else (f"{value:.3f}" if higher else f"{value:.2f}")
            row.append(Cell(text if complete[probe] or text == MISSING else f"({text})", marks.get(probe)))
        rows.append((label, row))
    if not complete.all():
        notes.append("(…) over fewer datasets than the others: not comparable, never marked best.")
    mine_runs = table[(table["encoder"] == encoder) & table["dataset"].isin(datasets)]
    parameters = mine_runs.groupby("probe")["num_parameters"].agg(["min", "max"])
    row = []
    for probe in probes:
        if probe not in parameters.index or not np.isfinite(parameters.loc[probe, "min"]):
            row.append(Cell(MISSING))
        else:
            low, high = parameters.loc[probe]
            row.append(Cell(human_count(low) if low == high else f"{human_count(low)}-{human_count(high)}"))
    rows.append(("trainable parameters", row))
    search = mine_runs.drop_duplicates(["dataset", "draw", "probe"]).groupby("probe")["search_seconds"].mean()
    rows.append(("search time (mean per dataset)",
                 [Cell(human_seconds(search[p])) if p in search.index and np.isfinite(search[p]) else Cell(MISSING) for p in probes]))
    notes.append(f"{MISSING} = no finished run for this cell (missing, not 0). Ranks: 1 = best, within each dataset among the probes it has.")
    return PaperTable(title=f"{encoder}: test scores, mean ± sd", columns=probes, rows=rows, notes=notes)
