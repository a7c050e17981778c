"""Kill and resume: ``kill -9`` the workflow (and, separately, one job) at several points of a small
default study, rerun, and check that nothing is half-written and MLflow lost nothing.

Kill points, in one working directory, in order:

1. mid-dump — the embed job is writing its Arrow dump (its ``.<name>.arrow.tmp-<pid>`` exists);
2. mid-metrics — a metric job has started (its started marker exists);
3. mid-training — a fine-tuning job's training loop has begun (its progress bar is in its log);
4. one job only — a second fine-tuning job's process is killed, Snakemake keeps running and reports it;
5. mid-MLflow write — the sync has imported some runs (test hook ``TOKENUNI_TEST_SYNC_PAUSE_AFTER``).

After a hard kill of the workflow, the rerun is ``snakemake --unlock`` then ``snakemake --rerun-incomplete``
(Snakemake's lock and incomplete-job markers outlive a SIGKILL); after a killed job, a plain rerun.
The final state must validate: dumps open and their index rows align, every table parses, no
temporary file is left, MLflow holds exactly one FINISHED run per job and every killed attempt as a
KILLED run, none RUNNING.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO
from test_workflow import BIN, mlflow_runs, output, planned_jobs, snakemake, write_config
from tokenuni.config import load_config
from tokenuni.files import process_alive

PAUSE_AFTER = 4  # runs the sync imports before the test hook pauses it


def start(workdir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Snakemake in the background, in its own process group (so that the whole workflow can be killed)."""
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
                   "MLFLOW_TRACKING_URI": "", **(env or {})}
    environment.pop("TOKENUNI_DATA", None)
    log_path = workdir / f"snakemake-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
             "--cores", "2", *args], stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    process.log_path = log_path
    return process


