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

What the MLflow UI opens on (:func:`headline_metrics`, :func:`stage_of`, :func:`experiment_tags`):

* every run also logs its headline values as run-level metrics with stable names, derived from what
  the job logged when it finishes (``avg_cosine_last_layer``, ``isoscore_last_layer``,
  ``singular_value_skewness_last_layer``, …; ``sts_spearman``: the mean Spearman × 100 over the job's
  STS datasets; ``dev_main``: a fine-tuning run's GLUE main metric on dev), so the runs table can show
  them as columns;
* every run carries the tag ``tokenuni.stage`` (data, geometry, sts, finetune, figures), which the
  runs table's "Group by" folds the study by (tags, not nested runs: a parent run would have to exist
  before the first job, and with the single writer the jobs' runs are created after the fact);
* the study's experiment carries ``mlflow.experimentKind = custom_model_development`` (MLflow 3 versions
  that pick the experiment page's default view from it open the runs table), a description, and a
  shared view of the runs table (``mlflow.sharedViewState.tokenuni``: the runs with headline values, tag
  ``tokenuni.headline``, with the headline columns, grouped by stage), which :func:`runs_view_url` links to.

Killed jobs and interrupted syncs (``kill -9``, the OOM killer, a lost node, Ctrl-C):

* A job that raises writes a FAILED record to ``runs/failed/`` (KILLED on KeyboardInterrupt). A job
  killed by a signal cannot write anything at its end, so every job writes a *started marker*
  ``runs/started/<job>.<record_id>.json`` when it begins (its record so far, plus host, pid and the
  process's start time) and deletes it after its final record is written. The sync
  (:func:`failed_records`) turns each marker whose attempt is over — its process is gone from this
  host, or (another host) a later attempt of the same job has a record — into a KILLED record in
  ``runs/failed/``, so the killed attempt becomes a KILLED run and is never left RUNNING.
* A live run (MLflow server) left RUNNING by a killed job keeps the metrics it streamed and is closed
  as KILLED by the next sync (its record id is the marker's).
* A run left RUNNING by an interrupted sync is deleted (with its local artifacts) and imported again.
* Syncs to one store are serialised by a file lock (:func:`_sync_lock`), so two syncs started at once
  neither duplicate nor lose a run.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from collections.abc import Iterable

from tokenuni.config import digest
from tokenuni.errors import TokenuniError

log = logging.getLogger(__name__)

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


@functools.cache
def headline_last_layer() -> dict[str, str]:
    """Per-layer keys (logged with step = layer, ``<row>[.<variant>]``) whose last layer is a headline run metric
    ``<row>_last_layer``: the row catalogue's view ``last_layer_run_metrics`` in each row's headline variant.
    (Read on first use: the catalogue imports the metrics package, which a job that logs no rows never needs.)"""
    from tokenuni.metrics.rows import view

    return {(f"{r.name}.{r.headline_variant}" if r.headline_variant else r.name): f"{r.name}_last_layer"
            for r in view("last_layer_run_metrics")}


def is_headline(key: str) -> bool:
    """Whether a run-level metric name is a headline one (the run then carries ``tokenuni.headline = true``)."""
    return key in ("sts_spearman", "dev_main") or key in headline_last_layer().values()


#: the run-level headline metrics the study's shared runs view shows as columns, in this order
HEADLINE_COLUMNS = ["avg_cosine_last_layer", "isoscore_last_layer", "singular_value_skewness_last_layer",
                    "token_uniformity_last_layer", "sts_spearman", "dev_main"]
#: rule -> stage (the ``tokenuni.stage`` tag); figure rules are "figures", any other rule is its own stage
STAGES = {"corpus": "data", "embed": "geometry", "embed_without_dump": "geometry", "stats": "geometry",
          "metric": "geometry", "metrics_table": "geometry",
          "projection": "geometry", "measure": "geometry", "sentence_embed": "sts", "sts": "sts", "sts_table": "sts",
          "finetune": "finetune", "finetune_table": "finetune"}
#: the key of the shared runs-table view in the experiment's tags (``mlflow.sharedViewState.<key>``)
RUNS_VIEW_KEY = "tokenuni"


def stage_of(rule: str) -> str:
    """The study stage a rule belongs to (data, geometry, sts, finetune, figures), for the UI's "Group by"."""
    if rule in STAGES:
        return STAGES[rule]
    return "figures" if rule.startswith(("figure", "projection_figure")) else rule


def headline_metrics(rule: str, wildcards: dict, metrics: list[dict]) -> dict[str, float]:
    """The run-level headline metrics a job's logged ``metrics`` (record entries) imply, under stable names.

    * ``<row>_last_layer`` (:func:`headline_last_layer`): the value at the largest step of a per-layer key,
      also under a fine-tuning run's ``geometry/`` prefix (its fine-tuned model's dev-set geometry);
    * ``sts_spearman``: the mean over the job's STS datasets of Spearman × 100 (``spearman.<dataset>``; for
      STS12–16 the mean over subsets), the "mean" column of ``tables/sts_summary.md``;
    * ``dev_main``: a fine-tuning run's final dev value of its task's GLUE main metric (``final/<metric>``).

    Keys the job logged itself are not derived again.
    """
    last: dict[str, tuple[int, float]] = {}
    for entry in metrics:
        key = entry["key"].removeprefix("geometry/")
        if key in headline_last_layer() and (key not in last or entry["step"] >= last[key][0]):
            last[key] = (entry["step"], entry["value"])
    out = {headline_last_layer()[key]: value for key, (_, value) in last.items()}
    spearman: dict[str, float] = {}
    for entry in metrics:
        parts = entry["key"].split(".")
        if parts[0] == "spearman" and len(parts) == 2:
            spearman.setdefault(parts[1], entry["value"])
    for entry in metrics:  # a dataset of several subsets: the mean over subsets, as the tokenUni table
        parts = entry["key"].split(".")
        if parts[0] == "spearman" and len(parts) == 3 and parts[2] == "mean_over_subsets":
            spearman[parts[1]] = entry["value"]
    if spearman:
        out["sts_spearman"] = sum(spearman.values()) / len(spearman)
    if rule == "finetune" and wildcards.get("task"):
        from tokenuni.glue import GLUE_TASKS

        main = (GLUE_TASKS.get(wildcards["task"]) or {}).get("main_metric")
        finals = [entry for entry in metrics if entry["key"] == f"final/{main}"]
        if finals:
            out["dev_main"] = max(finals, key=lambda entry: entry["step"])["value"]
    logged = {entry["key"] for entry in metrics}
    return {key: float(value) for key, value in out.items() if key not in logged}


def runs_view(columns: list[str] = HEADLINE_COLUMNS) -> dict:
    """The runs-table view the study's experiment shares: the runs with headline values (tag
    ``tokenuni.headline``), the headline metrics as columns, grouped and sorted by stage (the UI loads 100 runs
    at first: a study's figure and data runs would push results off the first page, and sorted by stage every
    stage's columns are on it).

    MLflow's UI keeps a view as JSON in the experiment tag ``mlflow.sharedViewState.<key>`` and opens it from
    ``?viewStateShareKey=<key>`` (the state its "share" button stores; checked with MLflow 3.17). An MLflow
    that reads it differently shows its default runs table instead.
    """
    return {"selectedColumns": [f"metrics.`{name}`" for name in columns],
            "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag",
                                                                         "groupByData": "tokenuni.stage"}]},
            "groupsExpanded": {}, "searchFilter": "tags.`tokenuni.headline` = 'true'",
            "orderByKey": "tags.`tokenuni.stage`", "orderByAsc": True}


