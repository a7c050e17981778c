"""GPU leases (tokenuni.gpu_lease) on a machine that pretends to have two GPUs (TOKENUNI_GPU_DEVICES=0,1).

Real processes hold real ``flock`` leases; what is checked is recorded by the holders themselves
(interval while holding, CUDA_VISIBLE_DEVICES), never a duration.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from itertools import combinations

import pytest

from tokenuni.gpu_lease import GpuLeaseError, lease_gpu

# a holder: lease one GPU, record (start, end, CUDA_VISIBLE_DEVICES) while holding it, print LEASED
HOLDER = """
import json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from tokenuni.gpu_lease import lease_gpu
lock_dir, hold, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with lease_gpu(1, lock_dir=lock_dir, poll=0.1):
    start = time.time()
    device = os.environ["CUDA_VISIBLE_DEVICES"]
    print("LEASED", device, flush=True)
    time.sleep(hold)
    end = time.time()
with open(out, "w") as handle:
    json.dump({"start": start, "end": end, "device": device}, handle)
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")}
    env.update(TOKENUNI_GPU_DEVICES="0,1", PYTHONUNBUFFERED="1", **extra)
    return env


def _holder(tmp_path, name: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "locks"), str(hold),
                             str(tmp_path / f"{name}.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def _leased_device(process: subprocess.Popen) -> str:
    line = process.stdout.readline()  # blocks until the holder has its lease (or exits)
    assert line.startswith("LEASED"), f"holder exited without a lease: {process.stderr.read()[-2000:]}"
    return line.split()[1]


def test_concurrent_jobs_get_distinct_devices_never_more_than_two(tmp_path):
    processes = [_holder(tmp_path, f"job{i}", 0.6) for i in range(6)]
    for process in processes:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
    held = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(6)]
    assert {h["device"] for h in held} <= {"0", "1"}
    for a, b in combinations(held, 2):
        if a["start"] < b["end"] and b["start"] < a["end"]:  # held at the same time
            assert a["device"] != b["device"], (a, b)
    # the most leases held at one moment: sweep over the recorded intervals
    events = sorted([(h["start"], 1) for h in held] + [(h["end"], -1) for h in held])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak <= 2


def test_a_killed_holders_lease_is_released(tmp_path):
    first, second = _holder(tmp_path, "first", 120), _holder(tmp_path, "second", 120)
    waiter = None
    try:
        first_device, second_device = _leased_device(first), _leased_device(second)
        assert {first_device, second_device} == {"0", "1"}
        waiter = _holder(tmp_path, "waiter", 0)
        for line in waiter.stderr:  # it logs that every device is busy, then polls
            if "busy" in line:
                break
        assert waiter.poll() is None, "the waiter got a device while both were held"
        os.kill(first.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops its flock
        first.wait(timeout=10)
        out, _ = waiter.communicate(timeout=30)
        assert waiter.returncode == 0 and out.split() == ["LEASED", first_device]
        assert json.loads((tmp_path / "waiter.json").read_text())["device"] == first_device
        assert second.poll() is None  # the other holder still has its own device
    finally:
        for process in (first, second, waiter):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_skipped_under_slurm(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("TOKENUNI_GPU_DEVICES", "0,1")
    with lease_gpu(1, lock_dir=tmp_path / "locks", timeout=0) as leased:
        assert leased == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and not (tmp_path / "locks").exists()


def test_no_device_runs_on_the_cpu_without_waiting(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("TOKENUNI_GPU_DEVICES", "")
    with lease_gpu(1, lock_dir=tmp_path / "locks", timeout=0) as leased:  # timeout=0: any wait would raise
        assert leased == [] and "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


def test_busy_devices_time_out_and_too_many_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    with lease_gpu(1, lock_dir=tmp_path, devices=["0"]) as leased:
        assert leased == ["0"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        with pytest.raises(GpuLeaseError, match="no 1 free GPU"):  # flock: a second descriptor conflicts too
            with lease_gpu(1, lock_dir=tmp_path, devices=["0"], timeout=0.3, poll=0.1):
                pass
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"  # restored
    with lease_gpu(1, lock_dir=tmp_path, devices=["0"], timeout=0) as leased:  # released on exit
        assert leased == ["0"]
    with pytest.raises(GpuLeaseError, match="asks for 3 GPUs but this machine has 2"):
        with lease_gpu(3, lock_dir=tmp_path, devices=["0", "1"]):
            pass


def test_the_cli_leases_before_a_gpu_stage(tmp_path, minilm_dump):
    """`python -m tokenuni metric` with device 0 busy takes the free device 1 (and records it)."""
    locks = tmp_path / "locks"
    with lease_gpu(1, lock_dir=locks, devices=["0"]):  # device 0 is busy (held by this process)
        result = subprocess.run(
            [sys.executable, "-m", "tokenuni", "metric", "token_uniformity", "--dump", str(minilm_dump),
             "--options", json.dumps({"min_tokens": 2}), "--model", "minilm", "--corpus", "stsb-test",
             "--out", str(tmp_path / "tu.parquet"), "--record", str(tmp_path / "runs" / "metric" / "m.json"),
             "--no-progress"],
            capture_output=True, text=True, timeout=120, env=_env(TOKENUNI_GPU_LOCK_DIR=str(locks)),
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GPU lease: CUDA_VISIBLE_DEVICES=1" in result.stderr
    record = json.loads((tmp_path / "runs" / "metric" / "m.json").read_text())
    assert record["tags"]["tokenuni.cuda_visible_devices"] == "1"
    assert record["tags"]["tokenuni.device"] == "cpu"  # no CUDA here: the pretend GPU falls back to the CPU
