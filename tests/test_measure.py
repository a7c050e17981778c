"""``tokenuni measure`` end to end and the notebook API (tokenuni.measure, tokenuni.sts, sentence vectors and
transforms), on the real all-MiniLM-L6-v2 and the first lines of WikiText-2 from the data mirror.

``tokenuni measure`` runs the study's workflow (Snakemake) on a 40-line text file: its table, figure, report
and MLflow runs, and a second run that has nothing to do. ``tokenuni.measure`` on the same file returns the
workflow's values. The example script ``docs/notebook_example.py`` runs as a user would run it.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
KEYS = ["layer", "metric", "variant", "component"]


def first_lines(mirror: Path, n: int) -> list[str]:
    """The first ``n`` non-empty lines of WikiText-2 validation (paragraphs and ``= titles =``)."""
    lines = (mirror / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][:n]


@pytest.fixture(scope="module")
def texts_file(mirror, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "wiki40.txt"
    path.write_text("\n".join(first_lines(mirror, 40)) + "\n", encoding="utf-8")
    return path


def _measure(texts_file: Path, results: Path) -> tuple[int, str]:
    from tokenuni.measure_workflow import run_measure

    out = io.StringIO()
    code = run_measure(MINILM, str(texts_file), results=str(results), cores=2, max_length=64, out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def measured(texts_file, tmp_path_factory) -> dict:
    results = tmp_path_factory.mktemp("measure") / "minilm-wiki40"
    code, first = _measure(texts_file, results)
    assert code == 0, first
    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file() and ".snakemake" not in p.parts
              and p.name != "snakemake.log"}
    code, second = _measure(texts_file, results)
    assert code == 0, second
    return {"results": results, "first": first, "second": second, "mtimes": mtimes}


@pytest.mark.workflow
def test_measure_prints_the_table_and_where_everything_is(measured):
    results, first = measured["results"], measured["first"]
    # the generated config, validated and shown; geometry only
    import yaml

    config = yaml.safe_load((results / "config.yaml").read_text())
    assert list(config["models"]) == ["all-MiniLM-L6-v2"] and list(config["corpora"]) == ["wiki40"]
    assert config["sts"] == {"enabled": False} and config["finetune"] == {"enabled": False}
    assert f"config {results / 'config.yaml'} (checked against the schema)" in first
    # the per-layer headline table: 7 layers (embedding output + 6 blocks) x the headline metrics
    table = pd.read_parquet(results / "tables" / "metrics.parquet")
    header = next(line for line in first.splitlines() if line.split()[:2] == ["avg_cosine", "isoscore"])
    assert header.split() == ["avg_cosine", "isoscore", "sv_skewness", "effective_rank", "token_uniformity"]
    cosine = table[(table.metric == "avg_cosine") & (table.variant == "uncentred")].set_index("layer")["value"]
    for layer in range(7):
        row = next(line for line in first.splitlines() if line.startswith(f"{layer} "))
        assert row.split()[1] == f"{cosine[layer]:.4g}"
    assert "first table after" in first and "nothing to be done" not in first
    # the figure, the report and the MLflow experiment, named
    assert f"figure: {results / 'figures' / 'geometry_by_layer.png'}" in first
    assert (results / "figures" / "geometry_by_layer.png").stat().st_size > 10_000
    assert f"report: {results / 'report' / 'index.html'}" in first
    assert "tokenuni-measure-all-MiniLM-L6-v2--wiki40" in first
    sync = json.loads((results / "mlflow" / "sync.json").read_text())
    assert f"#/experiments/{sync['experiment_id']}/runs?workflowType=machine_learning&viewStateShareKey=tokenuni" in first
    assert f"mlflow ui --backend-store-uri sqlite:///{results / 'mlflow.db'}" in first


@pytest.mark.workflow
def test_second_measure_does_nothing_and_prints_the_table_again(measured):
    second = measured["second"]
    assert "Snakemake: nothing to be done" in second
    assert "(up to date;" in second and "first table after" not in second
    table_lines = [line for line in measured["first"].splitlines() if line[:1].isdigit() and " " in line]
    assert table_lines and all(line in second.splitlines() for line in table_lines)
    changed = [str(p) for p, mtime in measured["mtimes"].items() if p.stat().st_mtime_ns != mtime]
    assert not changed, f"the second run rewrote {changed}"


@pytest.mark.workflow
def test_measure_runs_open_mlflow_on_results(measured):
    from mlflow.tracking import MlflowClient

    from tokenuni.tracking import HEADLINE_COLUMNS, RUNS_VIEW_KEY

    results = measured["results"]
    sync = json.loads((results / "mlflow" / "sync.json").read_text())
    client = MlflowClient(tracking_uri=sync["tracking_uri"])
    experiment = client.get_experiment(sync["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert view["selectedColumns"] == [f"metrics.`{name}`" for name in HEADLINE_COLUMNS]
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    assert {run.data.tags["tokenuni.stage"] for run in runs} == {"data", "geometry", "figures"}
    table = pd.read_parquet(results / "tables" / "metrics.parquet")
    last = table[table.layer == 6].set_index(["metric", "variant"])["value"]
    by_metric = {run.data.tags["tokenuni.wildcard.metric"]: run for run in runs
                 if run.data.tags["tokenuni.rule"] == "metric"}
    assert by_metric["cosine_family"].data.metrics["avg_cosine_last_layer"] == last[("avg_cosine", "uncentred")]
    assert by_metric["isoscore"].data.metrics["isoscore_last_layer"] == last[("isoscore", "")]
    assert by_metric["spectrum"].data.metrics["singular_value_skewness_last_layer"] == \
        last[("singular_value_skewness", "uncentred")]


@pytest.mark.workflow
def test_notebook_measure_equals_the_workflow(measured, texts_file, tmp_path):
    import tokenuni

    workflow = pd.read_parquet(measured["results"] / "tables" / "metrics.parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    table = tokenuni.measure(MINILM, texts_file, max_length=64, device="cpu", progress=False, tracking_uri=uri)
    assert list(table.columns) == list(workflow.columns)
    assert set(table["model"]) == {"all-MiniLM-L6-v2"} and set(table["corpus"]) == {"wiki40"}
    merged = workflow.merge(table, on=KEYS, suffixes=("_workflow", "_notebook"), how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"][KEYS]
    assert (merged["n_workflow"] == merged["n_notebook"]).all()
    # the same code on the same texts; only the forward pass's thread count may differ (float rounding)
    np.testing.assert_allclose(merged["value_notebook"], merged["value_workflow"], rtol=1e-5, atol=1e-7)
    # MLflow only when asked: one run, its per-layer values and headline metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(table.attrs["mlflow_run_id"])
    assert run.data.tags["tokenuni.rule"] == "measure" and run.data.tags["tokenuni.stage"] == "geometry"
    last = table[(table.layer == 6) & (table.metric == "isoscore")]["value"].item()
    assert run.data.metrics["isoscore_last_layer"] == last
    history = client.get_metric_history(run.info.run_id, "avg_cosine.uncentred")
    assert sorted(m.step for m in history) == list(range(7))


def test_notebook_sts_and_transforms_on_arrays(mirror):
    """tokenuni.sts is the workflow's protocol: cosine of pooled embeddings, Spearman × 100; the identity row
    equals scipy's Spearman of the cosines of tokenuni.sentence_vectors; a fitted transform is applied as is."""
    from scipy.stats import spearmanr

    import tokenuni

    rows = [line.split("\t") for line in
            (mirror / "stsbenchmark" / "sts-test.csv").read_text(encoding="utf-8").splitlines()[:24]]
    pairs, scores = [(r[5], r[6]) for r in rows], [float(r[4]) for r in rows]
    result = tokenuni.sts(MINILM, pairs, scores, transform=["none", "whitening"], device="cpu", progress=False)
    assert list(result["transform"]) == ["none", "whitening"] and set(result["n"]) == {24}
    assert list(result["fit_on"]) == ["pool:pairs", "pool:pairs"]
    vectors = tokenuni.sentence_vectors(MINILM, [t for pair in pairs for t in pair], device="cpu", progress=False)
    a, b = vectors[0::2], vectors[1::2]
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert result["spearman"][0] == pytest.approx(100 * spearmanr(cosines, scores).statistic, abs=1e-9)
    assert result["spearman"][0] > 50  # MiniLM is an STS model
    # a transform fitted elsewhere (here: on the vectors themselves) is applied as it is
    fitted = tokenuni.make_transform("whitening").fit(vectors)
    again = tokenuni.sts(MINILM, (list(zip(*pairs))[0], list(zip(*pairs))[1]), scores, transform=fitted,
                         device="cpu", progress=False)
    assert again["spearman"][0] == pytest.approx(result["spearman"][1], abs=1e-6)
    from tokenuni.api import ApiError

    with pytest.raises(ApiError, match="3 pairs but 2 scores"):
        tokenuni.sts(MINILM, pairs[:3], scores[:2])


