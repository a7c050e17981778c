"""The static HTML report (tokenuni/report/): built from a small results tree made by tokenuni's own
stages (real MiniLM metrics, tables, figures, run records, the MLflow sync's run ids), then opened in headless
Chromium: every figure decodes, the sections are there, and a full-page screenshot is taken.

The default study's report (the workflow's last step) is checked in tests/test_workflow.py, on its
shared ``study`` fixture, with :func:`open_in_chromium` from here.

Screenshots go to the test's temporary folder; with ``TOKENUNI_SCREENSHOTS=<dir>`` (relative to the
repository or absolute) they are also copied there (``report.png``, ``study_report.png``).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import uuid
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO
from tokenuni.cli import main as tokenuni
from tokenuni.errors import TokenuniError
from tokenuni.report import build_report, headline_table

SECTIONS = ["Findings", "Geometry", "Unsupervised STS", "Fine-tuning", "Study", "Config", "MLflow runs"]


# ------------------------------------------------------------------------------------------ browser
def open_in_chromium(html_file: Path, screenshot: Path, *, keep_as: str = "report.png") -> dict:
    """Load ``html_file`` (file://) in headless Debian Chromium; return its images and headings; save a
    full-page screenshot to ``screenshot`` and the first screen beside it as ``<stem>_first_screen.png`` (and
    both to ``$TOKENUNI_SCREENSHOTS``, as ``<keep_as>`` and ``<keep_as stem>_first_screen.png``, when set).

    Skips the test when /usr/bin/chromium or the playwright package is absent (no browser download).
    """
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian package `chromium`): the report is not opened in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the python package playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requests = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(html_file.resolve().as_uri(), wait_until="load")
            info = page.evaluate("""() => ({
                images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
                                                               height: i.naturalHeight, alt: i.alt})),
                h2: Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim()),
                title: document.title,
                scripts: document.scripts.length,
            })""")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            first_screen = screenshot.with_name(f"{screenshot.stem}_first_screen.png")
            page.screenshot(path=str(first_screen))  # what a reader sees on opening it: the findings
        finally:
            browser.close()
    info["requests"] = requests
    keep = os.environ.get("TOKENUNI_SCREENSHOTS")
    if keep:
        folder = Path(keep) if Path(keep).is_absolute() else REPO / keep
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, folder / keep_as)
        shutil.copyfile(first_screen, folder / f"{Path(keep_as).stem}_first_screen.png")
    return info


def assert_renders(info: dict, n_figures: int) -> None:
    """Every figure decoded (no broken image), every section heading present, nothing fetched from afar."""
    assert len(info["images"]) == n_figures
    broken = [image["alt"] for image in info["images"] if not image["complete"] or image["width"] == 0]
    assert not broken, f"broken images: {broken}"
    assert info["h2"] == SECTIONS
    assert info["scripts"] == 0
    assert all(url.startswith(("file:", "data:")) for url in info["requests"]), info["requests"]


_TOKEN = re.compile(r"[^\s,;()\[\]<>]+")
_NUMBER = re.compile(r"[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _numbers(text: str) -> set[str]:
    """The tokens of ``text`` that are numbers as printed (``0.269``, ``+1.4``, ``-0.7``, ``5``); a layer column
    header ``L5`` counts as ``5``; identifiers with digits (``all-MiniLM-L6-v2``, ``sst2``) are not numbers."""
    out = set()
    for token in _TOKEN.findall(unescape(text)):
        token = token.rstrip(".:")
        if _NUMBER.fullmatch(token):
            out.add(token)
        elif re.fullmatch(r"L\d+", token):
            out.add(token[1:])
    return out


def findings_and_tables(page: str) -> tuple[list[str], set[str]]:
    """(the findings' sentences, every number in the report's tables) of a report page."""
    section = re.search(r"<section id='findings'>(.*?)</section>", page, re.S).group(1)
    sentences = [re.sub(r"<[^>]+>", "", item) for item in re.findall(r"<li>(.*?)</li>", section, re.S)]
    cells = re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", page, re.S)
    return sentences, set().union(*(_numbers(re.sub(r"<[^>]+>", " ", cell)) for cell in cells))


def assert_findings_in_tables(page: str) -> list[str]:
    """Every number of every findings sentence is in one of the report's tables; returns the sentences."""
    sentences, table_numbers = findings_and_tables(page)
    for sentence in sentences:
        missing = _numbers(sentence) - table_numbers
        assert not missing, f"numbers {sorted(missing)} of the finding {sentence!r} are in no table of the report"
    return sentences


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