def wait_for(process: subprocess.Popen, condition, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"snakemake ended ({process.returncode}) before {what}:\n"
                        f"{process.log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    kill_workflow(process)
    pytest.fail(f"timed out waiting for {what}")


def kill_workflow(process: subprocess.Popen) -> None:
    """SIGKILL Snakemake and every job it runs (its process group)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.2)  # let the killed jobs' processes disappear


def markers(results: Path, rule: str = "", running: bool = False) -> list[dict]:
    """Started markers (runs/started/): attempts that have begun and not written their record
    (``running``: only those whose process is alive)."""
    found = []
    for path in sorted((results / "runs" / "started").glob(f"{rule}*.json")):
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):  # removed meanwhile (atomic writes: never half-written)
            continue
        if not running or process_alive(marker["process"]["pid"], marker["process"]["start"]):
            found.append(marker)
    return found


def training(results: Path) -> list[dict]:
    """Running fine-tuning attempts whose training loop has begun (its progress bar is in the job's log)."""
    return [marker for marker in markers(results, "finetune__", running=True)
            if log_has(results / "logs" / "finetune" / f"{marker['job_key'].split('/', 1)[1].replace('/', '__')}.log",
                       "finetune sst2")]


def temporaries(results: Path) -> list[str]:
    return sorted(str(p.relative_to(results)) for p in results.rglob(".*tmp*"))


def log_has(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def resume_after_hard_kill(workdir: Path, *args: str) -> subprocess.Popen:
    snakemake(workdir, "--unlock")
    return start(workdir, "--rerun-incomplete", *args)


@pytest.fixture(scope="module")
def killed_study(mirror, tmp_path_factory) -> dict:
    """The small study killed at every point above, then rerun to completion; what was seen on the way."""
    workdir = tmp_path_factory.mktemp("killed-study")
    kept = ("cosine_family", "token_uniformity")
    write_config(workdir, mirror, **{  # one dump, two metrics, one fine-tuning job of 8 steps
        "corpora.stsb-test.max_sentences": 200, "corpora.wikitext.geometry": False,
        **{f"metrics.{name}.enabled": False for name in load_config(REPO / "config" / "config.yaml")["metrics"]
           if name not in kept},
        "sts.enabled": False, "projection.enabled": False,
        "finetune.variants": {"baseline": {}},
        "finetune.max_train_examples": 64, "finetune.max_dev_examples": 16, "finetune.batch_size": 8,
    })
    results = workdir / "results"
    seen: dict = {"killed": {}, "temporaries": {}}

    def after_kill(point: str) -> None:
        before = {record_id for ids in seen["killed"].values() for record_id in ids}
        seen["killed"][point] = [m["record_id"] for m in markers(results) if m["record_id"] not in before]
        seen["temporaries"][point] = temporaries(results)

    # Each phase runs the study up to one rule (--until) so that the kill point comes first; the last
    # phase is a plain run. 1. mid-dump
    process = start(workdir, "--until", "embed")
    seen["mid_dump"] = wait_for(process, lambda: list((results / "dumps").rglob(".*.arrow.tmp-*")),
                                "a dump being written")
    kill_workflow(process)
    after_kill("mid_dump")
    seen["plain_rerun_after_hard_kill"] = output(snakemake(workdir, check=False))  # Snakemake's lock is stale
    # 2. mid-metrics
    process = resume_after_hard_kill(workdir, "--until", "metric")
    wait_for(process, lambda: markers(results, "metric__", running=True), "a metric job")
    kill_workflow(process)  # at once: on an idle machine a metric job of this size ends in about a second
    after_kill("mid_metrics")
    # 3. mid-training
    process = resume_after_hard_kill(workdir, "--until", "finetune")
    wait_for(process, lambda: training(results), "a fine-tuning job training")
    kill_workflow(process)
    after_kill("mid_training")
    # 4. one job killed; Snakemake reports it and stops; a plain rerun recovers
    process = resume_after_hard_kill(workdir, "--until", "finetune")
    job = wait_for(process, lambda: training(results), "a fine-tuning job training")[0]
    os.kill(job["process"]["pid"], signal.SIGKILL)
    seen["single_job"] = job["record_id"]
    process.wait(timeout=600)
    seen["single_job_exit"] = process.returncode
    seen["single_job_output"] = process.log_path.read_text()
    after_kill("single_job")  # the killed job, and any job Snakemake cancelled beside it
    # 5. mid-MLflow write: a rerun whose sync pauses after a few imports (test hook). --rerun-incomplete:
    # when the killed job failed, Snakemake may have cancelled a job running beside it (incomplete)
    process = start(workdir, "--rerun-incomplete", env={"TOKENUNI_TEST_SYNC_PAUSE_AFTER": str(PAUSE_AFTER)})
    wait_for(process, lambda: log_has(results / "logs" / "mlflow_sync.log", "pausing the sync"), "the sync writing")
    during = mlflow_runs(results)
    seen["sync_finished"] = [run.info.run_id for run in during if run.info.status != "RUNNING"]
    seen["sync_unfinished"] = [run.info.run_id for run in during if run.info.status == "RUNNING"]
    kill_workflow(process)
    after_kill("mid_sync")
    # the rerun to completion
    snakemake(workdir, "--unlock")
    snakemake(workdir, "--rerun-incomplete")
    return {"workdir": workdir, "results": results, **seen}


@pytest.mark.workflow
def test_each_kill_point_was_hit(killed_study):
    assert killed_study["mid_dump"], "the embed job was killed while writing its dump"
    assert "--unlock" in killed_study["plain_rerun_after_hard_kill"]  # hence `snakemake --unlock` first
    for point in ("mid_dump", "mid_metrics", "mid_training"):
        assert killed_study["killed"][point], f"{point}: a job was running"
    assert len(killed_study["sync_finished"]) == PAUSE_AFTER - 1  # imported before the pause, then one
    assert len(killed_study["sync_unfinished"]) == 1  # created and left unfinished by the killed sync


@pytest.mark.workflow
def test_single_killed_job_is_reported(killed_study):
    assert killed_study["single_job_exit"] != 0
    assert "Error in rule finetune" in killed_study["single_job_output"]
    assert killed_study["single_job"] in killed_study["killed"]["single_job"]  # its marker was left behind


@pytest.mark.workflow
def test_outputs_validate(killed_study):
    import pandas as pd
    import pyarrow as pa

    from tokenuni.store import validate_dump

    results = killed_study["results"]
    dumps = sorted((results / "dumps").rglob("*.arrow"))
    assert len(dumps) == 1
    for dump in dumps:
        counts = validate_dump(dump)
        assert counts["rows"] > 0 and counts["layers"] == 7
    for path in results.rglob("*.arrow"):
        pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    for path in results.rglob("*.parquet"):
        assert len(pd.read_parquet(path)) > 0, path
    for path in results.rglob("*.tsv"):
        pd.read_csv(path, sep="\t")
    for path in results.rglob("*.json"):
        json.loads(path.read_text())
    for path in results.rglob("*.png"):
        assert path.read_bytes().endswith(b"IEND\xaeB`\x82"), f"{path} is truncated"
    for path in results.rglob("*.svg"):
        assert path.read_text().rstrip().endswith("</svg>"), f"{path} is truncated"
    table = pd.read_parquet(results / "tables" / "metrics.parquet")
    per_layer = table[table.component.isna()] if "component" in table else table
    for (corpus, metric, variant), group in per_layer.groupby(["corpus", "metric", "variant"], dropna=False):
        if metric == "avg_cosine":
            assert sorted(group.layer) == list(range(7)), (corpus, metric, variant)
    assert planned_jobs(killed_study["workdir"]) == {}


@pytest.mark.workflow
def test_no_temporary_file_left(killed_study):
    results = killed_study["results"]
    assert killed_study["temporaries"]["mid_dump"], "the killed embed job left its temporary dump"
    assert temporaries(results) == []
    assert not list((results / "runs" / "started").glob("*.json")), "every started marker was resolved"


@pytest.mark.workflow
def test_mlflow_one_finished_run_per_job_and_killed_attempts_marked(killed_study):
    results = killed_study["results"]
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/*.json"))
               if p.parent.name not in ("failed", "started")]
    runs = mlflow_runs(results)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    by_key = Counter(run.data.tags["tokenuni.job_key"] for run in finished)
    assert by_key == Counter(record["job_key"] for record in records), "one FINISHED run per job, no duplicate"
    assert {run.data.tags["tokenuni.record_id"] for run in finished} == {record["record_id"] for record in records}
    assert not [run for run in runs if run.info.status == "RUNNING"]
    status = {run.data.tags["tokenuni.record_id"]: run.info.status for run in runs}
    killed = [record_id for ids in killed_study["killed"].values() for record_id in ids]
    assert killed and {status.get(record_id) for record_id in killed} == {"KILLED"}
    # every ended attempt without a final record is in runs/failed (the killed ones above, and any job that
    # Snakemake cancelled when the single killed job failed): one run each, nothing else, nothing lost
    attempts = {json.loads(p.read_text())["record_id"] for p in (results / "runs" / "failed").glob("*.json")}
    assert set(killed) <= attempts
    assert {status.get(record_id) for record_id in attempts} <= {"KILLED", "FAILED"}
    assert len(runs) == len(records) + len(attempts)
    # the run the killed sync left unfinished is deleted; its record was imported again, once
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    unfinished = client.get_run(killed_study["sync_unfinished"][0])
    assert unfinished.info.lifecycle_stage == "deleted"
    assert status[unfinished.data.tags["tokenuni.record_id"]] in ("FINISHED", "KILLED", "FAILED")
    assert set(killed_study["sync_finished"]) <= {run.info.run_id for run in runs}  # kept, not imported again
    # the interrupted sync left no half-imported run's artifacts behind
    run_dirs = {path.parent.name for path in (results / "mlartifacts").rglob("artifacts") if path.is_dir()}
    assert run_dirs
    assert run_dirs <= {run.info.run_id for run in runs}


# -- the same, one job process at a time (no workflow) ------------------------------------------------
JOB = """
import sys, time
from tokenuni.tracking import JobRun

with JobRun(sys.argv[1], rule="finetune", wildcards={"model": "m", "seed": 0}, params={"lr": 1e-4},
            live_tracking_uri=sys.argv[2] or None, experiment="killed") as run:
    for step in range(3):
        run.log_metric("train/loss", 1.0 / (step + 1), step=step)
    run._flush()
    print("training", flush=True)
    time.sleep(600)
"""


def start_and_kill_job(record: Path, uri: str = "") -> None:
    """A job that starts its run, logs a curve (live when ``uri`` is a server), and is killed by SIGKILL."""
    process = subprocess.Popen([sys.executable, "-c", JOB, str(record), uri], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "training"
    process.kill()
    process.wait()
    process.stdout.close()


def test_killed_job_becomes_a_killed_run(tmp_path):
    from tokenuni.tracking import failed_records, sync_records

    record = tmp_path / "runs" / "finetune" / "m__0.json"
    start_and_kill_job(record)
    assert not record.exists()
    [marker] = (tmp_path / "runs" / "started").glob("*.json")
    failed = failed_records(tmp_path / "runs" / "failed")
    assert len(failed) == 1 and not marker.exists()
    killed = json.loads(failed[0].read_text())
    assert killed["status"] == "KILLED" and "killed" in killed["tags"]["tokenuni.error"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):  # idempotent
        sync_records(failed, tracking_uri=uri, experiment="killed")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert run.info.status == "KILLED" and run.data.params["lr"] == "0.0001"


def test_marker_of_a_running_job_or_another_host_is_left_alone(tmp_path):
    from tokenuni.tracking import JobRun, failed_records

    runs = tmp_path / "runs"
    with JobRun(runs / "metric" / "a.json", rule="metric", wildcards={"m": "a"}) as run:
        assert run.started_marker.exists()
        assert failed_records(runs / "failed") == [] and run.started_marker.exists()  # this process runs
        marker = json.loads(run.started_marker.read_text())
    assert not run.started_marker.exists()  # removed once the record is written
    remote = {**marker, "record_id": "r1", "job_key": "metric/b", "start_time": 1,
              "process": {"host": "another-node", "pid": 1, "start": "1"}}
    (runs / "started" / "metric__b.r1.json").write_text(json.dumps(remote))
    assert failed_records(runs / "failed", [runs / "metric" / "a.json"]) == []  # cannot tell: left alone
    later = {**marker, "job_key": "metric/b", "start_time": 2, "status": "FINISHED"}
    (runs / "metric" / "b.json").write_text(json.dumps(later))
    [killed] = failed_records(runs / "failed", [runs / "metric" / "a.json", runs / "metric" / "b.json"])
    assert json.loads(killed.read_text())["record_id"] == "r1"  # a later attempt ran: this one is over


def test_killed_live_run_is_closed_as_killed_by_the_sync(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from tokenuni.tracking import failed_records, sync_records

    start_and_kill_job(tmp_path / "runs" / "finetune" / "m__0.json", mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("killed").experiment_id
    [live] = client.search_runs([experiment])
    assert live.info.status == "RUNNING"  # what a killed job leaves on the server
    sync_records(failed_records(tmp_path / "runs" / "failed"), tracking_uri=mlflow_server, experiment="killed")
    [closed] = client.search_runs([experiment])
    assert closed.info.run_id == live.info.run_id and closed.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(closed.info.run_id, "train/loss")] == [0, 1, 2]  # kept
