"""The one module that talks to MLflow.

Jobs never write to the MLflow store directly. Each job records its run in a small JSON *run
record* (a declared output of its rule) through :class:`JobRun`; one local job,
:func:`sync_records`, then imports the records into the store. One writer means parallel jobs can
never lose a run or race on SQLite, and the store can always be rebuilt from ``results/runs``.
The same sync works against an ``mlflow server`` (tracking URI ``http://...``), which is what
clusters use.

Run record (JSON)::

    {"record_id", "job_key", "rule", "wildcards", "status", "start_time", "end_time",
     "tags", "params", "metrics": [{"key", "value", "step", "timestamp"}],
     "artifacts": [{"path", "artifact_path"}], "inputs": [{"name", "path", "size", "sha256", "context"}]}

Tags on every run: ``tokenuni.rule``, ``tokenuni.wildcard.<name>``, ``tokenuni.job_key``,
``tokenuni.config_digest`` (digest of the config subtree the job depends on),
``mlflow.source.git.commit``, ``tokenuni.version.<package>``, ``tokenuni.record_id``.
Per-layer metrics are logged with ``step = layer``. Dumps are recorded as dataset inputs
(path, size, sha256), never copied; small outputs (tables, figures) are artifacts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from tokenuni.config import digest

log = logging.getLogger(__name__)

#: files above this size are digested by their first and last 64 MiB plus their size (marked "sampled:")
FULL_DIGEST_LIMIT = 2 << 30
MLFLOW_PARAM_LIMIT = 6000


def _now_ms() -> int:
    return int(time.time() * 1000)


@lru_cache(maxsize=1)
def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the working directory's repository, or ("unknown", False)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, timeout=10).stdout.strip())
        return commit, dirty
    except Exception:
        return "unknown", False


def file_digest(path: str | Path) -> str:
    """sha256 of a file (streamed); for files over FULL_DIGEST_LIMIT, of its size, head and tail."""
    path = Path(path)
    size = path.stat().st_size
    sha = hashlib.sha256()
    chunk = 1 << 24
    with open(path, "rb") as handle:
        if size <= FULL_DIGEST_LIMIT:
            while block := handle.read(chunk):
                sha.update(block)
            return sha.hexdigest()
        sha.update(str(size).encode())
        sha.update(handle.read(64 << 20))
        handle.seek(-(64 << 20), os.SEEK_END)
        sha.update(handle.read())
        return "sampled:" + sha.hexdigest()


def flatten(tree, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {"a.b.c": "value"} with JSON for lists (MLflow params)."""
    out: dict[str, str] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        text = tree if isinstance(tree, str) else json.dumps(tree, default=str)
        out[prefix.rstrip(".")] = text[:MLFLOW_PARAM_LIMIT]
    return out


def package_versions() -> dict[str, str]:
    from tokenuni.embed import library_versions

    return library_versions()