# ------------------------------------------------------------------------------------------ results tree
@pytest.fixture(scope="module")
def small_study(minilm_dump, tmp_path_factory) -> dict:
    """A results tree shaped like the study's, made by tokenuni's own stages on a real MiniLM dump.

    Two metric jobs, the merged table, two figures (average cosine by layer; singular-value CDF), a
    Markdown STS summary, one failed job, and the MLflow sync's record -> run id map. No fine-tuning
    summary (an optional part the report must skip with a note).
    """
    root = tmp_path_factory.mktemp("report-study")
    results = root / "results"
    runs = results / "runs"

    def job(rule, **wildcards):
        return json.dumps({"rule": rule, "wildcards": wildcards})

    tables = []
    for metric in ("cosine_family", "spectrum"):
        out = results / "metrics" / "minilm" / "stsb-test" / f"{metric}.parquet"
        assert tokenuni(["metric", metric, "--dump", str(minilm_dump), "--model", "minilm", "--corpus", "stsb-test",
                         "--device", "cpu", "--no-progress", "--out", str(out),
                         "--record", str(runs / "metric" / f"minilm__stsb-test__{metric}.json"),
                         "--job", job("metric", model="minilm", corpus="stsb-test", metric=metric)]) == 0
        tables.append(str(out))
    merged = results / "tables" / "metrics.parquet"
    assert tokenuni(["table", *tables, "--out", str(merged), "--tsv", str(results / "tables" / "metrics.tsv"),
                     "--record", str(runs / "metrics_table" / "metrics_table.json"),
                     "--job", job("metrics_table")]) == 0
    figures = {
        "avg_cosine": results / "figures" / "avg_cosine_by_layer.png",
        "cdf": results / "figures" / "minilm" / "stsb-test" / "singular_value_cdf.png",
    }
    assert tokenuni(["figure", "by-layer", "--metric", "avg_cosine", "--table", str(merged),
                     "--png", str(figures["avg_cosine"]), "--record", str(runs / "figure_by_layer" / "avg_cosine.json"),
                     "--job", job("figure_by_layer", row="avg_cosine")]) == 0
    assert tokenuni(["figure", "singular-value-cdf", "--table", tables[1], "--png", str(figures["cdf"]),
                     "--model-label", "sentence-transformers/all-MiniLM-L6-v2",
                     "--record", str(runs / "figure_singular_value_cdf" / "minilm__stsb-test.json"),
                     "--job", job("figure_singular_value_cdf", model="minilm", corpus="stsb-test")]) == 0
    # a job that fails leaves a FAILED record (runs/failed/), which the sync imports too
    assert tokenuni(["figure", "by-layer", "--metric", "no_such_metric", "--table", str(merged),
                     "--png", str(results / "figures" / "no_such_metric_by_layer.png"),
                     "--record", str(runs / "figure_by_layer" / "no_such_metric.json"),
                     "--job", job("figure_by_layer", row="no_such_metric")]) == 1
    from tokenuni.tables import to_markdown

    sts = pd.DataFrame({"model": ["minilm", "minilm"], "transform": ["none", "whitening"],
                        "stsb-test": [82.03, 78.07]}).set_index(["model", "transform"])
    (results / "tables" / "sts_summary.md").write_text(
        "# Unsupervised STS\n\n## Spearman × 100\n\n" + to_markdown(sts) + "\n", encoding="utf-8")
    # the MLflow sync's output, shaped as tokenuni.tracking.sync_records returns it (the real sync into a
    # store is tests/test_tracking.py's and the default study's; here it would only cost a database setup)
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*/*.json"))]
    sync = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "report-test", "experiment_id": "7",
            "runs": {r["record_id"]: uuid.uuid5(uuid.NAMESPACE_OID, r["record_id"]).hex for r in records},
            "imported": len(records), "skipped": 0}
    (results / "mlflow").mkdir(parents=True)
    (results / "mlflow" / "sync.json").write_text(json.dumps(sync, indent=1), encoding="utf-8")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config["study"] = "report-test"
    config_file = root / "config.yaml"
    config_file.write_text("# report test: <b>escaped</b> & kept verbatim\n" + yaml.safe_dump(config), encoding="utf-8")
    return {"root": root, "results": results, "config": config_file, "figures": figures, "merged": merged,
            "sync": json.loads((results / "mlflow" / "sync.json").read_text())}


@pytest.fixture(scope="module")
def report(small_study) -> dict:
    out = small_study["results"] / "report" / "index.html"
    summary = build_report(small_study["results"], small_study["config"], out)
    return {**summary, "html": out.read_text(encoding="utf-8"), "file": out}


# ------------------------------------------------------------------------------------------ tests
def test_report_holds_config_figures_runs_and_table(small_study, report):
    html = report["html"]
    assert report["figures"] == 2 and report["records"] == 6 and report["runs"] == 6
    # the exact config, escaped
    assert "# report test: &lt;b&gt;escaped&lt;/b&gt; &amp; kept verbatim" in html
    assert "study: report-test" in html and "<b>escaped</b>" not in html
    # every figure embedded byte for byte (offline), nothing linked from outside
    for png in small_study["figures"].values():
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in html
    assert html.count("data:image/png;base64,") == 2
    assert "<script" not in html and not re.search(r"""src=['"]?(https?:)?//""", html)
    # the only web links: run ids to a local `mlflow ui`
    assert {m for m in re.findall(r"""href=['"](https?://[^/'"]+)""", html)} == {"http://127.0.0.1:5000"}
    # every job's MLflow run id, with its rule and status; the failed job marked
    runs = small_study["sync"]["runs"]
    assert len(runs) == 6
    for run_id in runs.values():
        assert f"id='run-{run_id}'" in html
    assert "status-FAILED" in html and "row=no_such_metric" in html
    assert "report-test" in html and small_study["sync"]["tracking_uri"] in html
    # each figure is linked to the run that logged it
    records = {p.stem: json.loads(p.read_text()) for p in (small_study["results"] / "runs").glob("figure_*/*.json")}
    figure_run = runs[records["avg_cosine"]["record_id"]]
    caption = re.search(r"<figure id='fig-figures-avg_cosine_by_layer-png'>.*?</figure>", html, re.S).group(0)
    assert f"href='#run-{figure_run}'" in caption and "average cosine similarity by layer" in caption
    # the per-layer table: 3 significant digits, one column per layer
    pivot = headline_table(pd.read_parquet(small_study["merged"]))
    assert list(pivot.columns) == list(range(7))
    value = pivot.loc[("minilm", "stsb-test", "avg_cosine", "uncentred"), 3]
    assert f"<td class='num'>{value:.3g}</td>" in html
    assert "<th>L0</th>" in html and "<th>L6</th>" in html
    # the STS Markdown summary as a table; the missing fine-tuning summary as a note
    assert '<td class="num">82.03</td>' in html  # rendered by markdown-it-py, right-aligned as a number
    assert "no tables/finetune_summary.md in the results" in html
    # the study facts: models with revisions, jobs per rule, git commit
    assert "c9745ed1d9f207416be6d2e6f8de32d1f16199bf" in html
    commit = records["avg_cosine"]["tags"]["mlflow.source.git.commit"]
    assert commit in html
    assert not list(report["file"].parent.glob(".*tmp*")), "temporary file left behind"


