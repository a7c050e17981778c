"""The default study end to end through the Snakemake CLI, on the real MiniLM and the mirror data.

Each test runs the workflow in its own working directory (``--directory``) with a copy of the default
config scaled down, so it never touches the checkout's ``results/``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from tokenuni.config import enabled_metrics, load_config

pytestmark = pytest.mark.workflow

BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "MLFLOW_TRACKING_URI": ""}
    env.pop("TOKENUNI_DATA", None)  # the copied config names the mirror
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--cores", "2", *args],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result


def output(result: subprocess.CompletedProcess) -> str:
    """Snakemake reports some errors on stdout, some on stderr."""
    return result.stdout + result.stderr


def write_config(workdir: Path, mirror: Path, models: tuple[str, ...] = ("minilm",), **changes) -> dict:
    """The default config scaled down, with only ``models`` (MiniLM unless asked: MPNet is 7x slower)."""
    with open(REPO / "config" / "config.yaml") as handle:
        config = yaml.safe_load(handle)
    config["models"] = {key: config["models"][key] for key in models}
    config["data_mirror"] = str(mirror)
    config["corpora"]["stsb-test"]["max_sentences"] = 200
    config["corpora"]["wikitext"]["max_sentences"] = 100
    config["corpora"]["sick-r"]["max_sentences"] = 600
    config["sts"]["datasets"] = ["stsb-test", "sick-r"]
    config["sts"]["poolings"] = {"mean_last": {"pool": "mean", "layers": [-1]},
                                 "first_last_1": {"pool": "mean", "layers": [1, -1]}}
    config["sts"]["transforms"] = {name: config["sts"]["transforms"][name]
                                   for name in ("none", "softdecay", "whitening", "whitening_wikitext")}
    # SST-2, where MiniLM learns in well under a minute: 400 examples, 50 updates, 300 dev examples
    config["finetune"].update(tasks=["sst2"], seeds=[0], max_train_examples=400, max_dev_examples=300,
                              geometry_max_sentences=64, bootstrap=300,
                              variants={name: config["finetune"]["variants"][name] for name in ("baseline", "softdecay")})
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    with open(workdir / "config" / "config.yaml", "w") as handle:
        yaml.safe_dump(config, handle)
    return config


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Rule -> job count of a dry run (Snakemake's job-stats table)."""
    out = snakemake(workdir, "--dry-run", "--quiet", "rules").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)
            if m.group(1) != "total"}


