"""Per-layer hidden states of a model over a corpus, written as an Arrow dump (see :mod:`tokenuni.store`).

The model runs with ``output_hidden_states=True`` in float32 unless another dtype is asked for
(transformers 5 otherwise loads a checkpoint in its stored dtype). Sentences are tokenised once,
sorted by length (longest first) and batched, so padding is minimal; only real tokens (attention
mask 1) are written. What differs by architecture — the special tokens flagged in the token index,
padding and pad tokens, token type and position ids, the usable length — comes from
:mod:`tokenuni.families`; a model of an unsupported family (T5, …) is refused before its weights load.

Modules: :mod:`~tokenuni.embed.model` (:func:`load_model`, the one place that loads a model;
:class:`HiddenStateError`; :func:`layernorm_scales`), :mod:`~tokenuni.embed.forward` (:func:`tokenize`,
:func:`length_sorted_batches`, :func:`effective_max_length`, :func:`forward_hidden_states`),
:mod:`~tokenuni.embed.corpus` (:func:`embed_corpus`: windows, dump precision, the dump writer thread);
every name is importable from ``tokenuni.embed``.
"""
from __future__ import annotations

import logging

from tokenuni.embed.corpus import (  # noqa: F401
    DUMP_DTYPES, WINDOW_SENTENCES, _host, _stored, _windows, dump_precision, embed_corpus)
from tokenuni.embed.forward import (  # noqa: F401
    effective_max_length, forward_hidden_states, length_sorted_batches, tokenize)
from tokenuni.embed.model import (  # noqa: F401
    TORCH_DTYPES, HiddenStateError, _block_list, check_finite, layernorm_scales, load_model)

log = logging.getLogger(__name__)