def test_report_without_optional_parts_is_built_with_notes(tmp_path):
    """An empty results folder: no figures, tables, records or sync — notes, not a crash."""
    (tmp_path / "results").mkdir()
    out = tmp_path / "results" / "report" / "index.html"
    summary = build_report(tmp_path / "results", {"study": "empty", "models": {}, "corpora": {}}, out)
    html = out.read_text(encoding="utf-8")
    assert summary["figures"] == 0 and summary["records"] == 0
    for note in ("no PNG figures", "no tables/metrics.parquet", "no tables/sts_summary.md",
                 "no MLflow sync output", "no run records"):
        assert note in html
    with pytest.raises(TokenuniError, match="does-not-exist"):
        build_report(tmp_path / "does-not-exist", {"study": "x"}, out)


def test_cli_report(small_study, tmp_path):
    out = tmp_path / "index.html"
    assert tokenuni(["report", "--results", str(small_study["results"]), "--config", str(small_study["config"]),
                     "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").count("data:image/png;base64,") == 2


def test_report_opens_in_chromium(small_study, report, tmp_path):
    screenshot = tmp_path / "report.png"
    info = open_in_chromium(report["file"], screenshot, keep_as="report.png")
    assert_renders(info, n_figures=2)
    assert {image["width"] for image in info["images"]} == {png_size(p)[0] for p in small_study["figures"].values()}
    assert info["title"] == "tokenuni report · report-test"
    width, height = png_size(screenshot)
    assert width == 1400 and height > 2000  # the full page, not the viewport


def test_captions_come_from_the_snakemake_report_captions(small_study, tmp_path):
    """The caption a rule names in ``report(..., caption=...)`` (else ``<figure stem>.rst``), Jinja-rendered
    with the job's wildcards, as HTML; ``workflow.rst`` introduces the study."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "report").mkdir()
    (tmp_path / "rules" / "figures.smk").write_text(
        'rule figure_by_layer:\n    output:\n        png=report("x.png", caption="../report/metric_by_layer.rst"),\n',
        encoding="utf-8")
    (tmp_path / "report" / "metric_by_layer.rst").write_text(
        "Row ``{{ snakemake.wildcards.row }}`` by layer.\n\nLayer 0 is the *embedding output*.\n", encoding="utf-8")
    (tmp_path / "report" / "singular_value_cdf.rst").write_text("Singular values <per layer>.\n", encoding="utf-8")
    (tmp_path / "report" / "workflow.rst").write_text('Study ``{{ snakemake.config["study"] }}``.\n', encoding="utf-8")
    out = tmp_path / "index.html"
    build_report(small_study["results"], small_study["config"], out, captions_dir=tmp_path / "report")
    html = out.read_text(encoding="utf-8")
    by_layer = re.search(r"<figure id='fig-figures-avg_cosine_by_layer-png'>.*?</figure>", html, re.S).group(0)
    assert "<p>Row <code>avg_cosine</code> by layer.</p><p>Layer 0 is the <em>embedding output</em>.</p>" in by_layer
    cdf = re.search(r"<figure id='fig-figures-minilm-stsb-test-singular_value_cdf-png'>.*?</figure>", html, re.S).group(0)
    assert "Singular values &lt;per layer&gt;." in cdf
    assert "<p>Study <code>report-test</code>.</p>" in html


# ------------------------------------------------------------------------------------------ findings
@pytest.fixture(scope="module")
def findings_study(tmp_path_factory) -> Path:
    """A results tree with the three tables the findings read, with known extremes and verdicts: the metrics
    table (two models; a centred variant that must not count), the STS scores with their summary (written by
    the STS stage's own function), the fine-tuning summary with its Markdown (likewise), and one figure."""
    from tokenuni.finetune.summary import summary_markdown
    from tokenuni.metrics import normalise_tidy
    from tokenuni.sts.evaluation import SCORE_COLUMNS
    from tokenuni.sts.summary import write_summary

    results = tmp_path_factory.mktemp("findings") / "results"
    tables = results / "tables"
    tables.mkdir(parents=True)
    series = {("alpha", "avg_cosine", "uncentred"): [0.1, 0.31, 0.52, 0.2, 0.047],
              ("alpha", "avg_cosine", "centred"): [0.9, 0.0, 0.0, 0.0, 0.0],
              ("alpha", "isoscore", ""): [0.2, 0.1, 0.0512, 0.15, 0.3],
              ("beta", "avg_cosine", "uncentred"): [0.6, 0.5, 0.4, 0.3, 0.25],
              ("beta", "isoscore", ""): [0.11, 0.12, 0.13, 0.14, 0.1]}
    rows = [{"model": model, "training_step": None, "corpus": "wiki", "layer": layer, "metric": metric,
             "variant": variant, "component": None, "value": value, "spread": None, "n": 100, "sample_size": None,
             "seed": None}
            for (model, metric, variant), values in series.items() for layer, value in enumerate(values)]
    normalise_tidy(pd.DataFrame(rows)).to_parquet(tables / "metrics.parquet", index=False)

    spearman = {"none": (70.0, [58.0, 62.0]), "whitening": (75.0, [64.0, 66.0]), "softdecay": (50.0, [39.0, 41.0])}
    types = {"none": "identity", "whitening": "whitening", "softdecay": "softdecay"}
    scores = []
    for pooling in ("cls_last", "mean_last"):
        for transform, (single, subsets) in spearman.items():
            shift = 0.0 if pooling == "mean_last" else -20.0
            base = {"model": "alpha", "pooling": pooling, "layers": "6", "transform": transform,
                    "transform_type": types[transform], "params": "{}", "fit_on": "pool:x", "fitted": "{}"}
            scores.append({**base, "dataset": "stsb", "protocol": "all", "subset": None, "spearman": single + shift,
                           "pearson": single, "n": 100})
            for i, value in enumerate(subsets):
                scores.append({**base, "dataset": "sts12", "protocol": "subset", "subset": f"s{i}",
                               "spearman": value + shift, "pearson": value, "n": 50})
            scores.append({**base, "dataset": "sts12", "protocol": "mean_over_subsets", "subset": None,
                           "spearman": sum(subsets) / 2 + shift, "pearson": 0.0, "n": 100})
            scores.append({**base, "dataset": "sts12", "protocol": "concatenated", "subset": None,
                           "spearman": sum(subsets) / 2 + shift + 1, "pearson": 0.0, "n": 100})
    scores = pd.DataFrame(scores).reindex(columns=SCORE_COLUMNS)
    scores.to_parquet(tables / "sts.parquet", index=False)
    write_summary(scores, None, tables / "sts_summary.md", tables / "sts_summary.html")

    def arm(variant, verdict, difference=float("nan"), low=float("nan"), high=float("nan")):
        return {"model": "alpha", "task": "sst2", "variant": variant, "metric": "accuracy", "seeds": 3, "mean": 0.8,
                "sd": 0.01, "low": 0.77, "high": 0.83, "chance": 0.5, "over_chance": 0.3, "over_chance_low": 0.27,
                "over_chance_high": 0.33, "chance_verdict": "above chance", "difference": difference,
                "difference_low": low, "difference_high": high, "difference_seeds": 3, "verdict": verdict}

    comparisons = pd.DataFrame([arm("baseline", ""), arm("softdecay", "better", 0.014, 0.007, 0.0204),
                                arm("istar", "worse", -0.031, -0.052, -0.011),
                                arm("fusion", "no evidence", 0.001, -0.0105, 0.012)])
    comparisons.to_parquet(tables / "finetune_summary.parquet", index=False)
    (tables / "finetune_summary.md").write_text(summary_markdown(
        comparisons, pd.DataFrame(), pd.DataFrame(), pd.DataFrame({"task": ["sst2"] * 3, "seed": [0, 1, 2]}),
        n_boot=100), encoding="utf-8")

    import matplotlib.pyplot as plt

    figure = results / "figures" / "avg_cosine_by_layer.png"
    figure.parent.mkdir(parents=True)
    plt.figure(figsize=(2, 2))
    plt.plot(series[("alpha", "avg_cosine", "uncentred")])
    plt.savefig(figure)
    plt.close()
    return results


def test_report_opens_on_findings_whose_numbers_are_in_its_tables(findings_study):
    out = findings_study / "report" / "index.html"
    build_report(findings_study, {"study": "findings", "models": {}, "corpora": {}}, out)
    page = out.read_text(encoding="utf-8")
    # the findings first, the study's metadata after the results
    h2 = re.findall(r"<h2>(.*?)</h2>", page)
    assert h2 == SECTIONS
    sentences = assert_findings_in_tables(page)
    text = "\n".join(sentences)
    # per model and corpus: where the average cosine (uncentred, not centred) and IsoScore peak and bottom out
    assert ("alpha on wiki: the average cosine similarity peaks at layer 2 (0.52, most anisotropic) and bottoms "
            "out at layer 4 (0.047).") in text
    assert "alpha on wiki: IsoScore peaks at layer 4 (0.3, most isotropic) and bottoms out at layer 2 (0.0512)." in text
    assert "beta on wiki: the average cosine similarity peaks at layer 0 (0.6" in text
    # STS: the best and worst transform against none, pooling mean_last, mean over the datasets of the summary
    assert ("alpha, pooling mean_last, mean Spearman over the STS datasets: the best transform is whitening (70), "
            "the worst softdecay (45); with no transform (none) it is 65.") in text
    # fine-tuning verdicts with the summary's intervals
    assert ("alpha fine-tuned on sst2 (accuracy on dev, difference to the baseline with its interval) — better: "
            "softdecay (+1.4 [+0.7, +2.0]); worse: istar (-3.1 [-5.2, -1.1]); no evidence: fusion (+0.1 [-1.1, +1.2])."
            ) in text
    # one link per sentence: to the figure behind it when the report has it, else to its table
    links = re.findall(r"<li>.*?<a href='(#[^']+)'>(.*?)</a></li>", page)
    assert len(links) == len(sentences) == 6
    assert [href for href, _ in links] == ["#fig-figures-avg_cosine_by_layer-png", "#headline-table"] * 2 + [
        "#sts", "#finetune"]
    assert links[0][1] == "figure: average cosine similarity by layer"
    for href, _ in links:
        assert f"id='{href[1:]}'" in page


def test_findings_check_catches_a_number_in_no_table():
    page = ("<section id='findings'><ul><li>m on c: peaks at layer 3 (0.25).</li></ul></section>"
            "<table><tr><th>L3</th></tr><tr><td>0.26</td></tr></table>")
    with pytest.raises(AssertionError, match=r"\['0.25'\]"):
        assert_findings_in_tables(page)

