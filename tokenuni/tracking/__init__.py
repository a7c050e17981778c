"""The one module that talks to MLflow.

Jobs never write to the MLflow store directly. A stage returns its work as a
:class:`tokenuni.results.StageResult`, and :func:`record` turns it into a small JSON *run record* (a declared output
of its rule) through :class:`JobRun`, the job's run, opened before the work so that a failure is recorded too; one local job,
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

# the package's parts: records (what a job writes about its run), views (what the MLflow UI opens on),
# store (where runs go, and healing a damaged local store), client (MLflow helpers), sync (the single writer)
from tokenuni.tracking.records import (JobRun, TrackingError, failed_records, file_digest, flatten, git_commit,
                                       package_versions, read_record, record, redact, scrub)
from tokenuni.tracking.store import (_forget_store, default_tracking_uri, heal_store, resolve_tracking_uri,
                                     sqlite_store, store_problem)
from tokenuni.tracking.sync import SYNC_PAUSE_ENV, sync_records
from tokenuni.tracking.views import (HEADLINE_COLUMNS, RUNS_VIEW_KEY, STAGES, experiment_tags, headline_last_layer,
                                     headline_metrics, is_headline, runs_view, runs_view_url, stage_of)

__all__ = ["JobRun", "TrackingError", "failed_records", "file_digest", "flatten", "git_commit", "package_versions", "read_record", "record", "redact", "scrub", "_forget_store", "default_tracking_uri", "heal_store",
           "resolve_tracking_uri", "sqlite_store", "store_problem", "SYNC_PAUSE_ENV", "sync_records",
           "HEADLINE_COLUMNS", "RUNS_VIEW_KEY", "STAGES", "experiment_tags", "headline_last_layer", "headline_metrics",
           "is_headline", "runs_view", "runs_view_url", "stage_of"]
