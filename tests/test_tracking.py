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
