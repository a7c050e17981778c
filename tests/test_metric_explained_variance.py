"""The spectrum metric's explained_variance rows against numpy's SVD on a real MiniLM dump, and analytic cases."""
from __future__ import annotations

import numpy as np
import pytest
from dump_helpers import layer_matrix
from metric_helpers import feed

from tokenuni.metrics import compute_metric
from tokenuni.metrics.spectrum import Spectrum, explained_variance
from tokenuni.store import open_dump

RTOL = 1e-6


def reference(x, k):
    s = np.linalg.svd(x, compute_uv=False)
    return (s[:k] ** 2).sum() / (s ** 2).sum()


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, Spectrum, {"explained_variance_k": [1, 10, 50, 5000]}, model="minilm",
                          corpus="stsb-test", progress=False)


@pytest.mark.parametrize("variant", ["uncentred", "centred"])
def test_explained_variance_equals_numpy_svd(table, minilm_dump, variant):
    for layer in range(open_dump(minilm_dump).n_layers):
        x = layer_matrix(minilm_dump, layer)
        if variant == "centred":
            x = x - x.mean(axis=0)
        rows = table[(table.metric == "explained_variance") & (table.layer == layer) & (table.variant == variant)]
        values = dict(zip(rows.component.astype(int), rows.value))
        assert sorted(values) == [1, 10, 50, 5000]
        for k in (1, 10, 50):
            assert values[k] == pytest.approx(reference(x, k), rel=RTOL)
        assert values[5000] == pytest.approx(1.0, rel=1e-12)  # k beyond the rank: everything
        assert values[1] < values[10] < values[50] < 1


def test_default_components_and_existing_rows_unchanged(minilm_dump):
    table = compute_metric(minilm_dump, Spectrum, {}, model="m", corpus="c", progress=False)
    rows = table[table.metric == "explained_variance"]
    assert sorted(rows.component.unique()) == [1, 10, 50]
    assert len(rows) == 7 * 2 * 3
    assert set(table.metric) == {"singular_value", "singular_value_skewness", "effective_rank", "explained_variance"}


def run(x, chunks=1, **options):
    return {(v.variant, v.component): v.value for v in feed(Spectrum(**options), x, chunks)
            if v.metric == "explained_variance"}


def test_analytic_cases():
    rng = np.random.default_rng(0)
    line = np.outer(rng.standard_normal(100), rng.standard_normal(6))
    assert run(line, explained_variance_k=[1])[("uncentred", 1)] == pytest.approx(1.0, abs=1e-12)
    # equal variance in 4 orthogonal directions of 8: k/4 of the variance in the top k
    cube = np.array(np.meshgrid(*[[-1.0, 1.0]] * 4)).reshape(4, -1).T
    x = np.hstack([cube, np.zeros((16, 4))]) @ np.linalg.qr(rng.standard_normal((8, 8)))[0].T + 2.0
    values = run(x, explained_variance_k=[1, 2, 3, 4, 8])
    assert [values[("centred", k)] for k in (1, 2, 3, 4, 8)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0], abs=1e-12)
    assert explained_variance(np.zeros(3), [1]) == {}
    with pytest.raises(ValueError):
        Spectrum(explained_variance_k=[0])


def test_batching_invariance():
    x = np.random.default_rng(1).standard_normal((300, 12)) @ np.random.default_rng(2).standard_normal((12, 12))
    assert run(x, chunks=13) == pytest.approx(run(x, chunks=1), rel=1e-10)
