"""Tokenising, length-sorted batching and the one forward pass of the project (every hidden state per batch)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from collections.abc import Iterator

import numpy as np

from tokenuni.embed.model import check_finite
from tokenuni.families import family_of, max_positions

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tokenuni.embed")


#: texts per tokenizer call: the fast tokenizer's encodings (offsets, masks, token strings) of one call are held at
#: once, about 1.5 KB per token, so a window of 100,000 sentences tokenised in one call peaked at gigabytes
TOKENIZE_CHUNK = 2_000


def tokenize(tokenizer, texts: list[str], max_length: int):
    """Token ids and special-token masks per text (truncated to ``max_length``), plus the truncated count.
    Tokenised ``TOKENIZE_CHUNK`` texts at a time (each text's ids do not depend on the others)."""
    input_ids, special_masks, truncated = [], [], 0
    for start in range(0, len(texts), TOKENIZE_CHUNK):
        chunk = texts[start:start + TOKENIZE_CHUNK]
        encoded = tokenizer(chunk, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                            add_special_tokens=True)
        input_ids += encoded["input_ids"]
        special_masks += encoded["special_tokens_mask"]
        full_lengths = tokenizer(chunk, truncation=False, add_special_tokens=True, return_length=True,
                                 verbose=False)["length"]
        truncated += int(sum(full > max_length for full in full_lengths))
    return input_ids, special_masks, truncated


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
                          ) -> Iterator[tuple[np.ndarray, tuple, torch.Tensor]]:
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