def mlflow_runs(results: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tokenuni-default")
    return client.search_runs([experiment.experiment_id], max_results=1000)


#: both real models of the default study (MPNet is not fine-tuned: finetune.models of the default config); the
#: clusters metric's k-means (9 k x 5 restarts x 3 repeats per layer) is the dearest job at these sizes, so one
#: repeat and k <= 4 keep it short for MPNet's 13 layers of 768 dims
BOTH_MODELS = {"models": ("minilm", "mpnet"), "metrics.clusters.repeats": 1, "metrics.clusters.k_max": 4}


@pytest.fixture(scope="module")
def study(mirror, tmp_path_factory) -> Path:
    """The default study, run once for every test in this module."""
    workdir = tmp_path_factory.mktemp("study")
    write_config(workdir, mirror, **BOTH_MODELS)
    snakemake(workdir)
    return workdir


def test_outputs_figures_and_table(study):
    results = study / "results"
    for model_corpus in ("minilm/stsb-test", "minilm/wikitext", "mpnet/stsb-test", "mpnet/wikitext"):
        assert (results / "dumps" / f"{model_corpus}.arrow").stat().st_size > 0
        assert (results / "figures" / model_corpus / "singular_value_cdf.png").stat().st_size > 10_000
    for row in ("avg_cosine", "singular_value_skewness", "effective_rank", "token_uniformity"):
        assert (results / "figures" / f"{row}_by_layer.png").stat().st_size > 10_000
        assert (results / "figures" / f"{row}_by_layer.svg").exists()
    import pandas as pd

    table = pd.read_parquet(results / "tables" / "metrics.parquet")
    cosine = table[(table.metric == "avg_cosine") & (table.corpus == "stsb-test") & (table.variant == "uncentred")]
    assert sorted(cosine[cosine.model == "minilm"].layer) == list(range(7))
    assert sorted(cosine[cosine.model == "mpnet"].layer) == list(range(13))  # 12 blocks + the embedding output
    assert cosine.value.between(-1, 1).all()
    assert not list(results.rglob("*.tmp-*")), "temporary files left behind"


def test_html_report_is_the_last_step_and_opens_in_chromium(study, tmp_path):
    from test_report import assert_renders, open_in_chromium
    from tokenuni.report import discover_figures

    results = study / "results"
    report = results / "report" / "index.html"
    assert report.stat().st_mtime >= (results / "mlflow" / "sync.json").stat().st_mtime
    html = report.read_text(encoding="utf-8")
    runs = json.loads((results / "mlflow" / "sync.json").read_text())["runs"]
    assert len(runs) == len(list((results / "runs").glob("*/*.json")))
    assert all(f"id='run-{run_id}'" in html for run_id in runs.values())
    figures = discover_figures(results)
    assert len(figures) >= len(list((results / "figures").rglob("*.png"))) > 0
    assert_renders(open_in_chromium(report, tmp_path / "study_report.png", keep_as="study_report.png"),
                   n_figures=len(figures))
    # the report opens on findings: every number of them is in one of its tables; each part of the study says
    # something (per model and corpus the layer extremes, per model the STS transforms, the fine-tuning verdicts)
    from test_report import assert_findings_in_tables

    sentences = assert_findings_in_tables(html)
    for model in ("minilm", "mpnet"):
        for corpus in ("stsb-test", "wikitext"):
            assert any(s.startswith(f"{model} on {corpus}: the average cosine similarity peaks at layer") for s in sentences)
            assert any(s.startswith(f"{model} on {corpus}: IsoScore peaks at layer") for s in sentences)
        assert any(s.startswith(f"{model}, pooling mean_last, mean Spearman") for s in sentences)
    assert any(s.startswith("minilm fine-tuned on sst2 (accuracy on dev") for s in sentences)


def test_one_mlflow_run_per_job(study):
    results = study / "results"
    records = sorted((results / "runs").glob("*/*.json"))
    runs = mlflow_runs(results)
    assert len(runs) == len(records)
    assert {run.info.status for run in runs} == {"FINISHED"}
    rules = sorted(run.data.tags["tokenuni.rule"] for run in runs)
    n_metrics = len(enabled_metrics(load_config(study / "config" / "config.yaml")))
    assert rules.count("embed") == 2 * 2 and rules.count("metric") == 2 * 2 * n_metrics  # 2 models x 2 corpora
    assert rules.count("corpus") == 3  # stsb-test, wikitext, sick-r
    assert rules.count("sentence_embed") == 2 * 3 and rules.count("sts") == 2 * 2 * 4  # 2 poolings x 4 transforms
    assert rules.count("finetune") == 2 and rules.count("finetune_table") == 1  # MiniLM only (finetune.models)
    assert {run.data.tags["tokenuni.wildcard.model"] for run in runs if run.data.tags["tokenuni.rule"] == "finetune"} \
        == {"minilm"}
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    finetune = next(r for r in runs if r.data.tags["tokenuni.rule"] == "finetune")
    curve = client.get_metric_history(finetune.info.run_id, "train/loss")
    assert len(curve) >= 2 and [m.step for m in curve] == sorted(m.step for m in curve)  # a training curve
    assert "geometry/isoscore" in finetune.data.metrics
    embed = next(r for r in runs if r.data.tags["tokenuni.rule"] == "embed")
    client_history = embed.data.metrics
    assert client_history, "embed runs log their figures (tokens, seconds)"


def test_paper_figures_and_snakemake_report(study, tmp_path):
    """The papers' figures exist for the enabled sections (PNG, SVG, PDF; logged in their MLflow runs) and
    `snakemake --report` builds with their captions."""
    from matplotlib.image import imread

    from tokenuni.figures import DPI, PANEL_FIGSIZE

    figures = study / "results" / "figures"
    made = ["geometry_by_layer", "oversmoothing_by_layer", "sts/mean_last/scores", "sts/first_last_1/geometry",
            "sts/minilm/sts_table", "sts/mpnet/sts_table", "finetune/scores", "finetune/isotropy_vs_score"]
    for stem in made:
        for ext in ("png", "svg", "pdf"):
            assert (figures / f"{stem}.{ext}").stat().st_size > 5_000, f"{stem}.{ext}"
    assert imread(figures / "geometry_by_layer.png").shape[:2] == (round(PANEL_FIGSIZE[1] * DPI),
                                                                   round(PANEL_FIGSIZE[0] * DPI))
    assert not (figures / "checkpoints").exists()  # no model listed at several checkpoints
    record = json.loads((study / "results" / "runs" / "figure_geometry_panels" / "figure_geometry_panels.json")
                        .read_text())
    assert sorted(Path(a["path"]).name for a in record["artifacts"]) == [
        "geometry_by_layer.pdf", "geometry_by_layer.png", "geometry_by_layer.svg"]

    report = tmp_path / "report.html"
    snakemake(study, "--report", str(report))
    html = report.read_text(encoding="utf-8")
    assert len(html) > 100_000
    for caption in ("Revisiting Over-smoothing in BERT", "between the cosine", "one point per run",  # ASCII: the
                    "Layer convention", "isotropy vs score"):  # report stores captions as JSON (\\u escapes)
        assert caption in html, caption


def test_second_run_does_nothing(study):
    assert planned_jobs(study) == {}
    result = snakemake(study)
    assert "Nothing to be done" in result.stderr + result.stdout


def test_changing_one_metric_option_reruns_only_that_metric(study, mirror):
    before = len(mlflow_runs(study / "results"))
    write_config(study, mirror, **BOTH_MODELS, **{"metrics.token_uniformity.min_tokens": 3})
    planned = planned_jobs(study)
    assert planned == {"metric": 4, "figure_by_layer": 1, "metrics_table": 1, "mlflow_sync": 1, "html_report": 1,
                       "figure_geometry_panels": 1, "figure_oversmoothing": 1, "all": 1}
    snakemake(study)
    runs = mlflow_runs(study / "results")
    assert len(runs) == before + 8  # four metric jobs, their figure, the table, the two panel figures of the table
    assert planned_jobs(study) == {}


def test_sts_table_and_summary(study):
    import pandas as pd

    scores = pd.read_parquet(study / "results" / "tables" / "sts.parquet")
    headline = scores[scores.protocol == "all"]
    assert set(headline.dataset) == {"stsb-test", "sick-r"}
    assert set(headline["transform"]) == {"none", "softdecay", "whitening", "whitening_wikitext"}
    assert set(headline.pooling) == {"mean_last", "first_last_1"}
    first_last = headline[headline.pooling == "first_last_1"]
    # layer 1 and each model's last layer (MiniLM: 6 blocks, MPNet: 12)
    assert dict(zip(first_last.model, first_last.layers)) == {"minilm": "1+6", "mpnet": "1+12"}
    assert headline.spearman.between(-100, 100).all()
    baseline = headline[(headline["transform"] == "none") & (headline.pooling == "mean_last")]
    assert (baseline.spearman > 60).all()  # sentence-embedding models on STS: well above chance
    assert set(baseline.model) == {"minilm", "mpnet"}
    assert set(scores[scores["transform"] == "whitening_wikitext"].fit_on) == {"corpus:wikitext"}
    assert set(scores[scores["transform"] == "whitening"].fit_on) == {"pool:stsb-test", "pool:sick-r"}
    summary = (study / "results" / "tables" / "sts_summary.md").read_text()
    assert "Spearman" in summary and "softdecay" in summary and "isoscore" in summary
    assert (study / "results" / "tables" / "sts_summary.html").stat().st_size > 1000
    geometry = pd.read_csv(study / "results" / "tables" / "sts_geometry.tsv", sep="\t")
    assert {"avg_cosine", "isoscore", "partition_isotropy"} <= set(geometry.metric)


def test_finetune_learns_and_says_so_with_intervals(study):
    import pandas as pd

    tables = study / "results" / "tables"
    results = pd.read_parquet(tables / "finetune.parquet")
    assert set(results["variant"]) == {"baseline", "softdecay"} and set(results["task"]) == {"sst2"}
    assert results["main"].between(0, 1).all()
    summary = pd.read_parquet(tables / "finetune_summary.parquet").set_index("variant")
    baseline = summary.loc["baseline"]
    # the baseline learns: its interval lies above chance (always "positive" on SST-2 dev: 50.9 %)
    assert baseline["chance"] == pytest.approx(0.509, abs=0.03)
    assert baseline["chance_verdict"] == "above chance" and baseline["over_chance_low"] > 0
    assert baseline["low"] > baseline["chance"]
    softdecay = summary.loc["softdecay"]
    assert softdecay["difference_low"] <= softdecay["difference"] <= softdecay["difference_high"]
    assert softdecay["verdict"] in ("better", "worse", "no evidence")
    text = (tables / "finetune_summary.md").read_text()
    assert "isoscore (last layer)" in text and "above chance" in text and "## Where a job's time goes" in text
    predictions = pd.read_parquet(study / "results" / "finetune" / "minilm" / "sst2" / "baseline" / "seed0"
                                  / "predictions.parquet")
    assert len(predictions) == 300 and set(predictions["prediction"]) <= {0, 1}


def test_changing_a_transform_parameter_reruns_only_that_transform(study, mirror):
    metric_change = {"metrics.token_uniformity.min_tokens": 3}  # as the previous test left it
    write_config(study, mirror, **BOTH_MODELS, **metric_change)
    snakemake(study)
    write_config(study, mirror, **BOTH_MODELS, **metric_change, **{"sts.transforms.softdecay.params.alpha": -0.3})
    planned = planned_jobs(study)
    assert planned == {"sts": 4, "sts_table": 1, "mlflow_sync": 1, "html_report": 1, "all": 1,  # no model run
                       "figure_sts_scores": 2, "figure_sts_geometry": 2, "figure_sts_table": 2}  # STS figures
    snakemake(study)
    assert planned_jobs(study) == {}


def test_lint_is_clean():
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "good condition" in result.stdout + result.stderr


def test_unknown_config_key_fails_at_parse_time(tmp_path, mirror):
    write_config(tmp_path, mirror, **{"metrics.spectrum.centerd": True})
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    assert "unknown config key metrics.spectrum.centerd" in output(result)


def test_finetune_models_must_be_model_keys(tmp_path, mirror):
    write_config(tmp_path, mirror, **{"finetune.models": ["minilm", "mpnett"]})
    result = snakemake(tmp_path, "--dry-run", check=False)
    assert result.returncode != 0
    assert "config key finetune.models: 'mpnett' not in the models section" in output(result)


def test_missing_mirror_file_fails_before_any_job(tmp_path, mirror):
    write_config(tmp_path, mirror, **{"corpora.wikitext.mirror.files": ["wikitext-2/wiki.train.tokens"]})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "wiki.train.tokens" in output(result) and "corpus 'wikitext'" in output(result)
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results" / "dumps").exists()


def test_unresolvable_model_fails_before_any_job(tmp_path, mirror):
    write_config(tmp_path, mirror, **{"models.minilm.id": "nobody/no-such-model", "models.minilm.revision": None})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "model 'minilm'" in output(result) and "nobody/no-such-model" in output(result)
    assert not (tmp_path / "results" / "dumps").exists()


def test_cli_check_lists_every_problem(tmp_path, mirror):
    config = write_config(tmp_path, mirror, **{"models.minilm.id": "nobody/no-such-model",
                                                 "corpora.wikitext.mirror.files": ["nowhere.tokens"]})
    result = subprocess.run([sys.executable, "-m", "tokenuni", "check", str(tmp_path / "config" / "config.yaml")],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "nobody/no-such-model" in result.stderr and "nowhere.tokens" in result.stderr
    assert config["models"]["minilm"]["id"] == "nobody/no-such-model"


def test_run_records_are_json_with_digest(study):
    record = json.loads((study / "results" / "runs" / "metric" / "minilm__stsb-test__spectrum.json").read_text())
    assert record["status"] == "FINISHED"
    assert len(record["tags"]["tokenuni.config_digest"]) >= 12