def test_import_tokenuni_is_light():
    code = ("import sys, tokenuni; heavy = [m for m in ('torch', 'transformers', 'pandas', 'mlflow') if m in "
            "sys.modules]; assert not heavy, heavy; assert callable(tokenuni.sts) and callable(tokenuni.measure)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_measure_says_where_it_looked_for_the_snakefile(tmp_path, monkeypatch):
    from tokenuni import measure_workflow
    from tokenuni.measure_workflow import MeasureError, find_snakefile

    monkeypatch.setenv(measure_workflow.SNAKEFILE_ENV, str(tmp_path / "nowhere" / "Snakefile"))
    monkeypatch.setattr(measure_workflow, "REPO", tmp_path / "installed")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MeasureError) as error:
        find_snakefile()
    for place in (tmp_path / "nowhere" / "Snakefile", tmp_path / "installed" / "Snakefile", tmp_path / "Snakefile"):
        assert str(place) in str(error.value)
    assert "TOKENUNI_SNAKEFILE=" in str(error.value)


def test_measure_config_from_a_file_a_corpus_key_and_a_corpus_entry(texts_file, tmp_path, mirror):
    from tokenuni.measure_workflow import MeasureError, measure_config

    config, folder = measure_config(f"{MINILM}@c9745ed1d9f207416be6d2e6f8de32d1f16199bf", str(texts_file),
                                    metrics="spectrum,lid", results=str(tmp_path / "r"))
    assert config["models"] == {"all-MiniLM-L6-v2": {"id": MINILM, "revision": "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"}}
    assert config["corpora"]["wiki40"]["mirror"] == {"format": "lines", "files": ["wiki40.txt"]}
    assert config["data_mirror"] == str(texts_file.parent) and folder == (tmp_path / "r").resolve()
    assert [n for n, o in config["metrics"].items() if o.get("enabled", True)] == ["spectrum", "lid"]
    config, _ = measure_config(MINILM, "wikitext", max_sentences=100)
    assert config["corpora"]["wikitext"]["max_sentences"] == 100 and config["corpora"]["wikitext"]["mirror"]
    entry = tmp_path / "stsb.yaml"
    entry.write_text("stsb: {mirror: {format: stsb, files: [stsbenchmark/sts-test.csv]}, max_sentences: 50}\n")
    config, folder = measure_config(MINILM, str(entry))
    assert list(config["corpora"]) == ["stsb"] and folder.name == "all-MiniLM-L6-v2--stsb"
    with pytest.raises(MeasureError, match="not a file, and not a corpus"):
        measure_config(MINILM, "no-such-texts")
    with pytest.raises(MeasureError, match="unknown 'isoscor'"):
        measure_config(MINILM, str(texts_file), metrics="isoscor")


def test_notebook_example_runs(tmp_path):
    """docs/notebook_example.py, run as a user runs it (CI keeps it from rotting)."""
    result = subprocess.run([sys.executable, str(REPO / "docs" / "notebook_example.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "avg_cosine" in result.stdout and "spearman" in result.stdout and "whitened" in result.stdout
