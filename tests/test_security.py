"""Security defaults: safetensors-only weights, no remote code, no secrets in MLflow, servers on loopback."""
from __future__ import annotations

import ast
import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

from tokenuni.config import validate_config
from tokenuni.sources import SourceError, check_sources

from conftest import REPO
from test_bad_inputs import tiny_model, tiny_spec
from test_config import default_config


# -- weights: safetensors only unless the user opts in ---------------------------------------------
@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory) -> Path:
    """A model folder whose weights exist only as a pickle (``pytorch_model.bin``)."""
    import torch
    from safetensors.torch import load_file

    folder = tiny_model(tmp_path_factory.mktemp("pickled") / "pickled")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_only_weights_are_refused_with_how_to_opt_in(pickled_model):
    import torch

    from tokenuni.embed import load_model

    expected = (f"model tiny/pickled: {pickled_model} holds only pickled weights (pytorch_model.bin) and no "
                "*.safetensors; pickle files can run code when loaded, so they are refused by default. Convert "
                "them (load once and save_pretrained writes model.safetensors) or opt in with "
                "`allow_pickle_weights: true` in this model's config entry")
    with pytest.raises(SourceError) as error:
        load_model(tiny_spec(pickled_model), torch.device("cpu"))
    assert str(error.value) == expected
    # the workflow's check before the first job says the same
    config = validate_config(default_config())
    config["models"], config["corpora"] = {"pickled": tiny_spec(pickled_model)}, {}
    assert check_sources(config, None, probe_hub=False) == [f"model 'pickled': {expected}"]
    # opting in loads it
    _, model = load_model(tiny_spec(pickled_model, allow_pickle_weights=True), torch.device("cpu"))
    assert model.config.num_hidden_layers == 3
    config["models"]["pickled"]["allow_pickle_weights"] = True
    assert check_sources(config, None, probe_hub=False) == []


def test_defaults_are_safe_in_the_schema_and_the_shipped_configs():
    for name in ("config.yaml", "paper.yaml"):
        with open(REPO / "config" / name) as handle:
            config = validate_config(yaml.safe_load(handle))
        for key, spec in config["models"].items():
            assert spec["trust_remote_code"] is False, f"{name}: models.{key}.trust_remote_code"
            assert spec["allow_pickle_weights"] is False, f"{name}: models.{key}.allow_pickle_weights"


