"""LID (Amsaleg et al., KDD 2015) against brute-force scipy kNN and scikit-dimension on a real MiniLM dump,
and on analytic cases (linear subspaces, Gaussians, duplicates)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from dump_helpers import layer_matrix
from metric_helpers import feed, token_batch

from tokenuni.metrics import compute_metric
from tokenuni.metrics.base import TokenBatch
from tokenuni.metrics.lid import LocalIntrinsicDimension
from tokenuni.store import layer_column, open_dump

RTOL = 1e-6


def reference_lid(x, k, squared=False):
    """Per-point LID of the distinct rows of x by scipy cdist + np.sort; and the number of duplicates."""
    distinct = np.unique(x, axis=0)
    d = scipy.spatial.distance.cdist(distinct, distinct)
    np.fill_diagonal(d, np.inf)
    r = np.sort(d, axis=1)[:, :k]
    if squared:
        r = r ** 2
    lid = -1.0 / np.mean(np.log(r / r[:, -1:]), axis=1)
    return lid, len(x) - len(distinct)


def run(x, chunks=1, **options):
    """Rows keyed by metric name, feeding x (one token per position of one long sentence) in ``chunks``."""
    metric = LocalIntrinsicDimension(**options)
    return {v.metric: v for v in feed(metric, x, chunks, positions=np.arange(len(x)))}, metric


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, LocalIntrinsicDimension, {}, model="minilm", corpus="stsb-test", progress=False)


def row(table, metric, layer):
    rows = table[(table.metric == metric) & (table.layer == layer)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_lid_equals_brute_force_on_minilm(table, minilm_dump):
    layers = open_dump(minilm_dump).n_layers
    assert set(table.layer) == set(range(layers))
    for layer in range(layers):
        x = layer_matrix(minilm_dump, layer)
        assert len(x) < 5000  # the default sample keeps every token: the reference sees the same points
        lid, duplicates = reference_lid(x, 100)
        assert row(table, "lid_mean", layer).value == pytest.approx(lid.mean(), rel=RTOL)
        assert row(table, "lid_std", layer).value == pytest.approx(lid.std(), rel=RTOL)
        assert row(table, "lid_median", layer).value == pytest.approx(np.median(lid), rel=RTOL)
        assert row(table, "lid_duplicate_tokens", layer).value == duplicates
        assert row(table, "lid_duplicate_tokens", layer).n == len(x)
        mean = row(table, "lid_mean", layer)
        assert mean.n == len(x) - duplicates and row(table, "lid_k", layer).value == 100
        assert mean.sample_size == len(x) and mean.seed == 0 and mean.variant == ""  # the sample used: every token
        assert 0 < mean.spread < 0.2 * lid.std()  # bootstrap std of a mean of ~n points: ≈ std/√n
    assert row(table, "lid_duplicate_tokens", 0).value > 0  # embedding output: same token, same position


def test_lid_matches_scikit_dimension(minilm_dump):
    skdim = pytest.importorskip("skdim")
    x = np.unique(layer_matrix(minilm_dump, 4), axis=0)
    k = 50
    estimator = skdim.id.MLE().fit(x, n_neighbors=k, comb="mean")
    # scikit-dimension's MLE is Levina-Bickel's (k-1)/Σlog(r_k/r_i); Amsaleg's is k/Σlog(r_k/r_i)
    expected = estimator.dimension_pw_ * k / (k - 1)
    rows, _ = run(x, k=k)
    assert rows["lid_mean"].value == pytest.approx(expected.mean(), rel=RTOL)
    assert rows["lid_median"].value == pytest.approx(np.median(expected), rel=RTOL)


def test_lid_on_a_sample_equals_brute_force_on_that_sample(minilm_dump):
    x = layer_matrix(minilm_dump, 3)
    metric = LocalIntrinsicDimension(sample_size=300, seed=7, k=20)
    dump = open_dump(minilm_dump)
    for batch in dump.batches():
        tokens = TokenBatch.from_record_batch(batch, "cpu", vector_column=layer_column(3))
        metric.update(tokens)
    rows = {v.metric: v for v in metric.compute()}
    sample = metric.sample.rows()["x"].numpy()
    assert len(sample) == 300 < len(x)
    lid, duplicates = reference_lid(sample, 20)
    assert rows["lid_mean"].value == pytest.approx(lid.mean(), rel=RTOL)
    assert rows["lid_median"].value == pytest.approx(np.median(lid), rel=RTOL)
    assert rows["lid_mean"].sample_size == 300 and rows["lid_mean"].seed == 7
    assert rows["lid_duplicate_tokens"].value == duplicates


def test_squared_distances_halve_the_estimate(minilm_dump):
    x = layer_matrix(minilm_dump, 6)
    true, _ = run(x, k=30)
    squared, _ = run(x, k=30, squared_distances=True)
    reference, _ = reference_lid(x, 30, squared=True)
    assert squared["lid_mean"].variant == "squared_distances"
    assert squared["lid_mean"].value == pytest.approx(reference.mean(), rel=RTOL)
    assert squared["lid_mean"].value == pytest.approx(true["lid_mean"].value / 2, rel=1e-12)


# -- analytic cases --------------------------------------------------------------------------------
def embedded(points, dim=384, seed=0):
    """points (n, d) mapped isometrically into ``dim`` dimensions by a random orthonormal basis, plus an offset."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, points.shape[1])))
    return points @ basis.T + rng.standard_normal(dim)


