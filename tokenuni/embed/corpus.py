"""The corpus-level driver :func:`embed_corpus`: windows, the dump precision, the dump writer thread, the consumer."""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np

from tokenuni.corpora import CorpusError, has_visible_text, read_corpus
from tokenuni.devices import select_device
from tokenuni.embed.forward import effective_max_length, forward_hidden_states, tokenize
from tokenuni.embed.model import HiddenStateError, layernorm_scales, load_model
from tokenuni.families import family_of
from tokenuni.files import library_versions
from tokenuni.sources import model_fingerprint, resolve_model
from tokenuni.store import DUMP_PRECISIONS, DumpError, DumpWriter

log = logging.getLogger("tokenuni.embed")
#: dump dtype per forward-pass dtype (bfloat16 values are exact in float32; Arrow has no bfloat16)
DUMP_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "float32"}


#: sentences tokenised, length-sorted and embedded together: a corpus larger than this is embedded window by
#: window, so memory holds one window's token ids (the frequency count is one more tokenising pass first)
WINDOW_SENTENCES = 100_000


def dump_precision(model_spec: dict) -> str:
    """The dump precision of a model entry: ``dump_precision``, else float16 for a float16 forward, else float32."""
    return model_spec.get("dump_precision") or DUMP_DTYPES[model_spec.get("dtype", "float32")]


def _stored(states, precision: str):
    """Real-token states of one layer (n, d) rounded to the dump precision, on their device (float32, float16 or
    bfloat16): the values a reader of the dump gets back (as float32), and that the moments are taken of."""
    import torch

    return {"float32": states.float(), "float16": states.to(torch.float16), "bfloat16": states.to(torch.bfloat16)}[precision]


def _host(stored) -> np.ndarray:
    """The host copy DumpWriter stores: float32 / float16 values, or bfloat16's 16 bits as uint16."""
    import torch

    if stored.dtype == torch.bfloat16:
        return stored.view(torch.int16).cpu().numpy().view(np.uint16)
    return stored.cpu().numpy()


def _windows(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)] or [slice(0, 0)]


