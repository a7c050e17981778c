"""Helpers shared by the metric tests: a :class:`TokenBatch` built from numpy arrays, and a metric fed a matrix
in chunks over every pass, as the runner streams a dump."""
from __future__ import annotations

import numpy as np
import torch

from tokenuni.metrics.base import TokenBatch


def token_batch(x, sentence_ids=None, positions=None, token_ids=None, frequency=None, special=None) -> TokenBatch:
    """A batch of the rows of ``x`` (float64). Sentence ids, token ids and frequencies default to zeros, special
    flags to False; without ``positions`` the batch has none (TokenBatch.positions then numbers the tokens within
    each sentence of the batch, so a sampled metric's draw depends on the batching: pass them where it matters)."""
    n = len(x)

    def int64(values):
        return torch.zeros(n, dtype=torch.int64) if values is None else torch.as_tensor(values, dtype=torch.int64)

    return TokenBatch(x=torch.as_tensor(x, dtype=torch.float64), sentence_id=int64(sentence_ids),
                      token_id=int64(token_ids),
                      special=torch.zeros(n, dtype=torch.bool) if special is None else torch.as_tensor(special, dtype=torch.bool),
                      frequency=int64(frequency), position=None if positions is None else int64(positions))


def feed(metric, x, chunks=1, **columns):
    """``metric.compute()`` after feeding the rows of ``x`` in ``chunks`` batches (np.array_split) on every pass.

    ``columns`` are :func:`token_batch`'s keyword arguments (sentence_ids, positions, token_ids, frequency,
    special), whole arrays cut like ``x``; a column given as None is left to its default. Empty parts are
    skipped (Metric.update of an empty batch does nothing anyway)."""
    columns = {name: np.asarray(values) for name, values in columns.items() if values is not None}
    parts = [part for part in np.array_split(np.arange(len(x)), chunks) if len(part)]
    for index in range(metric.passes):
        metric.begin_pass(index)
        for part in parts:
            metric.update(token_batch(x[part], **{name: values[part] for name, values in columns.items()}))
    return metric.compute()
