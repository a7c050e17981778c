"""The ground floor (tokenuni.numerics): the moment accumulator, eigenpairs and their signs, the seeded sample,
k-means, skewness and correlations, against numpy / scipy references."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from tokenuni.numerics import (
    MomentSums,
    ReservoirSample,
    canonical_signs,
    constant_up_to_rounding,
    descending_eigh,
    kmeans,
    kmeans_plusplus,
    kmeans_runs,
    pearson,
    seeded_generator,
    skewness,
    skewness_rows,
    spearman,
    squared_distances,
    token_hash,
)


def anisotropic(n=3000, d=8, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.geomspace(2.0, 0.05, d) + rng.standard_normal(d)
    x[:, 0] += offset
    return x


def reference(x):
    mean = x.mean(axis=0)
    return mean, (x - mean).T @ (x - mean)


def streamed(x, cuts):
    moments = MomentSums()
    for part in np.split(x, cuts):
        moments.update(torch.from_numpy(part))
    return moments


# -- MomentSums ----------------------------------------------------------------------------------------------------


def test_moments_equal_numpy():
    x = anisotropic()
    moments = streamed(x, [100, 1000, 1001, 2500])
    mean, scatter = reference(x)
    assert moments.count == len(x) and moments.dim == x.shape[1]
    np.testing.assert_allclose(moments.mean().numpy(), mean, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(moments.scatter().numpy(), scatter, rtol=1e-12, atol=1e-12 * np.abs(scatter).max())
    np.testing.assert_allclose(moments.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(moments.covariance(ddof=0).numpy(), np.cov(x, rowvar=False, ddof=0), rtol=1e-12,
                               atol=1e-14)
    gram = x.T @ x
    np.testing.assert_allclose(moments.uncentred_gram().numpy(), gram, rtol=1e-12, atol=1e-12 * np.abs(gram).max())
    assert torch.equal(moments.scatter(), moments.scatter().T)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_moments_do_not_depend_on_the_batching_beyond_rounding(offset):
    x = anisotropic(offset=offset)
    one = streamed(x, [])
    _, scatter = reference(x)
    scale = np.abs(scatter).max()
    for cuts in ([1], [7, 8, 9, 10], list(range(50, 3000, 50)), [2999]):
        other = streamed(x, cuts)
        assert other.count == one.count
        np.testing.assert_allclose(other.scatter().numpy(), one.scatter().numpy(), rtol=0, atol=1e-12 * scale)
        np.testing.assert_allclose(other.mean().numpy(), one.mean().numpy(), rtol=1e-14)


def test_merge_equals_one_stream_whatever_the_shifts():
    x = anisotropic(offset=1e3)
    whole = streamed(x, [500, 900])
    parts = [streamed(part, [37]) for part in np.split(x, [1200, 1201])]  # three different shifts
    merged = MomentSums().merge(parts[2]).merge(parts[0]).merge(MomentSums()).merge(parts[1])
    assert merged.count == whole.count
    scale = np.abs(whole.scatter().numpy()).max()
    np.testing.assert_allclose(merged.scatter().numpy(), whole.scatter().numpy(), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(merged.mean().numpy(), whole.mean().numpy(), rtol=1e-14)
    np.testing.assert_allclose(merged.uncentred_gram().numpy(), whole.uncentred_gram().numpy(), rtol=1e-13)


def test_an_unrepresentative_first_batch_costs_no_precision():
    """The first batch (which fixes the shift) is one token far out along the least-varying direction (30 σ √N):
    the shift alone would lose a factor up to N / n₁ (2e-12 here); the pairwise update loses nothing."""
    rng = np.random.default_rng(0)
    n = 20000
    x = rng.standard_normal((n, 4)) * np.array([1.0, 0.1, 0.01, 0.001])
    x[:, 0] += 1e4
    first = x.mean(axis=0) + np.array([0.0, 0.0, 0.0, 30 * 0.001 * np.sqrt(n)])
    x = np.concatenate([first[None], x])
    moments = streamed(x, [1] + list(range(1001, n, 1000)))
    _, scatter = reference(x)
    got = np.linalg.eigvalsh(moments.scatter().numpy())
    expected = np.linalg.eigvalsh(scatter)
    assert np.max(np.abs(got - expected) / expected) < 2e-13


def test_moments_reject_bad_input_and_cast_to_float64():
    moments = MomentSums()
    with pytest.raises(ValueError, match="no rows"):
        moments.mean()
    moments.update(torch.zeros((0, 3)))
    assert moments.count == 0
    moments.update(np.ones((4, 3), dtype=np.float32))
    assert moments.scatter().dtype == torch.float64
    with pytest.raises(ValueError, match="dimension"):
        moments.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        moments.update(np.ones(3))
    with pytest.raises(ValueError, match="ddof=1"):
        MomentSums().update(np.ones((1, 3))).covariance()


# -- eigenpairs -----------------------------------------------------------------------------------------------------


def test_descending_eigh_orders_and_signs_canonically():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    values = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    matrix = torch.from_numpy(q @ np.diag(values) @ q.T)
    got_values, vectors = descending_eigh(matrix)
    np.testing.assert_allclose(got_values.numpy(), values, rtol=1e-12)
    np.testing.assert_allclose((matrix @ vectors).numpy(), (vectors * got_values).numpy(), atol=1e-12)
    v = vectors.numpy()
    pivots = np.argmax(np.abs(v), axis=0)
    assert (v[pivots, np.arange(6)] > 0).all()
    # the same basis whatever signs the eigenvectors came with
    flipped_q = q * np.array([1, -1, 1, -1, -1, 1])
    flipped = torch.from_numpy(flipped_q @ np.diag(values) @ flipped_q.T)
    np.testing.assert_allclose(descending_eigh(flipped)[1].numpy(), v, atol=1e-12)


def test_canonical_signs_ties_take_the_first_largest_entry():
    vectors = torch.tensor([[-0.5, 0.0], [0.5, -1.0], [0.0, 0.0]], dtype=torch.float64)
    np.testing.assert_array_equal(canonical_signs(vectors).numpy(), [[0.5, 0.0], [-0.5, 1.0], [0.0, 0.0]])
    assert canonical_signs(torch.zeros((3, 0))).shape == (3, 0)


# -- reservoir sample -----------------------------------------------------------------------------------------------


def offer_all(sample, sentence, position, x, cuts, order=None):
    order = np.arange(len(x)) if order is None else order
    for part in np.split(order, cuts):
        sample.update(torch.from_numpy(sentence[part]), torch.from_numpy(position[part]), x=torch.from_numpy(x[part]))
    return sample.rows()


def test_reservoir_sample_is_the_bottom_k_of_the_hash_whatever_the_batching():
    rng = np.random.default_rng(0)
    n = 5000
    sentence, position = np.repeat(np.arange(250), 20), np.tile(np.arange(20), 250)
    x = rng.standard_normal((n, 4))
    first = offer_all(ReservoirSample(300, seed=7), sentence, position, x, [1000, 2000, 4321])
    again = offer_all(ReservoirSample(300, seed=7), sentence, position, x, list(range(7, n, 97)), rng.permutation(n))
    assert set(first) == {"sentence_id", "position", "x"} and len(first["x"]) == 300
    for key in first:
        assert torch.equal(first[key], again[key])
    keys = token_hash(7, torch.from_numpy(sentence), torch.from_numpy(position)).numpy()
    chosen = np.sort(np.argsort(keys, kind="stable")[:300])  # rows sorted by (sentence, position) = row order here
    np.testing.assert_array_equal(first["x"].numpy(), x[chosen])
    other = offer_all(ReservoirSample(300, seed=8), sentence, position, x, [2500])
    assert not torch.equal(first["x"], other["x"])


def test_reservoir_sample_keeps_at_most_twice_its_size_and_checks_columns():
    sample = ReservoirSample(10, seed=0)
    for start in range(0, 1000, 7):
        ids = torch.arange(start, min(start + 7, 1000))
        sample.update(ids, torch.zeros_like(ids), row=ids)
        assert len(sample.keys) <= 20
    assert len(sample) == 10 and sample.seen == 1000
    with pytest.raises(ValueError, match="different lengths"):
        sample.update(torch.arange(3), torch.zeros(3, dtype=torch.int64), row=torch.arange(2))
    with pytest.raises(ValueError, match="columns"):
        sample.update(torch.arange(3), torch.zeros(3, dtype=torch.int64), other=torch.arange(3))
    assert ReservoirSample(5).rows() == {}


# -- k-means --------------------------------------------------------------------------------------------------------


def test_kmeans_is_deterministic_and_finds_separated_blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.from_numpy(np.concatenate([c + rng.standard_normal((60, 2)) for c in centres]))
    labels, found, inertia = kmeans(x, 3, seed=4)
    again = kmeans(x, 3, seed=4)
    assert torch.equal(labels, again[0]) and torch.equal(found, again[1]) and inertia == again[2]
    truth = np.repeat(np.arange(3), 60)
    assert len({(int(a), int(b)) for a, b in zip(labels, truth)}) == 3  # the blobs, up to relabelling
    own = found[labels]
    assert inertia == pytest.approx(float(((x - own) ** 2).sum()), rel=1e-12)
    other = kmeans(x, 3, seed=5, n_init=1)[0]  # another seed: the same partition here
    assert len({(int(a), int(b)) for a, b in zip(labels, other)}) == 3


# -- skewness -------------------------------------------------------------------------------------------------------


def test_skewness_matches_scipy_and_is_zero_for_constant_input():
    rng = np.random.default_rng(0)
    for values in (rng.exponential(size=50), rng.standard_normal(7), np.geomspace(1, 1e-3, 30), [1.0, 2.0]):
        assert skewness(values) == pytest.approx(scipy.stats.skew(values), rel=1e-12, abs=1e-15)
    assert skewness(np.ones(5)) == 0.0
    assert skewness(np.full(9, 0.1)) == 0.0  # 0.1 is not exact: its mean's rounding leaves a variance of ~ε²
    assert skewness(torch.tensor([3.0, 1.0, 1.0])) == pytest.approx(scipy.stats.skew([3.0, 1.0, 1.0]), rel=1e-12)
    assert skewness([]) == 0.0


def test_skewness_rows_over_valid_entries_equal_scipy_per_row():
    rng = np.random.default_rng(1)
    values = rng.exponential(size=(5, 12))
    lengths = [12, 3, 7, 1, 12]
    valid = np.arange(12)[None, :] < np.array(lengths)[:, None]
    values[4] = 0.25
    got = skewness_rows(torch.from_numpy(np.where(valid, values, 0.0)), torch.from_numpy(valid)).numpy()
    for row, length in enumerate(lengths):
        with warnings.catch_warnings():  # scipy warns about the constant row (and returns nan)
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = scipy.stats.skew(values[row, :length])
        assert got[row] == (0.0 if math.isnan(expected) else pytest.approx(expected, rel=1e-12))
    assert constant_up_to_rounding(1e-33, 1.0) and not constant_up_to_rounding(1e-20, 1.0)


# -- correlations ---------------------------------------------------------------------------------------------------


def test_correlations_are_scipys():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200)
    y = np.round(x + rng.standard_normal(200))  # ties
    assert pearson(x, y) == scipy.stats.pearsonr(x, y).statistic
    assert spearman(x, y) == scipy.stats.spearmanr(x, y).statistic
    assert spearman(x, y) == pytest.approx(pearson(scipy.stats.rankdata(x), scipy.stats.rankdata(y)), abs=1e-12)
    assert pearson(x[:, None], list(y)) == pearson(x, y)  # (N, 1) predictions of a regression head
    assert pearson([1.0, 2.0], [2.0, 5.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("x, y", [([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]),
                                  ([1.0], [2.0]), ([], []), ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),
                                  ([1.0, 2.0, np.inf], [1.0, 2.0, 3.0])])
def test_undefined_correlations_are_nan_without_warnings(x, y, recwarn):
    assert math.isnan(pearson(x, y)) and math.isnan(spearman(x, y))
    assert not recwarn.list


def test_correlations_of_different_lengths_are_an_error():
    with pytest.raises(ValueError, match="3 values with 2"):
        pearson([1, 2, 3], [1, 2])


# -- k-means: the batched runs equal the one-run-at-a-time algorithm ---------------------------------------------

def _reference_lloyd(x, centers, x_sq, max_iter, tol):
    """The one-run Lloyd loop kmeans() used before kmeans_runs batched it (thin products, index_add_ sums)."""

    k = centers.shape[0]
    labels = None
    for _ in range(max_iter):
        distances = squared_distances(x, centers, x_sq)
        new_labels = torch.argmin(distances, dim=1)
        counts = torch.bincount(new_labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # re-seed emptied clusters with the points farthest from their centres
            own = distances.gather(1, new_labels[:, None])[:, 0]
            far = torch.topk(own, min(len(empty), x.shape[0])).indices
            new_labels = new_labels.clone()
            new_labels[far] = empty[:len(far)]
            counts = torch.bincount(new_labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        new_centers = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), centers)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        converged = labels is not None and bool(torch.equal(labels, new_labels))
        labels = new_labels
        if converged or shift <= tol:
            break
    distances = squared_distances(x, centers, x_sq)
    labels = torch.argmin(distances, dim=1)
    inertia = float(distances.gather(1, labels[:, None]).sum())
    return labels, centers, inertia




def _reference_kmeans(x, k, n_init, seed, key):
    x = x.to(dtype=torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    x_sq = (centred * centred).sum(dim=1)
    tol = 1e-4 * float(centred.var(dim=0, unbiased=False).mean())
    best = None
    for restart in range(n_init):
        centers = kmeans_plusplus(centred, k, seeded_generator(seed, *key, k, restart), x_sq)
        labels, centers, inertia = _reference_lloyd(centred, centers, x_sq, 300, tol)
        if best is None or inertia < best[2] * (1 - 1e-12):
            best = (labels, centers, inertia)
    return best[0], best[1] + mean, best[2]


def test_batched_kmeans_runs_equal_one_run_at_a_time():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((5, 24)) * 4
    x = centres[rng.integers(0, 5, 700)] + rng.standard_normal((700, 24))
    x[:40] = x[40:80]  # exact duplicates, as in an embedding layer
    x = torch.from_numpy(x)
    runs = [((r,), k) for r in range(2) for k in (2, 3, 5, 8)]
    batched = kmeans_runs(x, runs, n_init=3, seed=7)
    for key, k in runs:
        labels, found, inertia = _reference_kmeans(x, k, 3, 7, key)
        assert torch.equal(batched[key, k][0], labels), (key, k)
        assert batched[key, k][2] == pytest.approx(inertia, rel=1e-12)
        torch.testing.assert_close(batched[key, k][1], found, rtol=1e-12, atol=1e-12)


# -- k-means: float32 products give the float64 labels -------------------------------------------------------

def _hard_points(seed: int = 3):
    """Blobs with a rogue dimension (100x the others), exact duplicates, and points exactly or nearly
    equidistant from two blob centres (ties and near ties below float32's resolution)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((4, 32)) * 3
    x = means[rng.integers(0, 4, 600)] + rng.standard_normal((600, 32))
    x[:, 5] *= 100.0
    x[:30] = x[30:60]
    midpoint = (x[100] + x[200]) / 2
    x[300:310] = midpoint + rng.standard_normal((10, 32)) * 1e-9  # near ties
    x[310] = midpoint  # an exact tie between x[100] and x[200]
    return torch.from_numpy(x)


def test_float32_products_give_the_labels_of_float64_products(monkeypatch):
    from tokenuni.numerics import clustering

    x = _hard_points()
    runs = [((r,), k) for r in range(2) for k in (2, 3, 5, 9)]
    fast = kmeans_runs(x, runs, n_init=3, seed=5)
    monkeypatch.setattr(clustering, "float32_products_are_ieee", lambda device: False)
    exact = kmeans_runs(x, runs, n_init=3, seed=5)
    for run in runs:
        assert torch.equal(fast[run][0], exact[run][0]), run
        assert torch.equal(fast[run][1], exact[run][1]), run  # the same centre arithmetic: bit for bit
        assert fast[run][2] == exact[run][2], run


def test_nearest_two_checks_float32_ties_and_keeps_its_bounds():
    from tokenuni.numerics.clustering import _nearest_two

    x = _hard_points()
    x = x - x.mean(dim=0)
    x_sq = (x * x).sum(dim=1)
    # two runs of k = 3: the second run's first two centres are the tie's two points
    centres = torch.stack([x[[0, 1, 2]], x[[100, 200, 3]]])
    stacked = centres.reshape(-1, x.shape[1])
    exact = _nearest_two(x, None, x_sq, x_sq.sqrt(), None, stacked, 2, 3)
    fast = _nearest_two(x, x.to(torch.float32), x_sq, x_sq.sqrt(), None, stacked, 2, 3)
    # x[310], the midpoint of the second run's first two centres, is a tie within float64's own rounding (the
    # float64 values differ in their last digits, by how the product is blocked): either centre is right there
    assert int(fast[0][1, 310]) in (0, 1)
    fast[0][1, 310] = exact[0][1, 310]
    assert torch.equal(fast[0], exact[0])  # the near ties (1e-9 apart, far below float32's resolution) included
    distances = torch.cdist(x, stacked).T.reshape(2, 3, -1)  # (runs, k, points)
    own = distances.gather(1, exact[0][:, None]).squeeze(1)
    others = distances.scatter(1, exact[0][:, None], float("inf")).amin(dim=1)
    scale = 1e-9 * float(x_sq.sqrt().max())
    assert bool((fast[1] >= own - scale).all()) and bool((fast[2] <= others + scale).all())


def test_reduced_precision_float32_products_are_not_trusted():
    from tokenuni.numerics.clustering import float32_products_are_ieee

    assert float32_products_are_ieee("cpu")
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not float32_products_are_ieee("cpu")
    finally:
        torch.set_float32_matmul_precision(before)


def test_float32_overflow_falls_back_to_float64():
    from tokenuni.numerics.clustering import _nearest_two

    x = _hard_points()[:100] * 1e22  # ‖x‖² ≈ 1e49: beyond float32's range (3.4e38)
    x = x - x.mean(dim=0)
    x_sq = (x * x).sum(dim=1)
    stacked = x[[0, 1, 2, 3, 4, 5]]
    exact = _nearest_two(x, None, x_sq, x_sq.sqrt(), None, stacked, 2, 3)
    fast = _nearest_two(x, x.to(torch.float32), x_sq, x_sq.sqrt(), None, stacked, 2, 3)
    assert torch.equal(fast[0], exact[0])
    assert bool(torch.isfinite(fast[1]).all())
