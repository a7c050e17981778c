"""MLflow server mode end to end: a tiny default study logs every job to an `mlflow server` on loopback.

The server (``mlflow_server``) and the study (``server_study``) are session fixtures in conftest.py,
shared with tests/test_mlflow_ui.py. The workflow only gets ``mlflow.tracking_uri: http://127.0.0.1:<port>``:
each job creates its run on the server while it runs (as jobs on other nodes do), and the sync, the
writer of record, finds every run already there.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest

pytestmark = pytest.mark.workflow


def _server_runs(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=study["uri"])
    experiment = client.get_experiment_by_name(study["experiment"])
    assert experiment is not None, f"no experiment {study['experiment']!r} on {study['uri']}"
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def _records(study) -> list[dict]:
    runs = study["workdir"] / "results" / "runs"
    assert not list((runs / "failed").glob("*.json")), "a job failed"
    return [json.loads(path.read_text()) for path in sorted(runs.glob("*/*.json"))]


def test_every_job_is_one_finished_run_on_the_server(server_study):
    client, runs = _server_runs(server_study)
    records = _records(server_study)
    rules = Counter(record["rule"] for record in records)
    assert rules["corpus"] == 1 and rules["embed"] == 1 and rules["metric"] == 1 and rules["finetune"] == 1
    assert len(runs) == len(records)
    assert {run.info.status for run in runs} == {"FINISHED"}
    job_keys = [run.data.tags["tokenuni.job_key"] for run in runs]
    assert len(set(job_keys)) == len(job_keys) and set(job_keys) == {record["job_key"] for record in records}
    # the jobs logged live (each record names its server run), so the sync imported nothing
    by_id = {run.info.run_id: run for run in runs}
    for record in records:
        live = by_id[record["tags"]["tokenuni.live_run_id"]]
        assert live.data.tags["tokenuni.record_id"] == record["record_id"]
        assert live.info.run_name == record["job_key"]
    sync = json.loads((server_study["workdir"] / "results" / "mlflow" / "sync.json").read_text())
    assert sync["tracking_uri"] == server_study["uri"]
    assert sync["imported"] == 0 and sync["skipped"] == len(records)


def test_server_runs_hold_metrics_curves_and_artifacts(server_study, tmp_path):
    client, runs = _server_runs(server_study)
    by_rule = {}
    for run in runs:
        by_rule.setdefault(run.data.tags["tokenuni.rule"], []).append(run)
    metric = by_rule["metric"][0]
    history = client.get_metric_history(metric.info.run_id, "token_uniformity")
    assert sorted(m.step for m in history) == list(range(7))  # one value per layer
    finetune = by_rule["finetune"][0]
    curve = client.get_metric_history(finetune.info.run_id, "train/loss")
    assert len(curve) >= 2 and [m.step for m in curve] == sorted(m.step for m in curve)
    figure = by_rule["figure_by_layer"][0]
    assert figure.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    names = [a.path for a in client.list_artifacts(figure.info.run_id, "figures")]
    png = next(name for name in names if name.endswith(".png"))
    local = client.download_artifacts(figure.info.run_id, png, str(tmp_path))
    assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
