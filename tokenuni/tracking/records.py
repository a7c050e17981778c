"""Run records: what a job writes about its run (:class:`JobRun`), the started markers and FAILED/KILLED records
of jobs that did not finish, and the helpers they share (digests, redaction, versions)."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import time
import uuid
from functools import lru_cache
from pathlib import Path
from collections.abc import Iterable

from tokenuni.config import digest
from tokenuni.errors import TokenuniError
from tokenuni.tracking.client import batched, complete_run, get_experiment
from tokenuni.tracking.views import headline_metrics, is_headline, stage_of

log = logging.getLogger("tokenuni.tracking")


class TrackingError(TokenuniError, ValueError):
    """A run record or MLflow store the sync cannot use; the message says what to do."""


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


#: a param/tag key whose last part names a secret (``hub.token``, ``hf_token``, ``api_key``; not ``special_tokens``)
SECRET_KEY = re.compile(r"(?i)(^|[._-])(token|secret|password|passwd|api[_-]?key|access[_-]?key|private[_-]?key"
                        r"|credentials?|auth)$")


#: an environment variable holding a secret (``HF_TOKEN``, ``MLFLOW_TRACKING_PASSWORD``; not ``TOKENUNI_DATA``)
SECRET_ENV = re.compile(r"(?i)(^|_)(token|secret|password|passwd|api_?key|access_?key|credentials?)(_|$)")


URL_PASSWORD = re.compile(r"(://[^/:@\s]+:)[^@/\s]+@")


REDACTED = "***"


def scrub(text: str) -> str:
    """``text`` with the values of secret environment variables and URL passwords replaced by ``***``."""
    for name, value in os.environ.items():
        if len(value) >= 6 and SECRET_ENV.search(name) and value in text:
            text = text.replace(value, REDACTED)
    return URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)


def redact(flat: dict) -> dict[str, str]:
    """Params or tags safe to store: values of secret-named keys become ``***``, others are :func:`scrub`-bed.

    Tokens, passwords and API keys never reach a run record or MLflow.
    """
    return {key: REDACTED if SECRET_KEY.search(str(key)) and str(value) not in ("", "None", "null")
            else scrub(str(value)) for key, value in flat.items()}


def package_versions() -> dict[str, str]:
    from tokenuni.files import library_versions

    return library_versions()


class JobRun:
    """Collects one job's MLflow run and writes its run record when the job ends.

    ``with JobRun(record, rule="embed", wildcards={...}, params=spec) as run: ...`` — on success the
    record goes to ``record`` (atomically); on an exception a FAILED record goes to
    ``<record's runs folder>/failed/`` so the failure is still visible in MLflow after the sync, and the
    exception propagates. While it runs, ``<runs folder>/started/`` holds its marker
    (:attr:`started_marker`), from which the sync records a KILLED run if the process dies.
    """

    def __init__(self, record_path: str | Path, *, rule: str, wildcards: dict | None = None,
                 params: dict | None = None, live_tracking_uri: str | None = None, experiment: str | None = None):
        self.record_path = Path(record_path)
        self.rule = rule
        self.wildcards = {k: str(v) for k, v in (wildcards or {}).items()}
        self.params = params or {}
        self.job_key = "/".join([rule, *self.wildcards.values()])
        self.runs_dir = self.record_path.parent.parent  # runs/<rule>/<job>.json -> runs/
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
                "tokenuni.stage": stage_of(rule),
                "tokenuni.job_key": self.job_key,
                "tokenuni.config_digest": digest(self.params),
                "mlflow.source.git.commit": commit,
                "tokenuni.git_dirty": str(dirty).lower(),
                "tokenuni.host": socket.gethostname(),
                **{f"tokenuni.wildcard.{k}": v for k, v in self.wildcards.items()},
                **{f"tokenuni.version.{k}": v for k, v in package_versions().items()},
            },
            "params": redact(flatten(self.params)),
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
        self.record["tags"].update(redact({k: str(v) for k, v in tags.items()}))

    def log_params(self, params: dict) -> None:
        self.record["params"].update(redact(flatten(params)))

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
        client, run_id = self._live
        pending, self._pending = self._pending, []
        self._live_call("finish", lambda: complete_run(client, run_id, self.record, pending))
        self.record["tags"]["tokenuni.live_run_id"] = run_id

    def _write(self, path: Path, extra: dict | None = None) -> None:
        from tokenuni.files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**self.record, **(extra or {})}, indent=1, sort_keys=True))

    @property
    def started_marker(self) -> Path:
        """``runs/started/<job>.<record_id>.json``: present while the job runs (see the module docstring)."""
        return self.runs_dir / "started" / f"{_job_file(self.job_key)}.{self.record['record_id']}.json"

    def _mark_started(self) -> None:
        from tokenuni.files import process_start

        process = {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}
        try:
            self._write(self.started_marker, {"process": process})
        except OSError:  # the job still runs; only a kill of it would go unrecorded
            log.exception("could not write the started marker %s", self.started_marker)

    def _unmark_started(self) -> None:
        try:
            self.started_marker.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove the started marker %s", self.started_marker)

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
                                              for chunk in batched(metrics, 1000)])

    def __enter__(self) -> JobRun:
        self._mark_started()
        if self._live_uri:
            def start():
                from mlflow.tracking import MlflowClient

                # a down server must cost seconds, not MLflow's default minutes of retries
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                client = MlflowClient(tracking_uri=self._live_uri)
                experiment_id = get_experiment(client, self._live_experiment or "tokenuni", None)
                tags = {**self.record["tags"], "tokenuni.record_id": self.record["record_id"],
                        "mlflow.runName": self.job_key, "tokenuni.live": "true"}
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
            self.log_metrics(headline_metrics(self.rule, self.wildcards, self.record["metrics"]))
            if any(is_headline(entry["key"]) for entry in self.record["metrics"]):
                self.set_tags({"tokenuni.headline": "true"})
            self._finish_live()
            self._write(self.record_path)
            self._unmark_started()
            return
        self.record["status"] = "KILLED" if exc_type is KeyboardInterrupt else "FAILED"
        self.record["tags"]["tokenuni.error"] = scrub(f"{exc_type.__name__}: {exc}")[:5000]
        self._finish_live()
        failed = self.runs_dir / "failed" / f"{_job_file(self.job_key)}.{self.record['record_id']}.json"
        try:
            self._write(failed)
            self._unmark_started()
        except OSError:  # a full disk must not hide the original error
            log.exception("could not write the failed run record %s", failed)


def record(result, run: JobRun | None = None, *, record_path: str | Path | None = None, rule: str = "",
           wildcards: dict | None = None, params: dict | None = None) -> JobRun | None:
    """The one way a :class:`tokenuni.results.StageResult` becomes an MLflow run and a run record.

    Inside a job (``run``: the :class:`JobRun` the job opened before its work, so that a failure or a kill is
    recorded too): the result's params, tags, metrics, steps, inputs and artifacts go into that run. From a
    notebook (``record_path``, ``rule``, ``wildcards``, ``params``: what the stage was asked): a run is opened and
    closed around the result and its record written, for ``tokenuni sync`` to import. Without either, nothing is
    recorded (a stage called for its value alone).
    """
    if run is None:
        if record_path is None:
            return None
        with JobRun(record_path, rule=rule, wildcards=wildcards, params=params) as opened:
            record(result, opened)
        return opened
    if result.params:
        run.log_params(result.params)
    if result.tags:
        run.set_tags(result.tags)
    for path, context in result.inputs:
        run.log_input(path, context=context)
    run.log_metrics(result.metrics)
    for key, value, step in result.steps:
        run.log_metric(key, value, step=step)
    for path, folder in result.artifacts:
        run.log_artifact(path, folder)
    return run


def _job_file(job_key: str) -> str:
    return job_key.replace("/", "__")


def _attempt_over(marker: dict, later_attempts: dict[str, int]) -> bool:
    """Whether the job attempt of a started marker has ended (see :func:`failed_records`)."""
    from tokenuni.files import process_alive

    process = marker.get("process") or {}
    if process.get("host") == socket.gethostname() and process.get("pid"):
        return not process_alive(int(process["pid"]), process.get("start"))
    # another host (cluster): over once a later attempt of the same job has left a record
    return later_attempts.get(marker["job_key"], -1) > marker["start_time"]


def failed_records(failed_dir: str | Path, records: Iterable[str | Path] = ()) -> list[Path]:
    """The records of ``failed_dir`` (``runs/failed``), after adding one KILLED record per killed attempt.

    Each started marker in the sibling ``runs/started`` whose attempt is over without a record (its
    process is gone from this host, or a later attempt of its job has a record in ``records`` or
    ``failed_dir``) becomes a KILLED record, written atomically, and the marker is deleted. A marker of
    an attempt that did write its record (killed between the two) is just deleted. Markers of jobs still
    running are left alone.
    """
    failed_dir = Path(failed_dir)
    started = failed_dir.parent / "started"
    markers = sorted(started.glob("*.json")) if started.is_dir() else []
    if markers:
        from tokenuni.files import atomic_path

        finals = [read_record(path) for path in [*map(Path, records), *failed_dir.glob("*.json")] if path.exists()]
        recorded = {record["record_id"] for record in finals}
        later: dict[str, int] = {}
        for record in finals:
            later[record["job_key"]] = max(later.get(record["job_key"], -1), record["start_time"] or -1)
        for path in markers:
            try:
                marker = read_record(path)
            except (OSError, ValueError):  # unreadable (cannot be half-written: atomic); leave it
                log.warning("unreadable started marker %s left alone", path)
                continue
            if marker["record_id"] not in recorded:
                if not _attempt_over(marker, later):
                    continue
                process = marker.pop("process", {})
                marker.update(status="KILLED", end_time=int(path.stat().st_mtime * 1000))
                marker["tags"]["tokenuni.error"] = (
                    f"killed: the job's process ({process.get('host')}, pid {process.get('pid')}) ended without "
                    "finishing its run (SIGKILL, out of memory, lost node or a killed workflow)")
                with atomic_path(failed_dir / path.name) as tmp:
                    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True))
                log.warning("job %s (record %s) was killed; recorded as a KILLED run", marker["job_key"],
                            marker["record_id"])
            path.unlink(missing_ok=True)
    return sorted(failed_dir.glob("*.json")) if failed_dir.is_dir() else []


def read_record(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if "record_id" not in record or "job_key" not in record:
        raise TrackingError(f"{path} is not a tokenuni run record (it lacks record_id / job_key); pass only the "
                            "JSON files a job wrote under results/runs/")
    for part in ("params", "tags"):  # a record written by hand or by an older version: no secrets into MLflow
        record[part] = redact(record.get(part) or {})
    return record
