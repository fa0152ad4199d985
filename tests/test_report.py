"""`patchprobe report`: statistics against hand-computed values, the tables, the inputs it reads, and the page in a
real browser (headless Chromium: no request, no console error, every image decoded, every table filled)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from patchprobe.cli import app
from patchprobe.report import ReportConfig, ResultsInput, read_results, write_report
from patchprobe.report import stats
from patchprobe.report.results import COLUMNS
from patchprobe.report.tables import MISSING, paper_table

# Scores are dyadic fractions, so every mean and tie below is exact in floating point.
# dataset -> probe -> test values of seeds 0 and 1; C has no run on d3 (a missing cell).
SCORES = {
    "d1": {"A": [0.5, 0.5625], "B": [0.75, 0.75], "C": [0.625, 0.6875]},
    "d2": {"A": [0.75, 0.75], "B": [0.625, 0.875], "C": [0.25, 0.375]},
    "d3": {"A": [0.25, 0.375], "B": [0.875, 0.875]},
}
PARAMETERS = {"A": 100, "B": 20000, "C": 3000}


def synthetic_table(scores=SCORES, encoder="enc") -> pd.DataFrame:
    rows = []
    for dataset, probes in scores.items():
        for probe, values in probes.items():
            for seed, value in enumerate(values):
                for split, shift in (("valid", 0.01), ("test", 0.0)):
                    rows.append({"encoder": encoder, "dataset": dataset, "draw": np.nan, "probe": probe, "probe_name": probe,
                                 "seed": seed, "split": split, "metric": "map", "value": value + shift,
                                 "num_parameters": PARAMETERS.get(probe, 1000), "train_seconds": 1.0, "search_seconds": 90.0, "run": ""})
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture
def cells():
    return stats.cell_summary(synthetic_table())


def test_cell_summary_is_mean_and_sd_over_seeds(cells):
    row = cells.set_index(["dataset", "probe"]).loc[("d1", "A")]
    assert row["mean"] == 0.53125 and row["sd"] == pytest.approx(0.0625 / np.sqrt(2)) and row["n"] == 2 and row["over"] == "seeds"
    assert ("d3", "C") not in cells.set_index(["dataset", "probe"]).index  # missing stays missing, never 0


def test_cell_summary_with_draws_matches_the_bench_summary():
    from patchprobe.bench import summarize_results

    table = synthetic_table()
    draws = pd.concat([table.assign(draw=1.0), table.assign(draw=2.0, value=table["value"] + 0.125)], ignore_index=True)
    ours = stats.cell_summary(draws).set_index(["dataset", "probe"])
    bench = summarize_results(draws.drop(columns=["probe_name", "run"]))
    bench = bench[bench["split"] == "test"].set_index(["dataset", "probe"])
    assert ours.loc[("d1", "A"), "over"] == "draws" and ours.loc[("d1", "A"), "n"] == 2
    # mean over draws of each draw's seed mean: (0.53125 + 0.65625) / 2; sd over the two draw means
    assert ours.loc[("d1", "A"), "mean"] == 0.59375 and ours.loc[("d1", "A"), "sd"] == pytest.approx(0.125 / np.sqrt(2))
    for key in ours.index:
        assert ours.loc[key, "mean"] == pytest.approx(bench.loc[key, "mean"]) and ours.loc[key, "sd"] == pytest.approx(bench.loc[key, "sd"])


def test_win_matrix_by_hand(cells):
    wins, shared, fraction = stats.win_matrix(cells, ["A", "B", "C"])
    # d1: B > A, B > C, C > A;  d2: A and B tie (equal means), A > C, B > C;  d3: B > A (C missing)
    assert wins.loc["B", "A"] == 2 and wins.loc["A", "B"] == 0 and shared.loc["A", "B"] == 3
    assert wins.loc["B", "C"] == 2 and wins.loc["C", "B"] == 0 and shared.loc["B", "C"] == 2
    assert wins.loc["A", "C"] == 1 and wins.loc["C", "A"] == 1 and shared.loc["A", "C"] == 2
    assert fraction.loc["B", "A"] == pytest.approx(2 / 3) and np.isnan(fraction.loc["A", "A"])


def test_win_rule_needs_the_losers_sd():
    assert stats.beats(0.70, 0.60, 0.10) and not stats.beats(0.69, 0.60, 0.10) and not stats.beats(0.5, 0.5, 0.0)


def test_ranks_and_friedman_against_scipy(cells):
    matrix = stats.score_matrix(cells)[["A", "B", "C"]]
    ranked = stats.ranks(matrix)
    assert ranked.loc[("enc", "d1")].tolist() == [3.0, 1.0, 2.0]
    assert ranked.loc[("enc", "d2")].tolist() == [1.5, 1.5, 3.0]  # the tie shares its mean rank
    assert ranked.loc[("enc", "d3"), "A"] == 2.0 and np.isnan(ranked.loc[("enc", "d3"), "C"])
    result = stats.friedman_nemenyi(matrix)
    assert result["cells"] == 2 and result["cells_dropped"] == 1  # d3 lacks C
    expected = scipy_stats.friedmanchisquare([0.53125, 0.75], [0.75, 0.75], [0.65625, 0.3125])
    assert result["statistic"] == pytest.approx(expected.statistic) and result["p_value"] == pytest.approx(expected.pvalue)
    assert result["mean_ranks"] == {"B": 1.25, "A": 2.25, "C": 2.5}
    # Demšar (2006), Table 5(a): q_0.05 = 2.343 for k = 3; CD = q sqrt(k (k + 1) / (6 N))
    assert result["critical_difference"] == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 2)), abs=2e-3)


def test_holm_by_hand():
    assert stats.holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])


def test_rerank_and_kendall_tau():
    scores = {"d1": {"linear": [0.25, 0.25], "protobin": [0.75, 0.75]}}
    table = pd.concat([synthetic_table(scores, "e1"),
                       synthetic_table({"d1": {"linear": [0.5, 0.5], "protobin": [0.5, 0.5]}}, "e2"),
                       synthetic_table({"d1": {"linear": [0.75, 0.75], "protobin": [0.25, 0.25]}}, "e3")])
    result = stats.rerank(stats.score_matrix(stats.cell_summary(table)), "linear", "protobin")
    assert result["ranks"]["linear"] == {"e1": 3.0, "e2": 2.0, "e3": 1.0} and result["tau"] == pytest.approx(-1.0)


def accuracy(labels, scores):
    return float((labels.argmax(axis=1) == scores.argmax(axis=1)).mean())


def test_bootstrap_with_a_fixed_seed_by_hand():
    labels = np.eye(2)[[0, 1, 0, 1, 1]]
    scores = np.eye(2)[[0, 1, 1, 1, 0]]  # clips 0, 1, 3 right: accuracy 0.6
    result = stats.bootstrap_ci(labels, [scores], accuracy, resamples=200, seed=7)
    index = np.random.default_rng(7).integers(0, 5, size=(200, 5))
    by_hand = [np.mean(np.isin(row, [0, 1, 3])) for row in index]
    assert result["estimate"] == 0.6 and result["clips"] == 5
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(by_hand, [2.5, 97.5])))
    again = stats.bootstrap_ci(labels, [scores], accuracy, resamples=200, seed=7)
    assert again == result  # the seed fixes the draws


def test_paired_bootstrap():
    labels = np.eye(2)[np.arange(40) % 2]
    right, wrong = labels.copy(), 1 - labels
    half = np.where((np.arange(40) < 20)[:, None], right, wrong)
    same = stats.paired_bootstrap(labels, [right], [right], accuracy, resamples=200, seed=0)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    better = stats.paired_bootstrap(labels, [right], [half], accuracy, resamples=200, seed=0)
    assert better["difference"] == 0.5 and better["low"] > 0 and better["p_value"] == 0.0


def test_paper_table_marks_best_and_second_and_shows_missing(cells):
    table = synthetic_table()
    paper = paper_table("enc", cells, table[table["split"] == "test"], ["A", "B", "C"], ["d1", "d2", "d3"], {d: "map" for d in SCORES})
    rows = dict(paper.rows)
    assert [c.mark for c in rows["d1 (map, n = 2 seeds)"]] == [None, "best", "second"]
    assert [c.mark for c in rows["d2 (map, n = 2 seeds)"]] == ["best", "best", None]  # a tie shares the mark
    assert rows["d3 (map, n = 2 seeds)"][2].text == MISSING
    assert rows["mean over datasets"][2].text.startswith("(") and rows["mean over datasets"][2].mark is None
    assert rows["mean rank"][1].text == "1.17" and rows["mean rank"][1].mark == "best"
    assert [c.text for c in rows["trainable parameters"]] == ["100", "20k", "3.0k"]
    assert "**0.750 ± 0.000**" in paper.to_markdown() and "<u>0.656 ± 0.044</u>" in paper.to_markdown()
    latex = paper.to_latex()
    assert "\\textbf{0.750 $\\pm$ 0.000}" in latex and "\\underline{0.656 $\\pm$ 0.044}" in latex and " -- " in latex


def test_report_writes_every_file_and_says_what_it_rests_on(tmp_path):
    report = write_report(ResultsInput(synthetic_table(), ["synthetic"]), tmp_path / "out", ReportConfig(pairs=[("A", "B")]))
    out = tmp_path / "out"
    for name in ("index.html", "tables.md", "tables.tex", "tables.csv", "win_matrix.csv", "report.json", "wilcoxon_holm.csv",
                 "win_matrix.png", "win_matrix.svg", "critical_difference.png", "critical_difference.svg",
                 "parameter_efficiency.png", "parameter_efficiency.svg"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text()
    assert page.count("How to read this:") == len(report["figures"]) == page.count("data:image/png;base64,")
    assert "2 complete cells x 3 probes (1 cells with a missing probe left out)" in page
    assert "the input does not say where its runs are" in page  # no per-clip scores: said, not faked
    assert "re-ranking needs at least two encoders" in page
    assert json.loads((out / "report.json").read_text())["friedman"]["cells"] == 2


def test_report_of_run_folders_bootstraps_their_per_clip_scores(tiny_bank, tmp_path):
    from patchprobe.bank import LoadedBank
    from patchprobe.train import TrainConfig, fit

    bank = LoadedBank.load(tiny_bank)
    configs = [TrainConfig(probe=p, epochs=1, batch_size=4, lr=1e-2, seed=s) for p in ("linear", "protobin") for s in (0, 1)]
    fit(bank, configs, [tmp_path / "runs" / c.probe / f"seed={c.seed}" for c in configs], progress=False)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["runs"] == 4 and report["probes"] == ["linear", "protobin"]
    assert report["bootstrap"]["cells_with_scores"] == 2 and len(report["paired_bootstrap"]) == 1
    assert report["bootstrap"]["missing"] == {}
    intervals = pd.read_csv(out / "bootstrap_ci.csv")
    assert (intervals["ci_low"] <= intervals["estimate"]).all() and (intervals["estimate"] <= intervals["ci_high"]).all()
    # a run written before scores were saved: said on the page, not faked
    (tmp_path / "runs" / "linear" / "seed=0" / "scores.npz").unlink()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(out), "--resamples", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["bootstrap"]["cells_with_scores"] == 1 and report["paired_bootstrap"] == []
    assert "written before patchprobe saved scores.npz" in (out / "index.html").read_text()


def test_bad_inputs_are_one_line_errors(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such file or folder" in " ".join(missing.output.split())
    (tmp_path / "cells.csv").write_text("encoder,dataset,probe,split,metric,mean,sd,n,seeds\n")
    summary = runner.invoke(app, ["report", str(tmp_path / "cells.csv"), "--out", str(tmp_path / "o")])
    assert summary.exit_code == 2 and "pass results.parquet" in " ".join(summary.output.split())


def test_results_table_round_trip(tmp_path):
    table = synthetic_table()
    table.drop(columns=["probe_name", "run"]).to_parquet(tmp_path / "results.parquet", index=False)
    table.drop(columns=["probe_name"]).to_csv(tmp_path / "results.csv", index=False)  # the run column empty
    for name in ("results.parquet", "results.csv"):
        read = read_results([tmp_path / name])
        assert len(read.table) == len(table) and "does not say where its runs are" in read.notes[0]
        assert (read.table["run"] == "").all() and read.table["value"].tolist() == table["value"].tolist()


# --- the page in a real browser ---------------------------------------------------------------------

PROBE_SCRIPT = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const originalError = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); originalError(...a); };
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({src: i.src.slice(0, 22), width: i.naturalWidth}));
  const tables = [...document.querySelectorAll('table')].map(t => t.tBodies[0] ? t.tBodies[0].rows.length : 0);
  const requests = performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('data:'));
  const out = document.createElement('pre'); out.id = 'check';
  out.textContent = JSON.stringify({images, tables, requests, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium"], capture_output=True, timeout=600)
        found = shutil.which("chromium")
    if not found:
        pytest.skip("headless Chromium is not installed and `apt-get install -y chromium` could not install it")
    return found


def test_page_in_headless_chromium(tmp_path):
    browser = chromium()
    write_report(ResultsInput(synthetic_table(), ["synthetic"]), tmp_path / "out", ReportConfig(pairs=[("A", "B")]))
    page = (tmp_path / "out" / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page and "@import" not in page
    probed = tmp_path / "out" / "probed.html"  # the page plus a checking script placed first in <head>
    probed.write_text(page.replace("<head>", "<head>" + PROBE_SCRIPT, 1))
    offline = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    dumped = subprocess.run([browser, *offline, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="check">(.*?)</pre>', dumped.stdout, re.S)
    assert match, f"the page did not finish loading: {dumped.stderr[-2000:]}"
    check = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert check["errors"] == [] and check["requests"] == []
    assert not re.search(r"CONSOLE[:(]\d+.*(Uncaught|Error)", dumped.stderr)
    assert len(check["images"]) == page.count("data:image/png;base64,") >= 3
    assert all(image["width"] > 0 and image["src"].startswith("data:image/png") for image in check["images"])
    assert check["tables"] and all(rows > 0 for rows in check["tables"])
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *offline, f"--screenshot={shot}", "--window-size=1280,1600", (tmp_path / "out" / "index.html").as_uri()],
                   capture_output=True, timeout=180)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_grid_file_and_of_one_sweep_folder(tmp_path):
    import yaml

    from patchprobe.bench import run_grid

    grid = {"name": "t", "trials": 2, "epochs": 1, "seeds": 2, "probes": ["linear", "protobin"],
            "encoders": [{"name": "toy-vit", "args": {"width": 32, "depth": 1, "heads": 2}}],
            "datasets": [{"name": "ml", "dataset": "synthetic",
                          "options": {"root": "data/ml", "sizes": {"train": 24, "valid": 8, "test": 8}, "clip_seconds": 1.5}}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    run_grid(path, progress=False, log=lambda *_: None)
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(path), "--out", str(tmp_path / "from-grid"), "--resamples", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "from-grid" / "report.json").read_text())
    assert report["runs"] == 4 and report["encoders"] == ["toy-vit"] and report["datasets"] == ["ml"]
    assert report["bootstrap"]["cells_with_scores"] == 2 and len(report["paired_bootstrap"]) == 1
    assert "search time" in (tmp_path / "from-grid" / "tables.md").read_text()
    # one sweep folder: its two final seed runs, and the search time its summary.json records
    result = runner.invoke(app, ["report", str(tmp_path / "runs" / "toy-vit" / "ml" / "protobin"), "--out", str(tmp_path / "one")])
    assert result.exit_code == 0, result.output
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    assert one["runs"] == 2 and one["probes"] == ["protobin"] and "win_matrix" not in one
    assert MISSING not in (tmp_path / "one" / "tables.md").read_text().split("search time")[1].splitlines()[0]


def test_the_demo_ends_with_its_report(tmp_path):
    from patchprobe.demo import DemoConfig, run_demo

    config = DemoConfig(encoder="toy-vit", out=tmp_path / "demo", sizes={"train": 16, "valid": 8, "test": 8}, clip_seconds=1.5,
                        epochs=1, kinds=["multilabel"], probes=["linear", "protobin"], converged_baseline=False,
                        lr_grid={"linear": [1e-2], "protobin": [1e-2]}, prototypes_per_class=2)
    run_demo(config, progress=False)
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert report["probes"] == ["linear", "protobin"] and report["runs"] == 2 and report["encoders"] == ["toy-vit"]
    page = (tmp_path / "demo" / "report" / "index.html").read_text()
    assert "patchprobe demo: toy-vit on synthetic events" in page and "demo folder: 2 runs" in page


def test_a_rerun_into_the_same_folder_leaves_no_file_of_the_earlier_report(tmp_path):
    write_report(ResultsInput(synthetic_table(), ["synthetic"]), tmp_path, ReportConfig(pairs=[("A", "B")]))
    (tmp_path / "mine.txt").write_text("not the report's")
    one_probe = synthetic_table()[lambda t: t["probe"] == "A"]
    write_report(ResultsInput(one_probe, ["one probe"]), tmp_path, ReportConfig(pairs=[]))
    assert not (tmp_path / "win_matrix.png").exists() and not (tmp_path / "critical_difference.svg").exists()
    assert (tmp_path / "mine.txt").exists() and (tmp_path / "index.html").exists()


def test_each_dataset_is_judged_by_its_primary_metric():
    single = synthetic_table({"s": {"A": [0.5, 0.5]}}).assign(metric="accuracy")
    table = pd.concat([synthetic_table(), single, single.assign(metric="map")])
    assert stats.primary_metrics(table) == {"d1": "map", "d2": "map", "d3": "map", "s": "accuracy"}
