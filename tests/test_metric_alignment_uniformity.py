"""Wang-Isola uniformity (ICML 2020) against brute-force numpy/scipy on a real MiniLM dump, and on analytic
cases (uniform on spheres, identical points, extreme t)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import torch
from dump_helpers import layer_matrix
from metric_helpers import feed, token_batch

from tokenuni.metrics import compute_metric
from tokenuni.metrics.alignment_uniformity import AlignmentUniformity
from tokenuni.metrics.base import TokenBatch
from tokenuni.store import layer_column, open_dump

RTOL = 1e-6


def reference_uniformity(x, t=2.0):
    """Wang & Isola's definition by brute force: log of the mean over pairs i < j of exp(-t ||u_i - u_j||^2)."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    squared = scipy.spatial.distance.pdist(unit, "sqeuclidean")
    return float(scipy.special.logsumexp(-t * squared) - np.log(len(squared)))


def reference_bootstrap(x, resamples, seed, t=2.0):
    """Per resample (same seeded draws as the metric): Σ_{i≠j} w_i w_j K_ij / Σ_{i≠j} w_i w_j, dense."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    kernel = np.exp(-t * scipy.spatial.distance.cdist(unit, unit, "sqeuclidean"))
    np.fill_diagonal(kernel, 0.0)
    index = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    values = []
    for draw in index:
        w = np.bincount(draw, minlength=len(x)).astype(float)
        values.append(np.log(w @ kernel @ w / (w.sum() ** 2 - (w ** 2).sum())))
    return np.array(values)


def run(x, chunks=1, **options):
    """The single row (or None), feeding x (one token per position of one long sentence) in ``chunks``."""
    rows = feed(AlignmentUniformity(**options), x, chunks, positions=np.arange(len(x)))
    assert len(rows) <= 1
    return rows[0] if rows else None


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, AlignmentUniformity, {}, model="minilm", corpus="stsb-test", progress=False)


def test_uniformity_equals_brute_force_on_minilm(table, minilm_dump):
    layers = open_dump(minilm_dump).n_layers
    assert set(table.layer) == set(range(layers))
    assert set(table.metric) == {"wang_isola_uniformity"}
    for layer in range(layers):
        x = layer_matrix(minilm_dump, layer)
        assert len(x) < 5000  # the default sample keeps every token
        row = table[table.layer == layer].iloc[0]
        assert row.value == pytest.approx(reference_uniformity(x), rel=RTOL)
        assert row.n == len(x) and row.sample_size == len(x) and row.seed == 0 and row.variant == ""  # used size
        assert row.spread > 0


def test_bootstrap_spread_equals_dense_reference(minilm_dump):
    x = layer_matrix(minilm_dump, 5)
    row = run(x, bootstrap=20, seed=3, chunk_size=100)  # chunks exercise the running log-sum-exp shift
    reference = reference_bootstrap(x, 20, 3)
    assert row.spread == pytest.approx(np.std(reference, ddof=1), rel=RTOL)


def test_uniformity_on_a_sample_equals_brute_force_on_that_sample(minilm_dump):
    x = layer_matrix(minilm_dump, 2)
    metric = AlignmentUniformity(sample_size=250, seed=11)
    for batch in open_dump(minilm_dump).batches():
        metric.update(TokenBatch.from_record_batch(batch, "cpu", vector_column=layer_column(2)))
    (row,) = metric.compute()
    sample = metric.sample.rows()["x"].numpy()
    assert len(sample) == 250 < len(x)
    assert row.value == pytest.approx(reference_uniformity(sample), rel=RTOL)
    assert row.sample_size == 250 and row.seed == 11 and row.n == 250


# -- analytic cases --------------------------------------------------------------------------------
def test_uniform_on_the_two_sphere():
    # u·v is uniform on [-1, 1] on S²: E exp(-2||u - v||²) = e^{-4} E e^{4 u·v} = (1 - e^{-8}) / 8
    rng = np.random.default_rng(0)
    row = run(rng.standard_normal((3000, 3)))
    assert row.value == pytest.approx(np.log((1 - np.exp(-8)) / 8), abs=0.02)


def test_uniform_on_a_high_dimensional_sphere_tends_to_minus_four():
    # u·v ≈ N(0, 1/d): log E exp(-4 + 4 u·v) ≈ -4 + 8/d
    rng = np.random.default_rng(1)
    row = run(rng.standard_normal((2000, 384)))
    assert row.value == pytest.approx(-4 + 8 / 384, abs=0.005)


def test_identical_directions_give_zero():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(16)
    assert run(np.tile(direction, (40, 1))).value == pytest.approx(0.0, abs=1e-12)
    scaled = np.outer(rng.uniform(0.1, 10, 40), direction)  # only the direction counts
    assert run(scaled).value == pytest.approx(0.0, abs=1e-12)


def test_two_antipodal_points_give_minus_four_t():
    x = np.array([[1.0, 0.0], [-3.0, 0.0]])
    assert run(x).value == pytest.approx(-8.0, rel=1e-12)
    assert run(x, t=0.5).value == pytest.approx(-2.0, rel=1e-12)


def test_large_t_does_not_underflow(minilm_dump):
    x = layer_matrix(minilm_dump, 1)
    row = run(x, t=1000.0, bootstrap=5, chunk_size=64)
    assert np.isfinite(row.value) and np.isfinite(row.spread)
    assert row.value == pytest.approx(reference_uniformity(x, t=1000.0), rel=RTOL)
    assert row.variant == "t=1000"


def test_zero_vectors_and_too_few_tokens():
    x = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    row = run(x)
    assert row.n == 2 and row.value == pytest.approx(-2 * 2.0, rel=1e-12)  # orthogonal: ||u - v||² = 2
    assert run(np.array([[1.0, 2.0]])) is None
    assert run(np.zeros((5, 3))) is None


def test_batching_invariance():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 8))
    whole = run(x, chunks=1, sample_size=300)
    split = run(x, chunks=13, sample_size=300)
    assert split.value == pytest.approx(whole.value, rel=1e-12)
    assert split.spread == pytest.approx(whole.spread, rel=1e-12)


def test_memory_is_bounded():
    rng = np.random.default_rng(4)
    metric = AlignmentUniformity(sample_size=100)
    sizes = []
    for b in range(60):
        metric.update(token_batch(rng.standard_normal((50, 32)), sentence_ids=np.full(50, b), positions=np.arange(50)))
        sizes.append(metric.memory_bytes())
    assert max(sizes) <= 2 * 100 * (32 + 8) * 8
    assert max(sizes[30:]) <= max(sizes[:30])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    cpu = compute_metric(minilm_dump, AlignmentUniformity, {}, model="m", corpus="c", device="cpu", progress=False)
    gpu = compute_metric(minilm_dump, AlignmentUniformity, {}, model="m", corpus="c", device="cuda", progress=False)
    np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(gpu.spread.to_numpy(), cpu.spread.to_numpy(), rtol=1e-6)
