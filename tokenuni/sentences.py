"""Pooled sentence embeddings: one forward pass, several poolings, one Arrow file.

A pooling reduces the hidden states of one sentence (tokens × d) to one vector. Every pooling first
averages the hidden states of its listed layers token by token,

    H̄ = (1/|L|) Σ_{l∈L} H_l          (layer 0 = embedding output, layer i = output of block i),

then reduces H̄ over the sentence's tokens T (real tokens: attention mask 1; without the special
tokens when ``special_tokens`` is false):

``mean``  v = (1/|T|) Σ_{t∈T} H̄_t — averaging the layers and then pooling equals pooling each layer
          and then averaging (both are linear). With ``layers: [-1]`` and ``special_tokens: true`` this
          is sentence-transformers' mean pooling (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019),
          which averages every real token including [CLS]/[SEP]. With two layers it is the
          "first-last average" of Su et al. ("Whitening Sentence Representations for Better Semantics
          and Faster Retrieval", 2021), Gao et al. (SimCSE, EMNLP 2021) and Yan et al. ("Addressing
          Token Uniformity in Transformers via Singular Value Transformation", UAI 2022) — whose
          repositories disagree on "first": the embedding output (``[0, -1]``) or block 1
          (``[1, -1]``; the layers that reproduce the tokenUni paper's BERT baseline). Name them explicitly.
``cls``   v = H̄_c, the token that summarises the sentence (:func:`tokenuni.families.sentence_token_index`):
          for an encoder the first token ([CLS] for BERT-like models, <s> for RoBERTa and MPNet);
          for a causal decoder (GPT-2, Llama, Qwen2) the **last real token**, the only one that has
          seen the whole sentence (its first token has seen nothing but itself). The file's pooling
          metadata records which (``token``: ``first`` or ``last``).
``max``   v_k = max_{t∈T} H̄_{t,k}, element-wise (Conneau et al., InferSent, EMNLP 2017).

Pooling runs in float64 on the model's device; the vectors are stored as float32. Rajaee & Pilehvar
(ACL 2021) pool without [CLS]/[SEP] (``special_tokens: false``); sentence-transformers keeps them.

This module is the model run (pooling specs, :func:`pool_hidden_states`, :func:`embed_sentences`). The
file it writes (uncompressed Arrow IPC: the corpus columns and one ``pooling_<name>`` column per pooling,
``tokenuni.*`` metadata) is :mod:`tokenuni.sentence_store`, which writes it and opens it once for its
readers; :func:`read_sentences` and :func:`sentences_metadata` here are thin wrappers over its handle.
"""
from __future__ import annotations

import json
import logging
import re
import time

import numpy as np
import pyarrow as pa

from tokenuni.corpora import read_corpus
from tokenuni.devices import select_device
from tokenuni.embed import effective_max_length, forward_hidden_states, load_model, tokenize
from tokenuni.files import library_versions
from tokenuni.families import family_of, sentence_token_states
from tokenuni.sentence_store import (  # noqa: F401  (pooling_column: re-exported)
    CORPUS_COLUMNS, POOLING_PREFIX, SentenceEmbeddingError, open_sentences, pooling_column, write_sentences)
from tokenuni.sources import model_fingerprint, resolve_model
from tokenuni.store import LAYER_CONVENTION

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "max")
POOLING_KEYS = ("pool", "layers", "special_tokens")
POOLING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

