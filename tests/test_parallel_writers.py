"""Many concurrent jobs recording runs: nothing lost, nothing duplicated.

* 8 processes write 200 run records (25 jobs each, 4 metrics x 5 steps, some jobs failing); two syncs
  started at the same moment import them into the embedded SQLite store: exactly 200 runs, every
  metric point there, no run twice (the syncs take a lock on the store).
* 8 processes x 25 jobs log live to a real ``mlflow server`` on 127.0.0.1: every run and metric point
  arrives; the sync afterwards adds nothing.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


WORKERS, JOBS = 8, 25
KEYS, STEPS = ("loss", "accuracy", "avg_cosine", "isoscore"), 5
FAIL_EVERY = 10  # every 10th job of a worker raises: a FAILED record in runs/failed/

WORKER = f"""
import sys
from tokenuni.tracking import JobRun

root, worker, jobs, uri = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] or None
keys, steps, fail_every = {KEYS!r}, {STEPS}, {FAIL_EVERY}
for job in range(jobs):
    try:
        with JobRun(f"{{root}}/runs/metric/w{{worker}}__{{job}}.json", rule="metric",
                    wildcards={{"worker": worker, "job": job}}, params={{"worker": worker, "job": job}},
                    live_tracking_uri=uri, experiment="parallel") as run:
            for step in range(steps):
                for key in keys:
                    run.log_metric(key, worker + job / 100 + step / 10, step=step)
            if job % fail_every == fail_every - 1:
                raise RuntimeError("planned failure")
    except RuntimeError:
        pass
"""


def run_workers(root: Path, uri: str = "") -> str:
    """Run the workers; their standard error, together (the warnings say why a live run stopped)."""
    processes = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), str(worker), str(JOBS), uri],
                                  stderr=subprocess.PIPE, text=True) for worker in range(WORKERS)]
    errors = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        errors.append(err)
    return "".join(errors)


def check_runs(uri: str, records: list[dict]) -> None:
    """Exactly one run per record, with its status and every metric point."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("parallel")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    by_record = Counter(run.data.tags["tokenuni.record_id"] for run in runs)
    assert len(runs) == WORKERS * JOBS and set(by_record.values()) == {1}, "no run lost, none twice"
    expected = {record["record_id"]: record["status"] for record in records}
    assert {run.data.tags["tokenuni.record_id"]: run.info.status for run in runs} == expected
    pairs = [(run.info.run_id, key) for run in runs for key in KEYS]
    with ThreadPoolExecutor(8) as pool:
        histories = list(pool.map(lambda pair: client.get_metric_history(*pair), pairs))
    for pair, history in zip(pairs, histories):
        assert sorted(m.step for m in history) == list(range(STEPS)), pair
    assert sum(map(len, histories)) == WORKERS * JOBS * len(KEYS) * STEPS


def read_records(root: Path) -> list[dict]:
    paths = sorted((root / "runs" / "metric").glob("*.json")) + sorted((root / "runs" / "failed").glob("*.json"))
    return [json.loads(path.read_text()) for path in paths]


def test_concurrent_jobs_and_concurrent_syncs_into_sqlite(tmp_path):
    run_workers(tmp_path)
    records = read_records(tmp_path)
    assert len(records) == WORKERS * JOBS
    assert Counter(r["status"] for r in records) == {"FINISHED": WORKERS * (JOBS - JOBS // FAIL_EVERY),
                                                     "FAILED": WORKERS * (JOBS // FAIL_EVERY)}
    assert not list((tmp_path / "runs" / "started").glob("*.json")), "finished jobs leave no started marker"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished = sorted(str(p) for p in (tmp_path / "runs" / "metric").glob("*.json"))
    syncs = [subprocess.Popen(
        [sys.executable, "-m", "tokenuni", "sync", *finished, "--failed-dir", str(tmp_path / "runs" / "failed"),
         "--tracking-uri", uri, "--experiment", "parallel", "--artifact-location", str(tmp_path / "art"),
         "--out", str(tmp_path / f"sync{i}.json")], stderr=subprocess.PIPE, text=True) for i in range(2)]
    for sync in syncs:
        _, err = sync.communicate(timeout=600)
        assert sync.returncode == 0, err[-3000:]
    outcomes = [json.loads((tmp_path / f"sync{i}.json").read_text()) for i in range(2)]
    assert sorted(o["imported"] for o in outcomes) == [0, WORKERS * JOBS]  # one imported, the other waited
    assert outcomes[0]["runs"] == outcomes[1]["runs"]
    check_runs(uri, records)


def test_concurrent_live_logging_to_a_server(tmp_path, mlflow_server):
    from tokenuni.tracking import sync_records

    errors = run_workers(tmp_path, mlflow_server)
    records = read_records(tmp_path)
    assert len(records) == WORKERS * JOBS
    stopped = [line for line in errors.splitlines() if "live MLflow logging stopped" in line]
    assert all("tokenuni.live_run_id" in r["tags"] for r in records), f"every job logged live: {stopped[:5]}"
    check_runs(mlflow_server, records)
    result = sync_records([p for p in (tmp_path / "runs").glob("*/*.json")], tracking_uri=mlflow_server,
                          experiment="parallel")
    assert result["imported"] == 0 and result["skipped"] == WORKERS * JOBS
    assert len(result["runs"]) == WORKERS * JOBS