class JobRun:
    """Collects one job's MLflow run and writes its run record when the job ends.

    ``with JobRun(record, rule="embed", wildcards={...}, params=spec) as run: ...`` — on success the
    record goes to ``record`` (atomically); on an exception a FAILED record goes to
    ``<record's runs folder>/failed/`` so the failure is still visible in MLflow after the sync, and the
    exception propagates.
    """

    def __init__(self, record_path: str | Path, *, rule: str, wildcards: dict | None = None,
                 params: dict | None = None, live_tracking_uri: str | None = None, experiment: str | None = None):
        self.record_path = Path(record_path)
        self.rule = rule
        self.wildcards = {k: str(v) for k, v in (wildcards or {}).items()}
        self.params = params or {}
        self.job_key = "/".join([rule, *self.wildcards.values()])
        commit, dirty = git_commit()
        self.record = {
            "record_id": uuid.uuid4().hex,
            "job_key": self.job_key,
            "rule": rule,
            "wildcards": self.wildcards,
            "status": "RUNNING",
            "start_time": _now_ms(),
            "end_time": None,
            "tags": {
                "tokenuni.rule": rule,
                "tokenuni.job_key": self.job_key,
                "tokenuni.config_digest": digest(self.params),
                "mlflow.source.git.commit": commit,
                "tokenuni.git_dirty": str(dirty).lower(),
                "tokenuni.host": socket.gethostname(),
                **{f"tokenuni.wildcard.{k}": v for k, v in self.wildcards.items()},
                **{f"tokenuni.version.{k}": v for k, v in package_versions().items()},
            },
            "params": flatten(self.params),
            "metrics": [],
            "artifacts": [],
            "inputs": [],
        }
        if os.environ.get("SLURM_JOB_ID"):
            self.record["tags"]["tokenuni.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
        # live logging: only to an MLflow *server* (safe for concurrent writers); the record stays the truth
        self._live = None
        self._live_uri = live_tracking_uri if live_tracking_uri and live_tracking_uri.startswith("http") else None
        self._live_experiment = experiment
        self._pending: list = []
        self._last_flush = 0.0

    # -- logging -------------------------------------------------------------------------------
    def set_tags(self, tags: dict) -> None:
        self.record["tags"].update({k: str(v) for k, v in tags.items()})

    def log_params(self, params: dict) -> None:
        self.record["params"].update(flatten(params))

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        value = float(value)
        if math.isnan(value):
            log.warning("metric %s at step %s is NaN; recorded as NaN", key, step)
        entry = {"key": key, "value": value, "step": int(step), "timestamp": _now_ms()}
        self.record["metrics"].append(entry)
        if self._live is not None:
            self._pending.append(entry)
            if len(self._pending) >= 200 or time.monotonic() - self._last_flush > 10:
                self._flush()

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.record["artifacts"].append({"path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_input(self, path: str | Path, context: str, name: str | None = None) -> None:
        """Record a (possibly large) file by path, size and digest; it is not copied."""
        path = Path(path)
        self.record["inputs"].append({
            "name": name or path.name, "path": str(path.resolve()), "size": path.stat().st_size,
            "sha256": file_digest(path), "context": context,
        })

    # -- lifecycle -----------------------------------------------------------------------------
    def _finish_live(self) -> None:
        """Complete the live run: remaining metrics, params, inputs, artifacts, status."""
        if self._live is None:
            return
        self._flush()
        if self._live is None:
            return
        client, run_id = self._live
        self._live_call("finish", lambda: _complete_run(client, run_id, self.record, metrics=False))
        self.record["tags"]["tokenuni.live_run_id"] = run_id

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.record, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def _live_call(self, action: str, function) -> None:
        """Run a live-logging call; on any failure stop live logging (the sync imports the record later)."""
        try:
            function()
        except Exception as error:  # a down server must never fail the job
            log.warning("live MLflow logging stopped (%s failed: %s); the run will be imported by the sync",
                        action, error)
            self._live = None

    def _flush(self) -> None:
        from mlflow.entities import Metric

        if self._live is None or not self._pending:
            return
        client, run_id = self._live
        metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in self._pending]
        self._pending = []
        self._last_flush = time.monotonic()
        self._live_call("log_batch", lambda: [client.log_batch(run_id, metrics=chunk)
                                              for chunk in _batched(metrics, 1000)])

    def __enter__(self) -> "JobRun":
        if self._live_uri:
            def start():
                from mlflow.tracking import MlflowClient

                # a down server must cost seconds, not MLflow's default minutes of retries
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                client = MlflowClient(tracking_uri=self._live_uri)
                experiment_id = _get_experiment(client, self._live_experiment or "tokenuni", None)
                tags = {**self.record["tags"], "tokenuni.record_id": self.record["record_id"],
                        "mlflow.runName": self.job_key}
                run = client.create_run(experiment_id, start_time=self.record["start_time"], tags=tags,
                                        run_name=self.job_key)
                self._live = (client, run.info.run_id)
                self._last_flush = time.monotonic()
            self._live_call("create_run", start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.record["end_time"] = _now_ms()
        if exc_type is None:
            self.record["status"] = "FINISHED"
            self._finish_live()
            self._write(self.record_path)
            return
        self.record["status"] = "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        self.record["tags"]["tokenuni.error"] = f"{exc_type.__name__}: {exc}"[:5000]
        self._finish_live()
        failed = self.record_path.parent.parent / "failed" / f"{self.job_key.replace('/', '__')}.{self.record['record_id']}.json"
        try:
            self._write(failed)
        except OSError:  # a full disk must not hide the original error
            log.exception("could not write the failed run record %s", failed)


def read_record(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if "record_id" not in record or "job_key" not in record:
        raise ValueError(f"{path} is not a tokenuni run record")
    return record


# ---------------------------------------------------------------------------------------------
# the single writer
# ---------------------------------------------------------------------------------------------
def default_tracking_uri(results: str | Path) -> str:
    return "sqlite:///" + str((Path(results) / "mlflow.db").resolve())


def resolve_tracking_uri(configured: str | None, results: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` > config ``mlflow.tracking_uri`` > the embedded SQLite store under results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_tracking_uri(results)


def _batched(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _get_experiment(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another sync
        return client.get_experiment_by_name(name).experiment_id


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


def _complete_run(client, run_id: str, record: dict, metrics: bool = True) -> None:
    """Log a record's params, (metrics), inputs and artifacts to an existing run and end it."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    params = [Param(k, v) for k, v in record["params"].items()]
    for chunk in _batched(params, 100):
        client.log_batch(run_id, params=chunk)
    if metrics:
        entries = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in record["metrics"]]
        for chunk in _batched(entries, 1000):
            client.log_batch(run_id, metrics=chunk)
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


def _import_record(client, experiment_id: str, record: dict) -> str:
    tags = {**record["tags"], "tokenuni.record_id": record["record_id"], "mlflow.runName": record["job_key"]}
    run = client.create_run(experiment_id, start_time=record["start_time"], tags=tags, run_name=record["job_key"])
    _complete_run(client, run.info.run_id, record)
    return run.info.run_id


def sync_records(record_paths: Iterable[str | Path], *, tracking_uri: str, experiment: str,
                 artifact_location: str | None = None) -> dict:
    """Import run records into MLflow; idempotent (a record already imported is skipped).

    A run left unfinished by an interrupted sync is deleted and imported again, so the store never
    holds two runs of one record. Returns ``{"runs": {record_id: run_id}, "imported": n, "skipped": n}``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if artifact_location and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    experiment_id = _get_experiment(client, experiment, artifact_location)
    existing = _existing_runs(client, experiment_id)
    mapping, imported, skipped = {}, 0, 0
    for path in sorted(map(str, record_paths)):
        record = read_record(path)
        run = existing.get(record["record_id"])
        if run is not None and run.info.status != "RUNNING":
            mapping[record["record_id"]] = run.info.run_id
            skipped += 1
            continue
        if run is not None:
            client.delete_run(run.info.run_id)
        mapping[record["record_id"]] = _import_record(client, experiment_id, record)
        imported += 1
    log.info("MLflow sync to %s (experiment %s): %d imported, %d already there", tracking_uri, experiment,
             imported, skipped)
    return {"tracking_uri": tracking_uri, "experiment": experiment, "experiment_id": experiment_id,
            "runs": mapping, "imported": imported, "skipped": skipped}