def embed_corpus(corpus_path, model_spec: dict, out_path=None, *, corpus_name: str = "", device: str = "auto",
                 progress: bool = True, consumer=None, window_sentences: int = WINDOW_SENTENCES) -> dict:
    """Run ``model_spec`` over the corpus at ``corpus_path``; write every layer to the dump ``out_path`` and/or give
    every batch to ``consumer``.

    ``consumer``: a factory ``consumer(n_layers, hidden_size, metadata)`` returning an object with ``reads`` (how
    many passes over the corpus it needs), ``begin_read(i)`` and ``update(index, layers)`` -- ``index`` the batch's
    token index as tensors on the device (``token`` as a numpy array of strings), ``layers`` every layer's (n, d)
    states rounded to the dump precision, as float64 on the device (the values a dump reader would get). The
    metrics suite (:class:`tokenuni.metrics.suite.Suite`) and the dump's moments
    (:class:`tokenuni.metrics.suite.LayerMoments`) are such consumers. With ``out_path=None`` nothing is written
    (corpora larger than the disk); a consumer that asks for two reads gets two forward passes (a dump is
    written on the first only). The dump precision (``model_spec["dump_precision"]``: float32, bfloat16 or
    float16) is recorded in the dump's metadata (``dtype``).

    Memory is bounded in the corpus size: the corpus is embedded in windows of ``window_sentences`` sentences
    (tokenised, length-sorted and batched within the window; one window = the whole corpus below that size),
    after one tokenising pass that counts the frequencies.

    Returns a summary (sentences, tokens, truncated sentences, layers, seconds, tokens/s, device, precision).
    """
    import torch

    torch_device = select_device(device)
    source = resolve_model(model_spec)
    corpus = read_corpus(corpus_path)
    texts = corpus["text"].to_pylist()
    sentence_ids = corpus["sentence_id"].to_numpy()
    if not texts:
        raise CorpusError(f"corpus {corpus_path} is empty: nothing to embed")
    if out_path is None and consumer is None:
        raise ValueError("embed_corpus: neither a dump path nor a consumer: nothing would be kept")

    tokenizer, model = load_model(model_spec, torch_device, source)
    family = family_of(model.config)
    max_length = effective_max_length(model_spec, model)
    windows = _windows(len(texts), max(int(window_sentences), 1))
    tokenised = None
    frequency = np.zeros(0, dtype=np.int64)
    truncated = 0
    total_tokens = 0
    for window in windows:  # the frequency count (and the check for empty texts) over the whole corpus first
        input_ids, special_masks, window_truncated = tokenize(tokenizer, texts[window], max_length)
        lengths = [len(ids) for ids in input_ids]
        if 0 in lengths:
            raise CorpusError(f"corpus {corpus_path}: sentence_id {int(sentence_ids[window][lengths.index(0)])} "
                              f"tokenises to no tokens with {model_spec['id']} (an empty text); set drop_empty: true "
                              "for this corpus")
        ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in input_ids])
        counts = np.bincount(ids, minlength=int(ids.max()) + 1)
        if len(counts) > len(frequency):
            frequency = np.concatenate([frequency, np.zeros(len(counts) - len(frequency), dtype=np.int64)])
        frequency[:len(counts)] += counts
        truncated += window_truncated
        total_tokens += int(sum(lengths))
        if len(windows) == 1:
            tokenised = (input_ids, special_masks)  # one window: tokenise once
    n_layers = int(model.config.num_hidden_layers) + 1
    hidden_size = int(model.config.hidden_size)
    precision = dump_precision(model_spec)
    if precision not in DUMP_PRECISIONS:
        raise DumpError(f"model {model_spec['id']}: dump_precision {precision!r} not supported "
                        f"(choose {', '.join(DUMP_PRECISIONS)})")
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
        "tokens": str(total_tokens),
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
    # the consumer sees the metadata a reader of the dump would (strings; JSON for structured values)
    as_read = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    sink = consumer(n_layers, hidden_size, {**as_read, "dtype": precision, "n_layers": str(n_layers),
                                            "hidden_size": str(hidden_size)}) if consumer is not None else None
    reads = int(getattr(sink, "reads", 1)) if sink is not None else 1

    def batches_of(window, input_ids):
        return forward_hidden_states(tokenizer, model, input_ids, int(model_spec.get("batch_size", 32)), torch_device,
                                     progress=progress, desc=f"embed {model_spec['id']}", model_id=model_spec["id"])

    def index_of(window, input_ids, special_masks, chunk, with_tokens: bool) -> dict:
        # index columns, in the same row order as h[mask] (row-major over batch, then position)
        ids = [np.asarray(input_ids[i], dtype=np.int64) for i in chunk]
        window_ids = sentence_ids[window]
        flat = np.concatenate(ids)
        return {
            "sentence_id": np.concatenate([np.full(len(t), window_ids[i]) for t, i in zip(ids, chunk)]),
            "position": np.concatenate([np.arange(len(t), dtype=np.int32) for t in ids]),
            "token_id": flat.astype(np.int32),
            "token": tokenizer.convert_ids_to_tokens(flat.tolist()) if with_tokens else None,
            "special": np.concatenate([np.asarray(special_masks[i], dtype=bool) for i in chunk]),
            "frequency": frequency[flat],
        }

    def work(writer, index, host, stored) -> None:
        if writer is not None:
            writer.write(index, host)
        if sink is not None:
            sink.update({"sentence_id": torch.from_numpy(index["sentence_id"].astype(np.int64)).to(torch_device),
                         "position": torch.from_numpy(index["position"].astype(np.int64)).to(torch_device),
                         "token_id": torch.from_numpy(index["token_id"].astype(np.int64)).to(torch_device),
                         "special": torch.from_numpy(index["special"]).to(torch_device),
                         "frequency": torch.from_numpy(index["frequency"]).to(torch_device),
                         "token": np.asarray(index["token"], dtype=str)},
                        [states.to(torch.float64) for states in stored])

    started = time.perf_counter()
    for read in range(reads):
        if sink is not None and hasattr(sink, "begin_read"):
            sink.begin_read(read)
        writing = out_path is not None and read == 0
        # One worker thread overlaps the Arrow writing (and the consumer's accumulation) of batch k with the forward
        # pass of batch k + 1; at most one batch is in flight (bounded memory), its error surfaces at the next
        # batch, and the pool is drained before the DumpWriter closes or aborts (`with` exits in reverse order).
        with (DumpWriter(out_path, n_layers=n_layers, hidden_size=hidden_size, dtype=precision, metadata=metadata)
              if writing else nullcontext()) as writer, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="dump-writer") as pool, torch.inference_mode():
            pending = None
            for window in windows:
                input_ids, special_masks = tokenised or tokenize(tokenizer, texts[window], max_length)[:2]
                for chunk, hidden, attention_mask in batches_of(window, input_ids):
                    mask = attention_mask.bool()
                    stored = [_stored(h[mask], precision) for h in hidden]
                    if precision == "float16":
                        for layer, states in enumerate(stored):
                            if not bool(torch.isfinite(states).all()):
                                raise HiddenStateError(
                                    f"model {model_spec['id']}: layer {layer} overflows a float16 dump (|x| > 65504): "
                                    "set dump_precision: bfloat16 (float32's range) or float32 for this model")
                    host = [_host(states) for states in stored] if writing else None
                    index = index_of(window, input_ids, special_masks, chunk, with_tokens=True)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(work, writer, index, host, stored)
            if pending is not None:
                pending.result()
    seconds = time.perf_counter() - started
    summary = {
        "sentences": len(texts), "tokens": total_tokens, "truncated_sentences": truncated,
        "empty_sentences": empty,
        "layers": n_layers, "hidden_size": hidden_size, "seconds": round(seconds, 3),
        "tokens_per_second": round(total_tokens * reads / max(seconds, 1e-9), 1), "device": str(torch_device),
        "model_source": source.describe(), "precision": precision, "forward_passes": reads,
        "windows": len(windows),
    }
    log.info("embedded %s: %s", out_path or "(no dump)", summary)
    return summary
