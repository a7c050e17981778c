"""The workflow on a real SLURM cluster through snakemake-executor-plugin-slurm and workflow/profiles/slurm.

A single-node cluster (munged, slurmctld, slurmd from Debian's slurm-wlm; see tests/slurm_cluster.py)
runs a small slice of the default study submitted with the unchanged SLURM profile; only the status
command is set on the command line (accounting is off, so the plugin reads squeue, which keeps finished
jobs for MinJobAge = 1 h). The same slice then runs locally with --cores 2; both wall times are printed.
Skipped where the SLURM daemons or root are missing (install: apt-get install slurm-wlm munge).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from slurm_cluster import SlurmCluster, skip_reason
from test_workflow import mlflow_runs, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

PROFILES = REPO / "workflow" / "profiles"
KEEP_METRICS = ("cosine_family",)
WALL_TIMES: dict[str, float] = {}


def small_study(workdir: Path, mirror: Path) -> dict:
    """The default study cut to a dozen SLURM jobs (a few minutes, most of it the plugin's status polling):
    MiniLM on 100 STS-B test sentences with the cosine family and its figures, one fine-tuning job on 32
    SST-2 examples, the tables, the report and the MLflow sync; no STS, no projection."""
    from tokenuni.metrics import METRICS

    config = write_config(
        workdir, mirror,
        **{f"metrics.{name}.enabled": False for name in METRICS if name not in KEEP_METRICS},
        **{"corpora.stsb-test.max_sentences": 100, "projection.enabled": False, "sts.enabled": False,
           "finetune.variants": {"baseline": {}}},
    )
    config["corpora"] = {"stsb-test": config["corpora"]["stsb-test"]}
    with open(workdir / "config" / "config.yaml", "w") as handle:
        yaml.safe_dump(config, handle)
    return config


def gpu_rules() -> set[str]:
    """Rules that declare the `gpu` resource (workflow/rules/*.smk)."""
    rules = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule )", path.read_text(), flags=re.MULTILINE):
            match = re.match(r"rule (\w+):", block)
            if match and re.search(r"^\s+gpu\s*=", block, flags=re.MULTILINE):
                rules.add(match.group(1))
    return rules


def load_profile(name: str) -> dict:
    """A profile as Snakemake reads it (YTE templating included)."""
    import yte

    with open(PROFILES / name / "config.yaml") as handle:
        return yte.process_yaml(handle, require_use_yte=True)


# -- the profiles, statically ----------------------------------------------------------------------

def test_slurm_profile_gives_every_gpu_rule_a_gpu(monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "gpu-a")
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    monkeypatch.delenv("TOKENUNI_GPU_MODEL", raising=False)
    profile = load_profile("slurm")
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    assert profile["default-resources"]["slurm_partition"] == "'gpu-a'"  # from the user's environment
    assert profile["default-resources"]["slurm_account"] == "''"  # unset: the plugin decides
    rules = gpu_rules()
    assert {"embed", "metric", "finetune"} <= rules
    for rule in rules:
        resources = profile["set-resources"].get(rule)
        assert resources, f"GPU rule {rule} has no set-resources entry in workflow/profiles/slurm"
        assert resources["gpu"] == 1 and resources["cpus_per_gpu"] == "threads"
        assert {"runtime", "mem_mb", "gpu_model"} <= set(resources)
    extras = " ".join(str(r.get("slurm_extra", "")) for r in [profile["default-resources"],
                                                               *profile["set-resources"].values()])
    assert "--gres" not in extras and "--gpus" not in extras


def test_default_profile_is_local():
    profile = load_profile("default")
    assert "executor" not in profile and profile["resources"]["gpu"] >= 1
    assert profile["rerun-incomplete"] is True and profile["keep-going"] is False


# -- the real cluster ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def slurm_study(cluster, mirror, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm_study")
    small_study(workdir, mirror)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        patch.setenv("SBATCH_PARTITION", "debug")
        patch.delenv("SBATCH_ACCOUNT", raising=False)
        patch.delenv("TOKENUNI_GPU_MODEL", raising=False)  # the test GPUs have no type
        start = time.monotonic()
        result = snakemake(workdir, "--workflow-profile", str(PROFILES / "slurm"),
                           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
                           "--slurm-keep-successful-logs", check=False)
        WALL_TIMES["slurm"] = time.monotonic() - start
    if result.returncode != 0:
        raise AssertionError(f"snakemake on SLURM failed ({result.returncode}):\n{result.stderr[-6000:]}\n"
                             f"{cluster.logs()}")
    return workdir


@pytest.fixture(scope="module")
def local_study(slurm_study, mirror, tmp_path_factory) -> Path:
    """The same slice with --cores 2, after the SLURM run (never both at once: the timings compare)."""
    workdir = tmp_path_factory.mktemp("local_study")
    small_study(workdir, mirror)
    start = time.monotonic()
    snakemake(workdir)
    WALL_TIMES["local"] = time.monotonic() - start
    return workdir


def slurm_jobs(cluster) -> list[dict]:
    """Every job the cluster has seen (finished ones stay for MinJobAge): id, state, comment, GPU request."""
    result = subprocess.run(["squeue", "--states=all", "--noheader", "--Format=JobID:|,State:|,Comment:|,tres-per-job:|"],
                            capture_output=True, text=True, check=True, env={**os.environ, **cluster.env})
    rows = [line.split("|")[:4] for line in result.stdout.splitlines() if line.strip()]
    return [{"id": i, "state": s, "comment": c, "gres": g} for i, s, c, g in rows]


def test_outputs_on_slurm(slurm_study):
    results = slurm_study / "results"
    for path in ("tables/metrics.parquet", "tables/finetune.parquet", "tables/finetune_summary.md",
                 "figures/avg_cosine_by_layer.png", "mlflow/sync.json"):
        assert (results / path).stat().st_size > 0, path
    assert not list(results.rglob("*.tmp-*")), "temporary files left behind"
    assert list((slurm_study / ".snakemake" / "slurm_logs").rglob("*.log")), "no SLURM job logs"


def test_every_job_ran_as_a_slurm_job(slurm_study, cluster):
    jobs = slurm_jobs(cluster)
    assert jobs and {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    by_id = {job["id"]: job for job in jobs}
    records = [json.loads(path.read_text()) for path in sorted((slurm_study / "results" / "runs").glob("*/*.json"))]
    assert records
    job_ids = [record["tags"].get("tokenuni.slurm_job_id") for record in records]
    assert None not in job_ids, "a job ran outside SLURM"
    assert len(set(job_ids)) == len(records) and set(job_ids) <= set(by_id)  # one SLURM job per job
    for record, job_id in zip(records, job_ids):
        rule = record["tags"]["tokenuni.rule"]
        assert by_id[job_id]["comment"].startswith(f"rule_{rule}")
        wants_gpu = rule in gpu_rules()
        assert ("gpu" in by_id[job_id]["gres"]) == wants_gpu, (rule, by_id[job_id])  # the profile's GPU request


def test_one_mlflow_run_per_slurm_job(slurm_study, cluster):
    records = sorted((slurm_study / "results" / "runs").glob("*/*.json"))
    runs = mlflow_runs(slurm_study / "results")
    assert len(runs) == len(records)
    assert {run.info.status for run in runs} == {"FINISHED"}
    slurm_ids = {job["id"] for job in slurm_jobs(cluster)}
    assert {run.data.tags.get("tokenuni.slurm_job_id") for run in runs} <= slurm_ids
    rules = sorted(run.data.tags["tokenuni.rule"] for run in runs)
    assert rules.count("corpus") == rules.count("embed") == rules.count("finetune") == 1
    assert rules.count("metric") == len(KEEP_METRICS) and rules.count("figure_by_layer") >= 1


def test_slurm_and_local_runs_agree(slurm_study, local_study, capsys):
    import pandas as pd

    for table in ("metrics", "finetune"):  # the same numbers, wall-clock columns aside
        remote, local = (pd.read_parquet(study / "results" / "tables" / f"{table}.parquet")
                         for study in (slurm_study, local_study))
        timing = [column for column in remote.columns if "second" in column or "time" in column]
        pd.testing.assert_frame_equal(remote.drop(columns=timing), local.drop(columns=timing), rtol=1e-5)
    assert len(mlflow_runs(local_study / "results")) == len(mlflow_runs(slurm_study / "results"))
    jobs = len(list((slurm_study / "results" / "runs").glob("*/*.json")))
    line = (f"SLURM vs local wall time, same small study ({jobs} jobs with a run record): "
            f"SLURM {WALL_TIMES['slurm']:.0f} s, local --cores 2 {WALL_TIMES['local']:.0f} s")
    with capsys.disabled():  # shown in the CI log, not only on failure
        print("\n" + line)