def validate_pooling(name: str, spec: dict, n_layers: int | None = None) -> dict:
    """Check one pooling spec and return it normalised: ``{"pool", "layers", "special_tokens"}``.

    ``layers`` are hidden-state indices (0 = embedding output; negative count from the end, -1 = the
    last layer); with ``n_layers`` (number of hidden states, i.e. blocks + 1) they are resolved to
    absolute indices and checked against the model. Errors name the pooling.
    """
    where = f"pooling {name!r}"
    if not isinstance(name, str) or not POOLING_NAME.match(name):
        raise SentenceEmbeddingError(f"{where}: a pooling name is letters, digits, '_', '.', '-' "
                                     f"(it becomes the column {POOLING_PREFIX}<name>)")
    if not isinstance(spec, dict):
        raise SentenceEmbeddingError(f"{where}: expected a mapping with pool and layers, got {spec!r}")
    unknown = sorted(set(spec) - set(POOLING_KEYS))
    if unknown:
        raise SentenceEmbeddingError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(POOLING_KEYS)}")
    pool = spec.get("pool")
    if pool not in POOLINGS:
        raise SentenceEmbeddingError(f"{where}: pool {pool!r} is not one of {', '.join(POOLINGS)}")
    layers = spec.get("layers")
    if not isinstance(layers, (list, tuple)) or not layers:
        raise SentenceEmbeddingError(f"{where}: layers must be a non-empty list of layer indices "
                                     f"(0 = embedding output, -1 = last layer), got {layers!r}")
    if any(isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) for layer in layers):
        raise SentenceEmbeddingError(f"{where}: layers must be integers, got {list(layers)!r}")
    layers = [int(layer) for layer in layers]
    special_tokens = spec.get("special_tokens", True)
    if not isinstance(special_tokens, bool):
        raise SentenceEmbeddingError(f"{where}: special_tokens must be true or false, got {special_tokens!r}")
    if pool == "cls" and not special_tokens:
        raise SentenceEmbeddingError(f"{where}: pool 'cls' takes the sentence token ([CLS] / <s>, or a decoder's "
                                     "last token); special_tokens: false contradicts it")
    if n_layers is not None:
        bad = [layer for layer in layers if not -n_layers <= layer < n_layers]
        if bad:
            raise SentenceEmbeddingError(f"{where}: layer(s) {bad} out of range for a model with {n_layers} hidden "
                                         f"states (0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
        resolved = [layer % n_layers for layer in layers]
        if len(set(resolved)) != len(resolved):
            raise SentenceEmbeddingError(f"{where}: layers {layers} name the same layer twice "
                                         f"(resolved: {resolved})")
        layers = resolved
    elif len(set(layers)) != len(layers):
        raise SentenceEmbeddingError(f"{where}: layers {layers} repeat a layer")
    return {"pool": pool, "layers": layers, "special_tokens": special_tokens}


def pool_hidden_states(hidden_states, attention_mask, special_mask, spec: dict, sentence_token: str = "first"):
    """Pool one batch: (batch, d) float64 tensor for a resolved ``spec`` (see the module docstring).

    ``hidden_states`` is the model's tuple of (batch, seq, d) tensors, ``attention_mask`` (batch, seq)
    1 on real tokens, ``special_mask`` (batch, seq) bool, true on special tokens; ``sentence_token``
    the token ``cls`` reads (``first``, or ``last`` real token for causal models:
    :attr:`tokenuni.families.Family.sentence_token`).
    """
    import torch

    layer_mean = torch.stack([hidden_states[layer].double() for layer in spec["layers"]]).mean(dim=0)
    if spec["pool"] == "cls":
        return sentence_token_states(layer_mean, attention_mask, sentence_token)
    keep = attention_mask.bool()
    if not spec["special_tokens"]:
        keep = keep & ~special_mask
    counts = keep.sum(dim=1)
    if bool((counts == 0).any()):
        raise SentenceEmbeddingError("a sentence has no tokens left to pool (only special tokens?)")
    if spec["pool"] == "mean":
        weights = keep.unsqueeze(-1).double()
        return (layer_mean * weights).sum(dim=1) / counts.unsqueeze(-1).double()
    return layer_mean.masked_fill(~keep.unsqueeze(-1), float("-inf")).amax(dim=1)


def embed_sentences(corpus_path, model_spec: dict, poolings: dict[str, dict], out_path, *, corpus_name: str = "",
                    device: str = "auto", progress: bool = True) -> dict:
    """Run ``model_spec`` once over the corpus and write every pooling in ``poolings`` to ``out_path``.

    Tokenisation, batching and the forward pass are :func:`tokenuni.embed.forward_hidden_states`
    (the same as the token dumps). Returns a summary (sentences, tokens, truncated sentences,
    layers, hidden size, poolings with absolute layers, seconds, device, model source).
    """
    import torch

    if not isinstance(poolings, dict) or not poolings:
        raise SentenceEmbeddingError("embed_sentences needs at least one pooling (name -> {pool, layers})")
    for name, spec in poolings.items():
        validate_pooling(name, spec)  # fail before loading the model
    torch_device = select_device(device)
    source = resolve_model(model_spec)
    corpus = read_corpus(corpus_path)
    texts = corpus["text"].to_pylist()
    if not texts:
        raise SentenceEmbeddingError(f"corpus {corpus_path} is empty: nothing to embed")

    tokenizer, model = load_model(model_spec, torch_device, source)
    sentence_token = family_of(model.config).sentence_token
    n_layers = int(model.config.num_hidden_layers) + 1
    hidden_size = int(model.config.hidden_size)
    resolved = {name: validate_pooling(name, spec, n_layers) for name, spec in poolings.items()}
    max_length = effective_max_length(model_spec, model)
    input_ids, special_masks, truncated = tokenize(tokenizer, texts, max_length)
    lengths = [len(ids) for ids in input_ids]
    if truncated:
        log.warning("%d of %d sentences were longer than %d tokens and were truncated",
                    truncated, len(texts), max_length)

    pooled = {name: np.empty((len(texts), hidden_size), dtype=np.float32) for name in resolved}
    started = time.perf_counter()
    batches = forward_hidden_states(tokenizer, model, input_ids, int(model_spec.get("batch_size", 32)), torch_device,
                                    progress=progress, desc=f"sentences {model_spec['id']}",
                                    model_id=model_spec["id"])
    with torch.inference_mode():
        for chunk, hidden, attention_mask in batches:
            special = torch.zeros(attention_mask.shape, dtype=torch.bool)
            for row, i in enumerate(chunk):
                special[row, :len(special_masks[i])] = torch.as_tensor(special_masks[i], dtype=torch.bool)
            special = special.to(attention_mask.device)
            for name, spec in resolved.items():
                try:
                    values = pool_hidden_states(hidden, attention_mask, special, spec, sentence_token)
                except SentenceEmbeddingError as error:
                    ids = corpus["sentence_id"].to_numpy()[chunk].tolist()
                    raise SentenceEmbeddingError(
                        f"pooling {name!r} over {corpus_path} (sentences {ids}): {error}") from None
                pooled[name][chunk] = values.float().cpu().numpy()
    seconds = time.perf_counter() - started
    for name, values in pooled.items():
        if not np.isfinite(values).all():
            raise SentenceEmbeddingError(f"pooling {name!r} over {corpus_path}: NaN or Inf in the pooled vectors")

    metadata = {
        "kind": "sentence_embeddings",
        "model_id": model_spec["id"],
        "revision": model_spec.get("revision") or "",
        "model_source": source.describe(),
        "model_fingerprint": model_spec.get("fingerprint") or model_fingerprint(model_spec),
        "training_step": "" if model_spec.get("training_step") is None else str(model_spec["training_step"]),
        "corpus": corpus_name or str(corpus_path),
        "corpus_digest": (corpus.schema.metadata or {}).get(b"tokenuni.digest", b"").decode(),
        "corpus_max_sentences": (corpus.schema.metadata or {}).get(b"tokenuni.max_sentences", b"null").decode(),
        "max_length": str(max_length),
        "sentences": str(len(texts)),
        "tokens": str(int(sum(lengths))),
        "truncated_sentences": str(truncated),
        "n_layers": str(n_layers),
        "hidden_size": str(hidden_size),
        "poolings": json.dumps({name: {**spec, "requested_layers": list(poolings[name]["layers"]),
                                       **({"token": sentence_token} if spec["pool"] == "cls" else {})}
                                for name, spec in resolved.items()}),
        "family": family_of(model.config).name,
        "layer_convention": LAYER_CONVENTION,
        "versions": json.dumps(library_versions()),
    }
    write_sentences(out_path, corpus.select(CORPUS_COLUMNS), pooled, metadata)
    summary = {
        "sentences": len(texts), "tokens": int(sum(lengths)), "truncated_sentences": truncated,
        "layers": n_layers, "hidden_size": hidden_size, "poolings": resolved, "seconds": round(seconds, 3),
        "device": str(torch_device), "model_source": source.describe(),
    }
    log.info("wrote %s: %s", out_path, summary)
    return summary


def sentences_metadata(path) -> dict[str, str]:
    """The ``tokenuni.*`` metadata of a sentence-embedding file, keys without the prefix, values as stored
    (``poolings`` and ``versions`` are JSON strings), like :func:`tokenuni.corpora.corpus_metadata`."""
    return open_sentences(path).metadata


def read_sentences(path, pooling: str, expected: dict | None = None) -> tuple[pa.Table, np.ndarray]:
    """The corpus columns and the (n, d) float64 vectors of ``pooling`` from a file of :func:`embed_sentences`.

    ``expected``: what the file must have been written for (model, weights, corpus, layers, hidden size),
    checked first (:func:`tokenuni.store.check_provenance`); the file is opened once
    (:func:`tokenuni.sentence_store.open_sentences`).
    """
    handle = open_sentences(path).check(expected)
    return handle.corpus_columns(), handle.vectors(pooling)
