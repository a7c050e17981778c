"""Run records, the single-writer sync (idempotent), and live logging to a real MLflow server."""
from __future__ import annotations

import json

import pytest

from conftest import free_port  # the mlflow_server fixture lives in conftest too
from tokenuni.tracking import JobRun, read_record, sync_records


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def test_record_and_idempotent_sync(tmp_path):
    record = tmp_path / "runs" / "metric" / "m__c.json"
    artifact = tmp_path / "table.tsv"
    artifact.write_text("a\tb\n1\t2\n")
    with JobRun(record, rule="metric", wildcards={"model": "m", "corpus": "c"}, params={"k": 3}) as run:
        for layer in range(3):
            run.log_metric("avg_cosine", 0.1 * layer, step=layer)
        run.log_artifact(artifact, "tables")
        run.log_input(artifact, context="dump")
    data = read_record(record)
    assert data["status"] == "FINISHED" and data["params"] == {"k": "3"}
    assert [m["step"] for m in data["metrics"]] == [0, 1, 2]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = sync_records([record], tracking_uri=uri, experiment="t", artifact_location=str(tmp_path / "art"))
    second = sync_records([record], tracking_uri=uri, experiment="t", artifact_location=str(tmp_path / "art"))
    assert first["imported"] == 1 and second["imported"] == 0 and second["skipped"] == 1
    runs = _runs(uri, "t")
    assert len(runs) == 1 and runs[0].data.tags["tokenuni.rule"] == "metric"


def test_a_stage_result_becomes_one_run_inside_a_job_or_from_a_notebook(tmp_path):
    """tracking.record is the one translation of a StageResult: into the job's open run, or a run of its own."""
    import pandas as pd

    from tokenuni.results import StageResult
    from tokenuni.tracking import record

    table_file = tmp_path / "table.tsv"
    table_file.write_text("a\n1\n")
    tidy = pd.DataFrame({"metric": ["avg_cosine"] * 2 + ["singular_value"], "variant": ["uncentred", "", ""],
                         "component": [None, None, 0], "layer": [0, 1, 1], "value": [0.1, 0.2, 9.0],
                         "spread": [None, 0.01, None]})
    result = StageResult(outputs={"table": table_file}, metrics={"rows": 3}, params={"sampling.lid": {"seed": 0}},
                         tags={"tokenuni.device": "cpu"}, inputs=[(table_file, "dump")],
                         artifacts=[(table_file, "tables")])
    result.add_tidy(tidy)
    assert result.steps == [("avg_cosine.uncentred", 0.1, 0), ("avg_cosine", 0.2, 1), ("avg_cosine.spread", 0.01, 1)]

    job = tmp_path / "runs" / "metric" / "m__c.json"
    with JobRun(job, rule="metric", wildcards={"model": "m", "corpus": "c"}, params={"k": 3}) as run:
        record(result, run)
    notebook = tmp_path / "runs" / "metric" / "m__d.json"
    record(result, record_path=notebook, rule="metric", wildcards={"model": "m", "corpus": "d"}, params={"k": 3})
    assert record(result) is None  # neither a run nor a record path: the stage's value alone
    for path in (job, notebook):
        data = read_record(path)
        assert data["status"] == "FINISHED" and data["params"]["sampling.lid.seed"] == "0"
        assert data["tags"]["tokenuni.device"] == "cpu"
        logged = [(m["key"], m["value"], m["step"]) for m in data["metrics"]]
        assert logged[:4] == [("rows", 3.0, 0), ("avg_cosine.uncentred", 0.1, 0), ("avg_cosine", 0.2, 1),
                              ("avg_cosine.spread", 0.01, 1)]
        assert [a["artifact_path"] for a in data["artifacts"]] == ["tables"]
        assert [i["context"] for i in data["inputs"]] == ["dump"]


def test_failed_job_leaves_a_failed_record_and_raises(tmp_path):
    record = tmp_path / "runs" / "embed" / "m__c.json"
    with pytest.raises(ValueError, match="boom"):
        with JobRun(record, rule="embed", wildcards={"model": "m", "corpus": "c"}):
            raise ValueError("boom")
    assert not record.exists()
    failed = list((tmp_path / "runs" / "failed").glob("*.json"))
    assert len(failed) == 1 and json.loads(failed[0].read_text())["status"] == "FAILED"


