"""Per-layer hidden states of a model over a corpus, written as an Arrow dump (see :mod:`tokenuni.store`).

The model runs with ``output_hidden_states=True`` in float32 unless another dtype is asked for
(transformers 5 otherwise loads a checkpoint in its stored dtype). Sentences are tokenised once,
sorted by length (longest first) and batched, so padding is minimal; only real tokens (attention
mask 1) are written. What differs by architecture — the special tokens flagged in the token index,
padding and pad tokens, token type and position ids, the usable length — comes from
:mod:`tokenuni.families`; a model of an unsupported family (T5, …) is refused before its weights load.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

import numpy as np

from tokenuni.corpora import CorpusError, has_visible_text, read_corpus
from tokenuni.devices import select_device
from tokenuni.errors import TokenuniError
from tokenuni.files import library_versions
from tokenuni.families import family_of, max_positions, prepare_tokenizer
from tokenuni.sources import (ModelSource, SourceError, how_to_provide, model_fingerprint, require_safe_weights,
                              resolve_model)
from tokenuni.store import DumpWriter

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
#: dump dtype per forward-pass dtype (bfloat16 values are exact in float32; Arrow has no bfloat16)
DUMP_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "float32"}


class HiddenStateError(TokenuniError, RuntimeError):
    """A model produced NaN or Inf hidden states; the message names the model and the layer."""


def check_finite(hidden, attention_mask, model_name: str) -> None:
    """Raise :class:`HiddenStateError` at the first layer whose real tokens hold NaN or ±Inf.

    A float16 forward pass overflows beyond ±65504 (the largest float16); then the message says so and
    suggests bfloat16 (float32's range) or float32.
    """
    import torch

    real = attention_mask.bool()
    for layer, states in enumerate(hidden):
        bad = (~torch.isfinite(states)).any(dim=-1) & real
        if bool(bad.any()):
            what = "Inf" if bool(torch.isinf(states[bad]).any()) else "NaN"
            message = f"model {model_name} produced {what} hidden states at layer {layer} ({int(bad.sum())} token(s))"
            if states.dtype == torch.float16:
                message += ("; the float16 forward pass overflowed (|x| > 65504): set dtype: bfloat16 or "
                            "dtype: float32 for this model")
            raise HiddenStateError(message)


def load_model(spec: dict, device, source: ModelSource | None = None):
    """Tokenizer and model for a model config entry, on ``device``, in eval mode and ``spec['dtype']``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = source or resolve_model(spec)
    revision = spec.get("revision") if source.kind == "hub" else None
    trust = bool(spec.get("trust_remote_code", False))
    require_safe_weights(spec, source)
    log.info("loading %s from %s", spec["id"], source.describe())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, revision=revision, trust_remote_code=trust)
    except OSError as error:
        raise SourceError(f"model {spec['id']}: cannot load it from {source.describe()} ({error}); "
                          + how_to_provide(spec["id"])) from error
    try:
        config = AutoConfig.from_pretrained(source.location, revision=revision, trust_remote_code=trust)
    except OSError as error:
        raise SourceError(f"model {spec['id']}: cannot read its config from {source.describe()} ({error}); "
                          + how_to_provide(spec["id"])) from error
    family = family_of(config, f"model {spec['id']}")  # refuse T5 & co. before loading any weight
    prepare_tokenizer(tokenizer, family, f"model {spec['id']}")
    try:
        model = AutoModel.from_pretrained(
            source.location,
            config=config,
            revision=revision,
            trust_remote_code=trust,
            dtype=getattr(torch, TORCH_DTYPES[spec.get("dtype", "float32")]),
            use_safetensors=None if spec.get("allow_pickle_weights") else True,
        )
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise
        raise SourceError(f"model {spec['id']}: the weights in {source.describe()} do not have the shapes its "
                          "config.json implies (transformers' load report above lists them); the weights belong to "
                          "another configuration: put the config.json saved with these weights beside them "
                          "(`tokenuni check` names every tensor that differs)") from error
    except OSError as error:
        safetensors = "" if spec.get("allow_pickle_weights") else (
            " (only *.safetensors weights are loaded unless `allow_pickle_weights: true`)")
        raise SourceError(f"model {spec['id']}: cannot load its weights from {source.describe()}{safetensors} "
                          f"({error}); " + how_to_provide(spec["id"])) from error
    model.to(device).eval()
    return tokenizer, model


