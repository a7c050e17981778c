"""The single writer: :func:`sync_records` imports the run records into the store, serialised by a file lock,
closing killed runs and re-importing interrupted ones."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterable
from tokenuni.tracking.client import complete_run, get_experiment
from tokenuni.tracking.records import TrackingError, read_record
from tokenuni.tracking.store import heal_store, sqlite_store
from tokenuni.tracking.views import headline_metrics, is_headline, stage_of


log = logging.getLogger("tokenuni.tracking")


def _existing_runs(client, experiment_id: str) -> dict[str, object]:
    """record_id -> run for every run of the experiment that came from a record."""
    runs, token = {}, None
    while True:
        page = client.search_runs([experiment_id], max_results=5000, page_token=token)
        for run in page:
            record_id = run.data.tags.get("tokenuni.record_id")
            if record_id:
                runs[record_id] = run
        token = page.token
        if not token:
            return runs


def _import_record(client, experiment_id: str, record: dict, pause: bool = False) -> str:
    # records written before the stage tag and the headline metrics existed get them here (derived from the record)
    tags = {"tokenuni.stage": stage_of(record.get("rule", "")), **record["tags"],
            "tokenuni.record_id": record["record_id"], "mlflow.runName": record["job_key"]}
    derived = (headline_metrics(record.get("rule", ""), record.get("wildcards", {}), record["metrics"])
               if record.get("status") == "FINISHED" else {})
    when = record.get("end_time") or record["start_time"]
    metrics = record["metrics"] + [{"key": k, "value": v, "step": 0, "timestamp": when} for k, v in derived.items()]
    if any(is_headline(entry["key"]) for entry in metrics):
        tags["tokenuni.headline"] = "true"
    run = client.create_run(experiment_id, start_time=record["start_time"], tags=tags, run_name=record["job_key"])
    if pause:  # test hook (SYNC_PAUSE_ENV): stop with this run created and unfinished
        log.warning("%s: pausing the sync in the middle of importing %s (test hook)", SYNC_PAUSE_ENV,
                    record["job_key"])
        time.sleep(3600)
    complete_run(client, run.info.run_id, record, metrics)
    return run.info.run_id


@contextmanager
def _sync_lock(tracking_uri: str):
    """An exclusive lock per store: ``<db>.sync-lock`` beside a SQLite store, else one per URI in the
    temporary folder (syncs on one host). Released by the kernel if the sync is killed."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock (one sync at a time is then the user's job)
        yield
        return
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):] + ".sync-lock")
    else:
        key = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"tokenuni-sync-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _discard_run(client, run) -> None:
    """Delete a run an interrupted sync left unfinished, and its local artifacts (maybe half-copied)."""
    client.delete_run(run.info.run_id)
    uri = run.info.artifact_uri or ""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        shutil.rmtree(unquote(urlparse(uri).path), ignore_errors=True)


#: test hook (tests/test_kill_resume.py only): the sync sleeps in the middle of importing its n-th run
#: (created, not finished), so that a test can kill it while it writes to the store
SYNC_PAUSE_ENV = "TOKENUNI_TEST_SYNC_PAUSE_AFTER"


def sync_records(record_paths: Iterable[str | Path], *, tracking_uri: str, experiment: str,
                 artifact_location: str | None = None) -> dict:
    """Import run records into MLflow; idempotent (a record already imported is skipped).

    A run left unfinished by an interrupted sync is deleted and imported again, so the store never
    holds two runs of one record; a live run left RUNNING by a killed job is closed with its KILLED
    record. Concurrent syncs to one store wait for each other (:func:`_sync_lock`).
    Returns ``{"runs": {record_id: run_id}, "imported": n, "skipped": n}``.
    """
    with _sync_lock(tracking_uri):
        record_paths = list(record_paths)
        runs_dir = Path(os.path.commonpath([str(Path(p).resolve()) for p in record_paths])) if record_paths else None
        heal_store(tracking_uri, runs_dir if runs_dir is None or runs_dir.is_dir() else runs_dir.parent)
        try:
            return _sync_records(record_paths, tracking_uri=tracking_uri, experiment=experiment,
                                 artifact_location=artifact_location)
        except Exception as error:
            store = sqlite_store(tracking_uri)
            if store is None or type(error).__module__.split(".")[0] not in ("sqlalchemy", "mlflow", "sqlite3"):
                raise
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            raise TrackingError(
                f"the MLflow store {store} cannot be written ({type(error).__name__}: {first}). The run records under "
                f"results/runs/ are the source of truth and nothing is lost: move the store aside (mv {store} "
                f"{store}.broken) and run the sync again (snakemake, or tokenuni sync): it rebuilds every run."
            ) from error


def _sync_records(record_paths, *, tracking_uri, experiment, artifact_location) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    pause_after = int(os.environ.get(SYNC_PAUSE_ENV) or 0)
    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    experiment_id = get_experiment(client, experiment, artifact_location)
    existing = _existing_runs(client, experiment_id)
    mapping, imported, skipped = {}, 0, 0
    for path in sorted(map(str, record_paths)):
        record = read_record(path)
        run = existing.get(record["record_id"])
        if run is not None and run.info.status != "RUNNING":
            mapping[record["record_id"]] = run.info.run_id
            skipped += 1
            continue
        if run is not None and run.data.tags.get("tokenuni.live") == "true" and not record["metrics"]:
            # a live run of a killed job: keep what it streamed, close it with the KILLED record
            complete_run(client, run.info.run_id, record, [])
            mapping[record["record_id"]] = run.info.run_id
        else:
            if run is not None:
                _discard_run(client, run)
            mapping[record["record_id"]] = _import_record(client, experiment_id, record,
                                                           pause=imported + 1 == pause_after)
        imported += 1
    log.info("MLflow sync to %s (experiment %s): %d imported, %d already there", tracking_uri, experiment,
             imported, skipped)
    return {"tracking_uri": tracking_uri, "experiment": experiment, "experiment_id": experiment_id,
            "runs": mapping, "imported": imported, "skipped": skipped}