def test_live_logging_to_a_server_and_sync_does_not_duplicate(tmp_path, mlflow_server):
    record = tmp_path / "runs" / "finetune" / "m__sst2__baseline__0.json"
    with JobRun(record, rule="finetune", wildcards={"model": "m"}, params={"lr": 2e-5},
                live_tracking_uri=mlflow_server, experiment="live") as run:
        for step in range(1, 6):
            run.log_metric("train/loss", 1.0 / step, step=step)
        run._flush()
        live = _runs(mlflow_server, "live")
        assert len(live) == 1 and live[0].info.status == "RUNNING"  # visible while the job runs
        from mlflow.tracking import MlflowClient

        history = MlflowClient(tracking_uri=mlflow_server).get_metric_history(live[0].info.run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
    finished = _runs(mlflow_server, "live")
    assert len(finished) == 1 and finished[0].info.status == "FINISHED"
    assert finished[0].data.params["lr"] == "2e-05"
    result = sync_records([record], tracking_uri=mlflow_server, experiment="live")
    assert result["imported"] == 0 and len(_runs(mlflow_server, "live")) == 1


def test_live_logging_falls_back_when_the_server_is_down(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    record = tmp_path / "runs" / "finetune" / "x.json"
    with JobRun(record, rule="finetune", live_tracking_uri=f"http://127.0.0.1:{free_port()}", experiment="e") as run:
        run.log_metric("train/loss", 1.0, step=1)
    assert read_record(record)["status"] == "FINISHED"  # the job still succeeds; the sync imports it later


def test_headline_metrics_have_stable_names():
    """A job's headline values, derived from what it logged: the last layer of the per-layer rows (also a
    fine-tuned model's geometry), an STS job's mean Spearman over its datasets (STS12-16: mean over subsets),
    a fine-tuning run's GLUE main metric; keys the job logged itself are left alone."""
    from tokenuni.tracking import headline_metrics, stage_of

    def entry(key, value, step=0):
        return {"key": key, "value": value, "step": step, "timestamp": 0}

    metric = [entry("avg_cosine.uncentred", 0.1 * layer, layer) for layer in (2, 0, 1)]
    metric += [entry("avg_cosine.centred", 0.9, 2), entry("isoscore", 0.3, 2), entry("isoscore", 0.5, 1)]
    assert headline_metrics("metric", {}, metric) == {"avg_cosine_last_layer": 0.2, "isoscore_last_layer": 0.3}
    sts = [entry("spearman.stsb-test", 80.0), entry("pearson.stsb-test", 79.0), entry("spearman.sts12.concatenated", 1.0),
           entry("spearman.sts12.mean_over_subsets", 70.0), entry("spearman.sts12", 50.0)]
    assert headline_metrics("sts", {}, sts) == {"sts_spearman": 75.0}
    finetune = [entry("final/accuracy", 0.8, 100), entry("final/accuracy", 0.7, 50), entry("train/loss", 0.1, 100),
                entry("geometry/isoscore", 0.4, 6), entry("geometry/isoscore", 0.2, 5)]
    assert headline_metrics("finetune", {"task": "sst2"}, finetune) == {"dev_main": 0.8, "isoscore_last_layer": 0.4}
    assert headline_metrics("finetune", {"task": "stsb"}, [entry("final/pearson_spearman_mean", 0.77, 9)]) == {
        "dev_main": 0.77}
    assert headline_metrics("metric", {}, [*metric, entry("isoscore_last_layer", 1.0)]) == {"avg_cosine_last_layer": 0.2}
    assert [stage_of(r) for r in ("corpus", "metric", "sts", "finetune_table", "figure_by_layer", "new_rule")] == [
        "data", "geometry", "sts", "finetune", "figures", "new_rule"]


def test_sync_opens_the_experiment_on_its_results(tmp_path):
    """The sync's experiment carries the kind, the shared runs view and a description linking to it (a
    description the user wrote is kept); runs carry the stage tag and the headline metrics, also when their
    record predates them."""
    from mlflow.tracking import MlflowClient

    from tokenuni.tracking import HEADLINE_COLUMNS, RUNS_VIEW_KEY, runs_view_url

    record = tmp_path / "runs" / "metric" / "m__c__isoscore.json"
    with JobRun(record, rule="metric", wildcards={"model": "m", "corpus": "c", "metric": "isoscore"}) as run:
        for layer in range(3):
            run.log_metric("isoscore", 0.1 * layer, step=layer)
    old = json.loads(record.read_text())  # a record written before the stage tag and headline metrics existed
    old.update(record_id="0" * 32, job_key="metric/m/c/old")
    del old["tags"]["tokenuni.stage"], old["tags"]["tokenuni.headline"]
    old["metrics"] = [m for m in old["metrics"] if m["key"] != "isoscore_last_layer"]
    (tmp_path / "runs" / "metric" / "old.json").write_text(json.dumps(old))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = sync_records(sorted((tmp_path / "runs" / "metric").glob("*.json")), tracking_uri=uri, experiment="x")
    client = MlflowClient(tracking_uri=uri)
    tags = client.get_experiment(result["experiment_id"]).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{RUNS_VIEW_KEY}"])
    assert view["selectedColumns"] == [f"metrics.`{name}`" for name in HEADLINE_COLUMNS]
    assert view["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "tokenuni.stage"}]
    assert view["searchFilter"] == "tags.`tokenuni.headline` = 'true'"
    link = runs_view_url("", result["experiment_id"]).lstrip("/")
    assert f"]({link})" in tags["mlflow.note.content"]
    for run in _runs(uri, "x"):
        assert run.data.tags["tokenuni.stage"] == "geometry" and run.data.tags["tokenuni.headline"] == "true"
        assert run.data.metrics["isoscore_last_layer"] == pytest.approx(0.2)
    client.set_experiment_tag(result["experiment_id"], "mlflow.note.content", "my notes")
    sync_records([record], tracking_uri=uri, experiment="x")
    assert client.get_experiment(result["experiment_id"]).tags["mlflow.note.content"] == "my notes"