def _block_list(model, n_blocks: int):
    """The ModuleList of the model's transformer blocks (the first one with ``n_blocks`` entries), or None."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_blocks:
            return name
    return None


def layernorm_scales(model) -> list[dict]:
    """Every LayerNorm/RMSNorm of ``model`` with the dump layer it shapes and the norms of γ and β.

    Over-smoothing (Shi et al., "Revisiting Over-smoothing in BERT from the Perspective of Graph",
    ICLR 2022) depends on the layer-norm scale: a norm inside transformer block i is attributed to
    layer i + 1 (the block's output, hidden_states[i + 1]); norms before the blocks (embeddings) to
    layer 0 and after them (a final norm, e.g. GPT-2's ``ln_f``) to the last layer. Where blocks share
    weights (ALBERT) the shared norms are attributed to every block layer (``layer`` = -1 → all).
    """
    n_blocks = int(model.config.num_hidden_layers)
    blocks = _block_list(model, n_blocks)
    seen_blocks = False
    rows = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or not ("norm" in type(module).__name__.lower() or name.lower().endswith(("layernorm", "ln_f", "ln_1", "ln_2"))):
            continue
        if weight.ndim != 1:
            continue
        if blocks is not None and name.startswith(blocks + "."):
            block = int(name[len(blocks) + 1:].split(".")[0])
            layer, part = block + 1, ".".join(name[len(blocks) + 1:].split(".")[1:])
            seen_blocks = True
        elif blocks is None:
            layer, part = (0 if "embed" in name.lower() else -1), name
        else:
            layer, part = (n_blocks if seen_blocks else 0), name
        bias = getattr(module, "bias", None)
        rows.append({
            "layer": layer, "module": part, "size": int(weight.numel()),
            "gamma_norm": float(weight.detach().float().norm()),
            "beta_norm": float(bias.detach().float().norm()) if bias is not None else 0.0,
        })
    return rows


def tokenize(tokenizer, texts: list[str], max_length: int):
    """Token ids and special-token masks per text (truncated to ``max_length``), plus the truncated count."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                        add_special_tokens=True)
    full_lengths = tokenizer(texts, truncation=False, add_special_tokens=True, return_length=True,
                             verbose=False)["length"]
    truncated = int(sum(full > max_length for full in full_lengths))
    return encoded["input_ids"], encoded["special_tokens_mask"], truncated


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Indices of the inputs, longest first, in chunks of ``batch_size`` (stable for equal lengths)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def effective_max_length(model_spec: dict, model) -> int:
    """``model_spec['max_length']`` (default 128), capped at the positions the model takes (with a warning).

    RoBERTa and MPNet count positions from ``padding_idx + 1``: they take two fewer tokens than their
    ``max_position_embeddings`` (:func:`tokenuni.families.max_positions`).
    """
    max_length = int(model_spec.get("max_length", 128))
    model_max = max_positions(model.config)
    if model_max and max_length > model_max:
        log.warning("max_length %d exceeds the model's %d positions; using %d", max_length, model_max, model_max)
        max_length = int(model_max)
    return max_length


def forward_hidden_states(tokenizer, model, input_ids: list[list[int]], batch_size: int, device, *,
                          progress: bool = True, desc: str = "embed", model_id: str = ""
                          ) -> Iterator[tuple[np.ndarray, tuple, "torch.Tensor"]]:
    """The one forward pass of the project: every hidden state of ``model`` over ``input_ids``.

    Inputs are batched by :func:`length_sorted_batches` (longest first, so padding is minimal),
    right-padded by ``tokenizer.pad`` and run under ``torch.inference_mode`` with
    ``output_hidden_states=True`` and the inputs the model's family takes
    (:meth:`tokenuni.families.Family.model_inputs`). Yields, per batch, ``(chunk, hidden_states, attention_mask)``:
    ``chunk`` the indices into ``input_ids`` of the batch's rows, ``hidden_states`` the model's tuple of
    ``num_hidden_layers + 1`` tensors (batch, seq, d) on ``device`` (index 0 = embedding output,
    i = output of block i), ``attention_mask`` (batch, seq) with 1 on real tokens. A progress bar
    (``desc``) counts real tokens.
    """
    import torch
    from tqdm.auto import tqdm

    n_layers = int(model.config.num_hidden_layers) + 1
    family = family_of(model.config, f"model {model_id}" if model_id else "")
    lengths = [len(ids) for ids in input_ids]
    bar = tqdm(total=int(sum(lengths)), unit="tok", desc=desc, disable=not progress)
    try:
        for chunk in length_sorted_batches(lengths, batch_size):
            features = tokenizer.pad({"input_ids": [input_ids[i] for i in chunk]}, return_tensors="pt")
            features = {k: v.to(device) for k, v in features.items()}
            with torch.inference_mode():
                output = model(**family.model_inputs(**features), output_hidden_states=True)
            hidden = output.hidden_states
            name = model_id or getattr(model.config, "name_or_path", "") or type(model).__name__
            if len(hidden) != n_layers:
                raise RuntimeError(f"model {name} returned {len(hidden)} hidden states, expected {n_layers}")
            check_finite(hidden, features["attention_mask"], name)
            yield chunk, hidden, features["attention_mask"]
            bar.update(int(features["attention_mask"].sum()))
    finally:
        bar.close()


def embed_corpus(corpus_path, model_spec: dict, out_path, *, corpus_name: str = "", device: str = "auto",
                 progress: bool = True) -> dict:
    """Run ``model_spec`` over the corpus at ``corpus_path`` and write every layer to ``out_path``.

    Returns a summary (sentences, tokens, truncated sentences, layers, seconds, tokens/s, device).
    """
    import torch

    torch_device = select_device(device)
    source = resolve_model(model_spec)
    corpus = read_corpus(corpus_path)
    texts = corpus["text"].to_pylist()
    sentence_ids = corpus["sentence_id"].to_numpy()
    if not texts:
        raise CorpusError(f"corpus {corpus_path} is empty: nothing to embed")

    tokenizer, model = load_model(model_spec, torch_device, source)
    family = family_of(model.config)
    max_length = effective_max_length(model_spec, model)
    input_ids, special_masks, truncated = tokenize(tokenizer, texts, max_length)
    lengths = [len(ids) for ids in input_ids]
    if 0 in lengths:
        raise CorpusError(f"corpus {corpus_path}: sentence_id {int(sentence_ids[lengths.index(0)])} tokenises to no "
                          f"tokens with {model_spec['id']} (an empty text); set drop_empty: true for this corpus")
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in input_ids])
    frequency = np.bincount(all_ids, minlength=int(all_ids.max()) + 1)
    n_layers = int(model.config.num_hidden_layers) + 1
    hidden_size = int(model.config.hidden_size)
    dtype = DUMP_DTYPES[model_spec.get("dtype", "float32")]
    empty = sum(not has_visible_text(text) for text in texts)
    metadata = {
        "model_dtype": model_spec.get("dtype", "float32"),
        "empty_sentences": str(empty),
        "model_id": model_spec["id"],
        "revision": model_spec.get("revision") or "",
        "model_source": source.describe(),
        "model_fingerprint": model_spec.get("fingerprint") or model_fingerprint(model_spec),
        "corpus": corpus_name or str(corpus_path),
        "corpus_digest": (corpus.schema.metadata or {}).get(b"tokenuni.digest", b"").decode(),
        "max_length": str(max_length),
        "sentences": str(len(texts)),
        "tokens": str(int(sum(lengths))),
        "truncated_sentences": str(truncated),
        "frequency": "occurrences of token_id in the tokenised (truncated) corpus, special tokens included",
        "versions": library_versions(),
        "family": family.name,
        "is_decoder": str(family.causal).lower(),
        "special_tokens": family.added_tokens,
        "training_step": "" if model_spec.get("training_step") is None else str(model_spec["training_step"]),
        "layernorm": layernorm_scales(model),
    }
    if truncated:
        log.warning("%d of %d sentences were longer than %d tokens and were truncated", truncated, len(texts), max_length)
    if empty:
        log.warning("%d of %d sentences are empty, whitespace-only or without visible characters (kept: drop_empty "
                    "is off for this corpus); "
                    "they are embedded as special tokens only", empty, len(texts))

    started = time.perf_counter()
    batches = forward_hidden_states(tokenizer, model, input_ids, int(model_spec.get("batch_size", 32)), torch_device,
                                    progress=progress, desc=f"embed {model_spec['id']}", model_id=model_spec["id"])
    def write_chunk(writer, chunk, layers) -> None:
        # index columns, in the same row order as h[mask] (row-major over batch, then position)
        ids = [np.asarray(input_ids[i], dtype=np.int64) for i in chunk]
        index = {
            "sentence_id": np.concatenate([np.full(len(t), sentence_ids[i]) for t, i in zip(ids, chunk)]),
            "position": np.concatenate([np.arange(len(t), dtype=np.int32) for t in ids]),
            "token_id": np.concatenate(ids).astype(np.int32),
            "token": tokenizer.convert_ids_to_tokens(np.concatenate(ids).tolist()),
            "special": np.concatenate([np.asarray(special_masks[i], dtype=bool) for i in chunk]),
            "frequency": frequency[np.concatenate(ids)],
        }
        writer.write(index, layers)

    # One writer thread overlaps the Arrow writing of batch k with the forward pass of batch k + 1; at most
    # one write is in flight (bounded memory), its error surfaces at the next batch, and the pool is
    # drained before the DumpWriter closes or aborts (the `with` exits run in reverse order).
    with DumpWriter(out_path, n_layers=n_layers, hidden_size=hidden_size, dtype=dtype, metadata=metadata) as writer, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="dump-writer") as pool, torch.inference_mode():
        pending = None
        for chunk, hidden, attention_mask in batches:
            mask = attention_mask.bool()
            layers = [h[mask].float().cpu().numpy() for h in hidden]
            if pending is not None:
                pending.result()
            pending = pool.submit(write_chunk, writer, chunk, layers)
        if pending is not None:
            pending.result()
    seconds = time.perf_counter() - started
    summary = {
        "sentences": len(texts), "tokens": int(sum(lengths)), "truncated_sentences": truncated,
        "empty_sentences": empty,
        "layers": n_layers, "hidden_size": hidden_size, "seconds": round(seconds, 3),
        "tokens_per_second": round(sum(lengths) / max(seconds, 1e-9), 1), "device": str(torch_device),
        "model_source": source.describe(),
    }
    log.info("wrote %s: %s", out_path, summary)
    return summary
