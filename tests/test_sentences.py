"""Pooled sentence embeddings against the per-layer token dump and sentence-transformers' convention."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MINILM

POOLINGS = {
    "mean_last": {"pool": "mean", "layers": [-1]},
    "mean_last_nospecial": {"pool": "mean", "layers": [-1], "special_tokens": False},
    "first_last_0": {"pool": "mean", "layers": [0, -1]},
    "first_last_1": {"pool": "mean", "layers": [1, -1]},
    "cls_last": {"pool": "cls", "layers": [-1]},
    "cls_mid": {"pool": "cls", "layers": [2, 3, 4]},
    "max_last": {"pool": "max", "layers": [-1]},
    "max_pair_nospecial": {"pool": "max", "layers": [2, -2], "special_tokens": False},
}
RESOLVED = {"mean_last": [6], "mean_last_nospecial": [6], "first_last_0": [0, 6], "first_last_1": [1, 6],
            "cls_last": [6], "cls_mid": [2, 3, 4], "max_last": [6], "max_pair_nospecial": [2, 5]}


@pytest.fixture(scope="module")
def sentences_file(stsb_corpus, tmp_path_factory):
    import torch

    from tokenuni.sentences import embed_sentences

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sentences") / "minilm.arrow"
    summary = embed_sentences(stsb_corpus, MINILM, POOLINGS, out, corpus_name="stsb-test", device="cpu",
                              progress=False)
    assert summary["sentences"] == 60 and summary["layers"] == 7 and summary["hidden_size"] == 384
    return out


def _dump_sentences(path):
    """Per sentence: (n_tokens, 7, 384) float64 hidden states and the special-token mask, from the dump."""
    from tokenuni.store import layer_column, open_dump, vectors

    dump = open_dump(path)
    index = dump.read_index()
    sentence = index["sentence_id"].to_numpy()
    position = index["position"].to_numpy()
    special = index["special"].to_numpy(zero_copy_only=False)
    layers = []
    for layer in range(dump.n_layers):
        column = [vectors(b.column(0)) for b in dump.batches([layer_column(layer)])]
        layers.append(np.concatenate(column).astype(np.float64))
    states = np.stack(layers, axis=1)  # (tokens, layers, d)
    out = {}
    for sid in np.unique(sentence):
        rows = np.flatnonzero(sentence == sid)
        rows = rows[np.argsort(position[rows])]
        out[int(sid)] = (states[rows], special[rows])
    return out


def _manual(states, special, spec_layers, pool, special_tokens):
    layer_mean = states[:, spec_layers].mean(axis=1)  # (tokens, d)
    if pool == "cls":
        return layer_mean[0]
    keep = np.ones(len(special), bool) if special_tokens else ~special
    if pool == "mean":
        return layer_mean[keep].mean(axis=0)
    return layer_mean[keep].max(axis=0)


def test_poolings_equal_manual_pooling_of_the_token_dump(sentences_file, minilm_dump, stsb_corpus):
    from tokenuni.sentences import read_sentences

    tokens = _dump_sentences(minilm_dump)
    corpus = pq.read_table(stsb_corpus)
    for name, spec in POOLINGS.items():
        table, vecs = read_sentences(sentences_file, name)
        assert vecs.shape == (60, 384) and vecs.dtype == np.float64
        assert table["sentence_id"].to_pylist() == corpus["sentence_id"].to_pylist()
        expected = np.stack([
            _manual(*tokens[sid], RESOLVED[name], spec["pool"], spec.get("special_tokens", True))
            for sid in table["sentence_id"].to_pylist()
        ])
        np.testing.assert_allclose(vecs, expected, atol=1e-5, rtol=1e-5, err_msg=name)
    # the poolings really differ (layer choice, special tokens, reduction)
    _, mean_last = read_sentences(sentences_file, "mean_last")
    for other in ("mean_last_nospecial", "first_last_0", "first_last_1", "cls_last", "max_last"):
        assert np.abs(read_sentences(sentences_file, other)[1] - mean_last).max() > 1e-2, other


def test_file_layout_and_metadata(sentences_file, stsb_corpus):
    from tokenuni.sentences import CORPUS_COLUMNS, read_sentences, sentences_metadata

    reader = pa.ipc.open_file(pa.memory_map(str(sentences_file), "r"))
    schema = reader.schema
    assert schema.names == CORPUS_COLUMNS + [f"pooling_{name}" for name in POOLINGS]
    for name in POOLINGS:
        assert schema.field(f"pooling_{name}").type == pa.list_(pa.float32(), 384)
    assert not list(sentences_file.parent.glob(".*tmp*"))  # atomic write left no temporary file
    meta = sentences_metadata(sentences_file)
    assert meta["model_id"] == MINILM["id"] and meta["corpus"] == "stsb-test"
    assert meta["layer_convention"].startswith("layer 0 = embedding output")
    assert {"torch", "transformers", "pyarrow"} <= set(json.loads(meta["versions"]))
    poolings = json.loads(meta["poolings"])
    assert poolings == json.loads(schema.metadata[b"tokenuni.poolings"])
    assert {name: p["layers"] for name, p in poolings.items()} == RESOLVED
    assert poolings["first_last_0"]["requested_layers"] == [0, -1]
    assert poolings["mean_last_nospecial"]["special_tokens"] is False
    assert poolings["max_pair_nospecial"]["pool"] == "max"
    table, _ = read_sentences(sentences_file, "mean_last")
    corpus = pq.read_table(stsb_corpus)
    assert table.column_names == CORPUS_COLUMNS
    for column in CORPUS_COLUMNS:
        assert table[column].to_pylist() == corpus[column].to_pylist(), column


def test_mean_last_is_sentence_transformers_mean_pooling(sentences_file, stsb_corpus):
    """sentence-transformers: sum(token_embeddings * mask) / clamp(mask.sum(), 1e-9) over the last hidden state."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tokenuni.sentences import read_sentences
    from tokenuni.sources import resolve_model

    location = resolve_model(MINILM).location
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModel.from_pretrained(location).eval()
    texts = pq.read_table(stsb_corpus)["text"].to_pylist()
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    chosen = [int(np.argmin(lengths)), int(np.argmax(lengths)), 7]  # a padded batch: short and long together
    encoded = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        token_embeddings = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    reference = (token_embeddings * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
    _, vecs = read_sentences(sentences_file, "mean_last")
    np.testing.assert_allclose(vecs[chosen], reference.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, spec, message", [
    ("mean", {"pool": "average", "layers": [-1]}, "pool 'average' is not one of mean, cls, max"),
    ("m", {"pool": "mean"}, "layers must be a non-empty list"),
    ("m", {"pool": "mean", "layers": []}, "layers must be a non-empty list"),
    ("m", {"pool": "mean", "layers": [1.5]}, "layers must be integers"),
    ("m", {"pool": "mean", "layers": [True]}, "layers must be integers"),
    ("m", {"pool": "mean", "layers": [-1], "special_tokens": "no"}, "special_tokens must be true or false"),
    ("m", {"pool": "mean", "layers": [-1], "layer": 3}, "unknown key(s) ['layer']"),
    ("m", {"pool": "cls", "layers": [-1], "special_tokens": False}, "contradicts"),
    ("m", {"pool": "mean", "layers": [2, 2]}, "repeat a layer"),
    ("bad name", {"pool": "mean", "layers": [-1]}, "pooling name"),
    ("m", "mean", "expected a mapping"),
])
def test_bad_poolings_error_naming_the_pooling(name, spec, message):
    from tokenuni.sentences import SentenceEmbeddingError, validate_pooling

    with pytest.raises(SentenceEmbeddingError) as error:
        validate_pooling(name, spec)
    assert message in str(error.value) and repr(name) in str(error.value)