def runs_view_url(ui: str, experiment_id: str) -> str:
    """The address of the study's runs table with the headline columns, grouped by stage, in the MLflow UI at
    ``ui`` (``http://127.0.0.1:5000``). ``workflowType=machine_learning``: MLflow 3.17 opens experiments on
    its GenAI overview unless the UI's "Model training" switch (or this parameter) says otherwise."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={RUNS_VIEW_KEY}")


def experiment_tags(experiment_id: str) -> dict[str, str]:
    """The tags that make the UI open the study's experiment on its results (see the module docstring)."""
    link = runs_view_url("", experiment_id).lstrip("/")
    return {"mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps(runs_view()),
            "mlflow.note.content": f"tokenuni study. Results: [the runs table with the headline metrics, grouped by "
                                   f"stage]({link}) (columns {', '.join(HEADLINE_COLUMNS)}; group by the tag "
                                   "tokenuni.stage)."}


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
        self._live_call("finish", lambda: _complete_run(client, run_id, self.record, pending))
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
                                              for chunk in _batched(metrics, 1000)])

    def __enter__(self) -> JobRun:
        self._mark_started()
        if self._live_uri:
            def start():
                from mlflow.tracking import MlflowClient

                # a down server must cost seconds, not MLflow's default minutes of retries
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
                os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
                client = MlflowClient(tracking_uri=self._live_uri)
                experiment_id = _get_experiment(client, self._live_experiment or "tokenuni", None)
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


