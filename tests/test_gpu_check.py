"""The GPU check's CPU dry run (tests/gpu/check.py --device cpu --tiny): every step of the script that a GPU machine
runs in one call, at tiny sizes, so that it never rots between GPU sessions."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_run_on_the_cpu(mirror, tmp_path):
    env = {**os.environ, "TOKENUNI_DATA": str(mirror), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(REPO / "tests" / "gpu" / "check.py"), "--device", "cpu", "--tiny",
                             "--out", str(out), "--work", str(tmp_path / "work"), "--skip", "cuda_tests"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((out / "check.json").read_text())
    steps = {name: value for name, value in results.items() if name != "environment"}
    assert set(steps) == {"bench_metric_suite", "scale_dump", "scale_suite", "scale_stream", "finetune"}
    failed = {name: value.get("error") for name, value in steps.items() if not value["ok"]}
    assert not failed, failed
    assert steps["scale_suite"]["reads"] == 1  # the dump's moments came from the embed step
    assert steps["scale_stream"]["forward_passes"] == 2  # no dump: partition isotropy needs the moments first
    assert set(steps["finetune"]["examples_per_s"]) == {"baseline/fp32", "softdecay/fp32", "istar/fp32",
                                                        "cosine_regulariser/fp32", "fusion_gate/fp32"}
    suite = json.loads((out / "bench_metric_suite.json").read_text())
    deviation = next(row for row in suite["rows"] if row["name"].startswith("results: largest deviation"))
    assert deviation["met"], deviation
