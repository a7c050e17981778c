"""Shared fixtures: the data mirror (../shared/data or $TOKENUNI_DATA) and a real MiniLM dump."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
MINILM = {"id": "sentence-transformers/all-MiniLM-L6-v2", "revision": None, "path": None, "max_length": 128,
          "batch_size": 16, "dtype": "float32", "trust_remote_code": False, "allow_pickle_weights": False}


def mirror_path() -> Path | None:
    path = Path(os.environ.get("TOKENUNI_DATA") or REPO.parent / "shared" / "data")
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def mirror() -> Path:
    path = mirror_path()
    if path is None:
        pytest.skip("no data mirror: set TOKENUNI_DATA or put shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def stsb_corpus(mirror, tmp_path_factory) -> Path:
    """60 real STS-B test sentences (30 pairs) as a normalised corpus table."""
    from tokenuni.corpora import import_corpus

    out = tmp_path_factory.mktemp("corpus") / "stsb.parquet"
    spec = {"name": "stsb-test", "hub": None, "mirror": {"format": "stsb", "files": ["stsbenchmark/sts-test.csv"]},
            "max_sentences": 60, "seed": 0, "drop_empty": True}
    import_corpus(spec, mirror, out)
    return out


@pytest.fixture(scope="session")
def minilm_dump(stsb_corpus, tmp_path_factory) -> Path:
    """Every layer of the real all-MiniLM-L6-v2 over those sentences (small batches: many record batches)."""
    from tokenuni.embed import embed_corpus

    out = tmp_path_factory.mktemp("dump") / "minilm.arrow"
    embed_corpus(stsb_corpus, MINILM, out, corpus_name="stsb-test", device="cpu", progress=False)
    return out


#: Debian's Chromium (no browser downloads) and the flags the browser tests launch it with (Playwright)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_mlflow_server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` bound to 127.0.0.1 on a free port, stopped on exit; yields its URI.

    SQLite store and proxied artifacts (``mlflow-artifacts:/``, files under ``root/artifacts``): clients
    upload artifacts through the server, as jobs on other nodes do. Its log is ``root/server.log``.
    The server runs in its own process group (uvicorn is a child of the mlflow CLI), stopped as a whole;
    MLflow's background job runner (GenAI jobs, huey consumers that outlive a terminated parent) is off.
    """
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=server_log, env=env, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("mlflow server did not start in 90 s")
                time.sleep(0.5)
        time.sleep(1.0)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=20)
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real `mlflow server` on loopback, started for the tests that need one and stopped after."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


#: the scaled-down default study logged to a server (tests/test_mlflow_server.py, tests/test_mlflow_ui.py)
SERVER_STUDY_EXPERIMENT = "server-study"


@pytest.fixture(scope="session")
def server_study(mirror, mlflow_server, tmp_path_factory) -> dict:
    """A tiny default study run by Snakemake with ``mlflow.tracking_uri`` = the test server.

    One geometry corpus (40 STS-B sentences), one metric, no STS or projection, one fine-tuning job
    (two optimiser steps: a training curve): every kind of job of the default study that logs
    metrics, figures and tables, in as few processes as that takes.
    """
    from test_workflow import snakemake, write_config
    from tokenuni.metrics import METRICS

    workdir = tmp_path_factory.mktemp("server-study")
    metrics = {name: {"enabled": False} for name in METRICS}  # the schema enables every metric by default
    metrics["token_uniformity"] = {"min_tokens": 2}
    config = write_config(workdir, mirror, **{
        "corpora.stsb-test.max_sentences": 40, "corpora.wikitext.geometry": False, "metrics": metrics,
        "sts.enabled": False, "projection.enabled": False,
        "finetune.variants": {"baseline": {}}, "finetune.max_train_examples": 32, "finetune.max_dev_examples": 16,
        "mlflow.tracking_uri": mlflow_server, "mlflow.experiment": SERVER_STUDY_EXPERIMENT,
    })
    started = time.monotonic()
    result = snakemake(workdir)
    return {"workdir": workdir, "config": config, "uri": mlflow_server, "experiment": SERVER_STUDY_EXPERIMENT,
            "seconds": time.monotonic() - started, "snakemake": result}