def test_layers_resolve_against_the_model():
    from tokenuni.sentences import SentenceEmbeddingError, validate_pooling

    assert validate_pooling("fl", {"pool": "mean", "layers": [0, -1]}, n_layers=7)["layers"] == [0, 6]
    assert validate_pooling("x", {"pool": "max", "layers": [-7]}, n_layers=7) == {
        "pool": "max", "layers": [0], "special_tokens": True}
    for layers in ([7], [-8]):
        with pytest.raises(SentenceEmbeddingError, match=r"pooling 'deep': layer\(s\) .* out of range .* 7 hidden"):
            validate_pooling("deep", {"pool": "mean", "layers": layers}, n_layers=7)
    with pytest.raises(SentenceEmbeddingError, match="name the same layer twice"):
        validate_pooling("same", {"pool": "mean", "layers": [6, -1]}, n_layers=7)


def test_out_of_range_layer_fails_before_writing(stsb_corpus, tmp_path):
    from tokenuni.sentences import SentenceEmbeddingError, embed_sentences

    out = tmp_path / "never.arrow"
    with pytest.raises(SentenceEmbeddingError, match="pooling 'too_deep'.*out of range"):
        embed_sentences(stsb_corpus, MINILM, {"ok": {"pool": "mean", "layers": [-1]},
                                              "too_deep": {"pool": "mean", "layers": [12]}},
                        out, device="cpu", progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(SentenceEmbeddingError, match="at least one pooling"):
        embed_sentences(stsb_corpus, MINILM, {}, out, device="cpu", progress=False)


def test_read_sentences_errors(sentences_file, stsb_corpus, tmp_path):
    from tokenuni.sentences import SentenceEmbeddingError, read_sentences

    with pytest.raises(SentenceEmbeddingError, match="no pooling 'nope'; it has mean_last, "):
        read_sentences(sentences_file, "nope")
    with pytest.raises(SentenceEmbeddingError, match="does not exist"):
        read_sentences(tmp_path / "missing.arrow", "mean_last")
    with pytest.raises(SentenceEmbeddingError, match="not a readable Arrow IPC file"):
        read_sentences(stsb_corpus, "mean_last")  # a Parquet file