def test_from_pretrained_gets_trust_remote_code_false_and_safetensors_only(monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tokenuni.embed import load_model

    calls = []

    def spy(original, kind):
        def from_pretrained(*args, **kwargs):
            calls.append((kind, kwargs))
            return original(*args, **kwargs)
        return from_pretrained

    monkeypatch.setattr(AutoModel, "from_pretrained", spy(AutoModel.from_pretrained, "model"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy(AutoTokenizer.from_pretrained, "tokenizer"))
    load_model({"id": "sentence-transformers/all-MiniLM-L6-v2"}, torch.device("cpu"))
    assert [kind for kind, _ in calls] == ["tokenizer", "model"]
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in calls)
    assert calls[1][1]["use_safetensors"] is True


def test_every_from_pretrained_call_goes_through_load_model():
    """One place loads models (tokenuni.embed.load_model), and it always passes trust_remote_code."""
    found = []
    for path in sorted((REPO / "tokenuni").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                keywords = {k.arg for k in node.keywords}
                found.append((path.relative_to(REPO).as_posix(), "trust_remote_code" in keywords))
    assert found and all(file == "tokenuni/embed/model.py" and passes for file, passes in found), found


# -- secrets never reach a run record or the MLflow store ------------------------------------------
SECRETS = {"HF_TOKEN": "hf_SeCrEtToKeN0123456789", "MLFLOW_TRACKING_PASSWORD": "pw-SeCrEt-4567",
           "config": "cfg-SeCrEt-token-89ab", "nested": "api-SeCrEt-key-cdef"}


def test_secrets_are_never_logged_to_mlflow(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tokenuni.tracking import JobRun, sync_records

    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    runs = tmp_path / "runs"
    params = {"model": {"id": "org/model", "hub_token": SECRETS["config"], "special_tokens": False,
                        "auth": {"api_key": SECRETS["nested"]}, "c0_tokens": 1000},
              "mirror": "/data/mirror", "note": f"downloaded with {SECRETS['HF_TOKEN']}"}
    artifact = tmp_path / "table.tsv"
    artifact.write_text("layer\tvalue\n0\t0.5\n")
    with JobRun(runs / "embed" / "ok.json", rule="embed", wildcards={"model": "m"}, params=params) as run:
        run.log_params({"hf_token": SECRETS["HF_TOKEN"], "password": SECRETS["MLFLOW_TRACKING_PASSWORD"]})
        run.set_tags({"tracking": f"https://alice:{SECRETS['MLFLOW_TRACKING_PASSWORD']}@mlflow.example.org"})
        run.log_metric("tokens", 12)
        run.log_artifact(artifact, "tables")
    with pytest.raises(RuntimeError):
        with JobRun(runs / "embed" / "bad.json", rule="embed", wildcards={"model": "bad"}, params=params):
            raise RuntimeError(f"401 for token {SECRETS['HF_TOKEN']}")
    records = sorted(runs.rglob("*.json"))
    assert [p.parent.name for p in records] == ["embed", "failed"]
    db, artifacts = tmp_path / "mlflow.db", tmp_path / "mlartifacts"
    result = sync_records(records, tracking_uri=f"sqlite:///{db}", experiment="secrets",
                          artifact_location=str(artifacts))
    assert result["imported"] == 2

    with sqlite3.connect(db) as connection:
        store = "\n".join(connection.iterdump())
    files = [p for p in [*runs.rglob("*"), *artifacts.rglob("*")] if p.is_file()]
    assert any(p.name == "table.tsv" for p in files)
    everything = store + "\n".join(p.read_bytes().decode("utf-8", "replace") for p in files)
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret reached the store or the run records"

    run = MlflowClient(f"sqlite:///{db}").get_run(result["runs"][json.loads(records[0].read_text())["record_id"]])
    logged = run.data.params
    assert logged["model.hub_token"] == logged["model.auth.api_key"] == logged["hf_token"] == "***"
    assert logged["note"] == "downloaded with ***"
    assert run.data.tags["tracking"] == "https://alice:***@mlflow.example.org"
    # what is not a secret is kept
    assert logged["model.special_tokens"] == "false" and logged["model.c0_tokens"] == "1000"
    assert logged["mirror"] == "/data/mirror" and logged["model.id"] == "org/model"
    failed = json.loads(records[1].read_text())
    assert failed["status"] == "FAILED" and failed["tags"]["tokenuni.error"] == "RuntimeError: 401 for token ***"


# -- servers bind to loopback by default -----------------------------------------------------------
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
#: a host option or setting naming every interface (prose that warns against 0.0.0.0 is fine)
WILDCARD_HOST = re.compile(r"(?:--host|\bhost)[\s=:'\",]{1,6}(?:0\.0\.0\.0|::(?!1))")
SCANNED = ["README.md", "Snakefile", ".ci", "docs", "workflow", "config", "tests", "tokenuni"]
TEXT_SUFFIXES = {".md", ".py", ".smk", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg", ".ini", ""}


def _text_files():
    for name in SCANNED:
        root = REPO / name
        for path in ([root] if root.is_file() else sorted(root.rglob("*"))):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.name != Path(__file__).name \
                    and "__pycache__" not in path.parts:
                yield path, path.read_text(errors="replace")


def _host_ok(host: str) -> bool:
    return host.strip("'\",") in LOOPBACK or host.startswith("$")


def test_mlflow_servers_are_bound_to_loopback():
    """Every `mlflow server` / `mlflow ui` the project documents or starts binds 127.0.0.1 (or a variable the
    user sets); without --host, MLflow's own default must be loopback. No host option names 0.0.0.0."""
    import mlflow.cli

    default = next(p.default for p in mlflow.cli.cli.commands["server"].params if p.name == "host")
    assert default in LOOPBACK
    commands = 0
    for path, text in _text_files():
        assert not WILDCARD_HOST.search(text), f"{path} binds every interface"
        for match in re.finditer(r"mlflow\s+(server|ui)\b(.*)", text):  # shell lines
            commands += 1
            host = re.search(r"(?:--host|-h)[ =](\S+)", match.group(2))
            assert host is None or _host_ok(host.group(1)), f"{path}: {match.group(0)}"
        for match in re.finditer(r"[\"']mlflow[\"'],\s*[\"'](server|ui)[\"'](.{0,300})", text, re.S):  # argv lists
            commands += 1
            host = re.search(r"[\"']--host[\"'],\s*([\"'][^\"']+[\"'])", match.group(2))
            assert host is not None and _host_ok(host.group(1)), f"{path}: {match.group(0)[:120]}"
    assert commands >= 2  # the README's ui and server lines at least