def log_tidy_metrics(run: JobRun, table) -> None:
    """Log a tidy metrics table's scalar rows as ``<metric>[.<variant>]`` with ``step = layer`` (and the spread
    of a sampled value as ``<key>.spread``), as the workflow's metric jobs do."""
    import pandas as pd

    for row in table[table["component"].isna()].itertuples():
        key = row.metric + (f".{row.variant}" if row.variant else "")
        run.log_metric(key, row.value, step=row.layer)
        if pd.notna(row.spread):
            run.log_metric(f"{key}.spread", row.spread, step=row.layer)


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


# ---------------------------------------------------------------------------------------------
# the single writer
# ---------------------------------------------------------------------------------------------
def default_tracking_uri(results: str | Path) -> str:
    return "sqlite:///" + str((Path(results) / "mlflow.db").resolve())


def resolve_tracking_uri(configured: str | None, results: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` > config ``mlflow.tracking_uri`` > the embedded SQLite store under results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_tracking_uri(results)


def sqlite_store(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI (the embedded store), else None."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    return None


def store_problem(path: str | Path) -> str | None:
    """Why the SQLite file at ``path`` cannot be read (``PRAGMA quick_check``, read-only), or None when it reads
    (or does not exist, or is empty: SQLite makes an empty file a new database). A store locked by a writer
    counts as readable."""
    import sqlite3

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
        try:
            result = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
        finally:
            connection.close()
    except sqlite3.OperationalError as error:  # locked, busy, no permission: not a broken file
        return None if any(word in str(error) for word in ("locked", "busy", "unable to open")) else str(error)
    except sqlite3.DatabaseError as error:  # "file is not a database", "database disk image is malformed"
        return str(error)
    if result != ["ok"]:
        return "; ".join(map(str, result[:3]))
    return None


def heal_store(tracking_uri: str, runs_dir: str | Path | None = None) -> Path | None:
    """Move an unreadable embedded SQLite store aside (``<file>.unreadable-<timestamp>``, with its journal) so
    that the sync rebuilds it from the run records; say so in one paragraph. Returns the moved file, or None
    when the store is fine, absent or not a SQLite file."""
    path = sqlite_store(tracking_uri)
    problem = store_problem(path) if path is not None else None
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    counter = 1
    while aside.exists():
        counter += 1
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{counter}")
    os.replace(path, aside)
    for suffix in ("-journal", "-wal", "-shm"):  # a hot journal must not be replayed into the new store
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    _forget_store(tracking_uri)
    runs = f" under {runs_dir}" if runs_dir else ""
    log.warning("The MLflow store %s is not a readable SQLite database (%s). It was moved aside to %s, where it is "
                "kept for inspection (delete it when you no longer need it), and the store is rebuilt from the "
                "jobs' run records%s, which are the source of truth: every job's run is imported again, with new "
                "MLflow run ids. Results, tables and figures are untouched; only edits made in the MLflow UI "
                "(notes, tags) stay in the moved file.", path, problem, aside, runs)
    return aside


def _forget_store(tracking_uri: str) -> None:
    """Drop MLflow's per-process cache of the store and its SQLAlchemy engine for ``tracking_uri`` (they keep the
    moved file open), so that this process opens the new file. Best effort: private MLflow internals."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        engine = SqlAlchemyStore._engine_map.pop(tracking_uri, None)
        if engine is not None:
            engine.dispose()
    except Exception:  # another MLflow version: a new process (the CLI's sync) never had a cache
        log.debug("could not clear MLflow's store cache", exc_info=True)


def _batched(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _get_experiment(client, name: str, artifact_location: str | None) -> str:
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


def _complete_run(client, run_id: str, record: dict, metrics: list[dict]) -> None:
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
    _complete_run(client, run.info.run_id, record, metrics)
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
        if run is not None and run.data.tags.get("tokenuni.live") == "true" and not record["metrics"]:
            # a live run of a killed job: keep what it streamed, close it with the KILLED record
            _complete_run(client, run.info.run_id, record, [])
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
