"""MLflow client helpers shared by live logging (:class:`~tokenuni.tracking.records.JobRun`) and the sync:
the study's experiment with its tags, and completing a run from a record in batched requests."""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from tokenuni.tracking.views import experiment_tags

log = logging.getLogger("tokenuni.tracking")


def batched(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def get_experiment(client, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name`` (created if missing), with the tags that open the UI on its results
    (:func:`experiment_tags`; a description the user wrote in the UI is kept).

    The tags only change how the UI opens, so a failure to set one is a warning, never a reason to stop
    logging: many jobs starting at once against a server with an SQLite store all try to set them, and
    the writes that lose the store's lock fail. The sync at the end of the study sets them again."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except Exception:  # created concurrently by another sync
            pass
        experiment = client.get_experiment_by_name(name)
    tags = experiment.tags or {}
    for key, value in experiment_tags(experiment.experiment_id).items():
        if key not in tags or (tags[key] != value and key != "mlflow.note.content"):
            try:
                client.set_experiment_tag(experiment.experiment_id, key, value)
            except Exception as error:  # noqa: BLE001 - see the docstring
                log.warning("could not set the tag %s of MLflow experiment %r (%s); the sync sets it later",
                            key, name, error)
    return experiment.experiment_id


def complete_run(client, run_id: str, record: dict, metrics: list[dict]) -> None:
    """Log a record's params, the given ``metrics`` (entries of ``record["metrics"]``), its error tag,
    inputs and artifacts to an existing run and end it; params and metrics share requests (MLflow's
    batch limits: 100 params, 1000 entities: 100 + 899 + the tag)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    params = [Param(k, v) for k, v in record["params"].items()]
    entries = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in metrics]
    # the tags a job sets when it ends (a live run was created with those it had when it began)
    tags = [RunTag(key, record["tags"][key]) for key in ("tokenuni.error", "tokenuni.headline") if key in record["tags"]]
    for start in range(max(len(params) // 100, len(entries) // 899) + 1):
        batch_params, batch_metrics = params[start * 100:(start + 1) * 100], entries[start * 899:(start + 1) * 899]
        if batch_params or batch_metrics or tags:
            client.log_batch(run_id, params=batch_params, metrics=batch_metrics, tags=tags)
            tags = []
    if record["inputs"]:
        datasets = [
            DatasetInput(
                Dataset(name=item["name"], digest=item["sha256"][-36:], source_type="local",
                        source=json.dumps({"path": item["path"], "size": item["size"], "sha256": item["sha256"]})),
                tags=[InputTag("mlflow.data.context", item["context"])],
            )
            for item in record["inputs"]
        ]
        client.log_inputs(run_id, datasets=datasets)
    for artifact in record["artifacts"]:
        if Path(artifact["path"]).exists():
            client.log_artifact(run_id, artifact["path"], artifact["artifact_path"])
        else:
            client.log_batch(run_id, tags=[RunTag("tokenuni.missing_artifact", artifact["path"][:5000])])
    client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
