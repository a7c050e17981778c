"""Helpers shared by the metric tests: a small test dump's layer read whole, as the references need it."""
from __future__ import annotations

import numpy as np

from tokenuni.store import layer_column, open_dump, vectors


def layer_tokens(dump_path, layer, special=False):
    """(X, sentence ids) of one layer of a dump, read whole (fine for the small test dumps), float64;
    special tokens left out unless ``special``."""
    xs, ids, flags = [], [], []
    for batch in open_dump(dump_path).batches():
        xs.append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        ids.append(batch.column("sentence_id").to_numpy())
        flags.append(batch.column("special").to_numpy(zero_copy_only=False))
    x, ids, flags = np.concatenate(xs), np.concatenate(ids), np.concatenate(flags)
    keep = np.ones(len(x), bool) if special else ~flags
    return x[keep], ids[keep]


def layer_matrix(dump_path, layer):
    """The non-special token vectors of one layer, read whole, float64."""
    return layer_tokens(dump_path, layer)[0]
