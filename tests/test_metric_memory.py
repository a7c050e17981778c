"""Bounded memory: every metric streams a dump several times larger than its memory budget.

The assertion is on the accumulator's own allocations (:meth:`Metric.memory_bytes`, the tensors and
arrays it holds between batches), measured after every batch — not on wall time or process RSS.
"""
from __future__ import annotations

import numpy as np
import pytest

from tokenuni.metrics import METRICS, make_metric
from tokenuni.store import DumpWriter, layer_column, open_dump

TOKENS, DIM, TYPES, SENTENCE = 120_000, 64, 2_000, 40
BUDGET = 8 * 2**20  # bytes an accumulator may hold; the dump below is ~3.7 times larger


@pytest.fixture(scope="module")
def large_dump(tmp_path_factory):
    path = tmp_path_factory.mktemp("large") / "large.arrow"
    rng = np.random.default_rng(0)
    with DumpWriter(path, n_layers=1, hidden_size=DIM, metadata={"model_id": "synthetic", "layernorm": []}) as writer:
        for start in range(0, TOKENS, 4_000):
            n = 4_000
            rows = np.arange(start, start + n)
            token_id = rng.integers(0, TYPES, n)
            writer.write({
                "sentence_id": rows // SENTENCE, "position": (rows % SENTENCE).astype(np.int32),
                "token_id": token_id.astype(np.int32), "token": [f"t{t}" for t in token_id],
                "special": (rows % SENTENCE) == 0, "frequency": np.full(n, 60),
            }, [rng.standard_normal((n, DIM)).astype(np.float32) + 0.5])
    return path


@pytest.mark.parametrize("name", sorted(METRICS))
def test_accumulator_memory_is_bounded(large_dump, name):
    dump = open_dump(large_dump)
    assert dump.num_rows * DIM * 4 > 3 * BUDGET
    metric = make_metric(name, {}, "cpu").bind(0, dump.metadata)
    peak = 0
    for index in range(metric.passes):
        metric.begin_pass(index)
        for batch in dump.batches():
            metric.update(batch.rename_columns([*batch.schema.names[:-1], "vector"]))
            peak = max(peak, metric.memory_bytes())
    metric.compute()
    assert peak <= BUDGET, f"{name} held {peak / 2**20:.1f} MiB streaming {dump.num_rows} tokens"
    print(f"{name}: peak {peak / 2**20:.2f} MiB over {dump.num_rows} tokens x {DIM} dims")


def test_dump_column_is_named_per_layer(large_dump):
    assert open_dump(large_dump).reader.schema.names[-1] == layer_column(0)