def test_uniform_cube_in_a_five_dimensional_subspace():
    rng = np.random.default_rng(0)
    x = embedded(rng.uniform(size=(5000, 5)))
    rows, _ = run(x, bootstrap=0)
    assert rows["lid_mean"].value == pytest.approx(5.0, rel=0.15)
    assert rows["lid_median"].value == pytest.approx(5.0, rel=0.15)
    assert rows["lid_mean"].spread is None


def test_isotropic_gaussian_in_ten_dimensions():
    rng = np.random.default_rng(1)
    rows, _ = run(rng.standard_normal((5000, 10)), bootstrap=0)
    assert rows["lid_mean"].value == pytest.approx(10.0, rel=0.15)


def test_duplicates_are_collapsed_and_counted():
    rng = np.random.default_rng(2)
    distinct = rng.standard_normal((200, 6))
    x = np.concatenate([distinct, distinct[:30], distinct[:5]])  # 35 duplicate rows
    rows, _ = run(x, k=10)
    clean, _ = run(distinct, k=10)
    assert rows["lid_duplicate_tokens"].value == 35
    assert rows["lid_mean"].n == 200
    assert np.isfinite(rows["lid_mean"].value)
    assert rows["lid_mean"].value == pytest.approx(clean["lid_mean"].value, rel=1e-12)
    identical, _ = run(np.ones((50, 4)))  # one distinct point: no neighbours to estimate from
    assert identical == {}


def test_k_is_lowered_for_few_points_and_recorded():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3))
    rows, _ = run(x, k=100)  # e.g. a layer with one short sentence
    assert rows["lid_k"].value == 11
    assert rows["lid_mean"].value == pytest.approx(reference_lid(x, 11)[0].mean(), rel=RTOL)
    assert run(np.zeros((2, 3)) + np.arange(2)[:, None], k=5)[0] == {}  # two points: no rows


def test_rank_one_data_has_lid_one():
    rng = np.random.default_rng(4)
    x = np.outer(rng.uniform(-1, 1, 3000), rng.standard_normal(16))
    rows, _ = run(x, k=20)
    # Σ_i log(r_k/r_i) ~ Gamma(k − 1, d) for a Poisson process, so E[k / Σ] = k d / (k − 2): 20/18 here
    assert rows["lid_mean"].value == pytest.approx(20 / 18, rel=0.03)


def test_batching_invariance():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((700, 8))
    whole, _ = run(x, chunks=1, sample_size=400, k=15)
    split, _ = run(x, chunks=13, sample_size=400, k=15)
    for name in whole:
        assert split[name].value == pytest.approx(whole[name].value, rel=1e-12)
        assert split[name].spread == whole[name].spread


def test_memory_is_bounded():
    rng = np.random.default_rng(6)
    metric = LocalIntrinsicDimension(sample_size=100)
    sizes = []
    for b in range(60):
        x = rng.standard_normal((50, 32))
        metric.update(token_batch(x, sentence_ids=np.full(50, b), positions=np.arange(50)))
        sizes.append(metric.memory_bytes())
    bound = 2 * 100 * (32 + 8) * 8
    assert max(sizes) <= bound
    assert max(sizes[30:]) <= max(sizes[:30])  # does not grow with N


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    cpu = compute_metric(minilm_dump, LocalIntrinsicDimension, {}, model="m", corpus="c", device="cpu", progress=False)
    gpu = compute_metric(minilm_dump, LocalIntrinsicDimension, {}, model="m", corpus="c", device="cuda", progress=False)
    np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(gpu.spread.to_numpy(dtype=float), cpu.spread.to_numpy(dtype=float), rtol=1e-6)


def test_near_duplicates_far_from_the_origin_keep_exact_distances():
    # distances 1e-6 between points of norm ~3e4: the Gram form alone would be wrong by O(1) here
    rng = np.random.default_rng(7)
    base = rng.standard_normal((300, 16)) * 100 + 1000
    x = np.concatenate([base, base[:50] + 1e-6 * rng.standard_normal((50, 16))])
    rows, _ = run(x, k=10)
    lid, duplicates = reference_lid(x, 10)
    assert duplicates == 0
    assert rows["lid_mean"].value == pytest.approx(lid.mean(), rel=RTOL)
    assert rows["lid_median"].value == pytest.approx(np.median(lid), rel=RTOL)
