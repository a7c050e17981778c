"""Partition-function isotropy against brute force (numpy eigh + scipy logsumexp) on a real MiniLM dump,
and on analytic cases (isotropic Gaussian, a dominant direction, norms that overflow a naive exp)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from dump_helpers import layer_matrix
from metric_helpers import feed, token_batch
from scipy.special import logsumexp

from tokenuni.metrics import compute_metric
from tokenuni.metrics.partition_isotropy import PartitionIsotropy
from tokenuni.store import open_dump

RTOL = 1e-6


def brute_force(x, variant="uncentred", signs="both"):
    """Mu & Viswanath's I(V) with numpy: eigenvectors of VᵀV, log Z by scipy's logsumexp."""
    v = x - x.mean(axis=0) if variant == "centred" else x
    _, u = np.linalg.eigh(v.T @ v)
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    u = u * flip
    if signs == "both":
        u = np.hstack([u, -u])
    log_z = logsumexp(v @ u, axis=0)
    return math.exp(log_z.min() - log_z.max())


def value(table, layer, variant):
    rows = table[(table.metric == "partition_isotropy") & (table.layer == layer) & (table.variant == variant)]
    assert len(rows) == 1
    return float(rows.value.iloc[0]), int(rows.n.iloc[0])


@pytest.fixture(scope="module")
def tables(minilm_dump):
    return {signs: compute_metric(minilm_dump, PartitionIsotropy, {"signs": signs}, model="minilm", corpus="stsb-test",
                                  progress=False) for signs in ("both", "canonical")}


@pytest.mark.parametrize("signs", ["both", "canonical"])
@pytest.mark.parametrize("variant", ["uncentred", "centred"])
def test_equals_brute_force_on_minilm(tables, minilm_dump, variant, signs):
    for layer in range(open_dump(minilm_dump).n_layers):
        x = layer_matrix(minilm_dump, layer)
        ours, n = value(tables[signs], layer, variant)
        assert ours == pytest.approx(brute_force(x, variant, signs), rel=RTOL)
        assert n == len(x)
        assert 0 < ours <= 1


def test_both_signs_is_at_most_one_sign(tables):
    """U ∪ −U contains U, so its min/max ratio cannot be larger."""
    both, canonical = tables["both"], tables["canonical"]
    assert (both.sort_values(["layer", "variant"]).value.to_numpy()
            <= canonical.sort_values(["layer", "variant"]).value.to_numpy() * (1 + 1e-12)).all()


# -- analytic cases ----------------------------------------------------------------------------------
def run(x, chunks=1, **options):
    return {v.variant: v.value for v in feed(PartitionIsotropy(**options), x, chunks)}


def test_isotropic_gaussian_is_close_to_one():
    x = np.random.default_rng(0).standard_normal((40000, 8))
    values = run(x)
    assert values["uncentred"] > 0.95 and values["centred"] > 0.95


def test_dominant_direction_is_close_to_zero():
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(8)
    direction /= np.linalg.norm(direction)
    x = np.outer(rng.uniform(5, 10, 2000), direction) + 0.01 * rng.standard_normal((2000, 8))
    values = run(x)
    assert values["uncentred"] < 1e-3  # Z(w) ≈ Σ e^{a_i} ≫ Z(−w) ≈ Σ e^{−a_i}
    assert values["uncentred"] == pytest.approx(brute_force(x), rel=RTOL)
    assert values["centred"] == pytest.approx(brute_force(x, "centred"), rel=RTOL)
    canonical = run(x, signs="canonical")["uncentred"]
    assert canonical < 1e-2 and canonical == pytest.approx(brute_force(x, signs="canonical"), rel=RTOL)


def test_huge_norms_do_not_overflow():
    """Points ±s_k e_k with s_k = 1000 + k: Z(±e_k) = e^{s_k} + e^{−s_k} + 2(d − 1), so I = e^{−(d − 1)}."""
    d = 4
    scales = 1000.0 + np.arange(d)
    x = np.vstack([np.diag(scales), -np.diag(scales)])
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(x @ np.eye(d)).sum(axis=0)
        assert np.isinf(naive).all()  # the naive partition function overflows float64
    values = run(x, chunks=3)
    assert np.isfinite(values["uncentred"])
    assert values["uncentred"] == pytest.approx(math.exp(-(d - 1)), rel=1e-12)
    assert values["centred"] == pytest.approx(math.exp(-(d - 1)), rel=1e-12)  # μ = 0 here
    assert values["uncentred"] == pytest.approx(brute_force(x), rel=RTOL)
    # points on a sphere of radius 1000: exp(uᵀv) ~ e^1000 everywhere, I is moderate and exact in log domain
    rng = np.random.default_rng(2)
    cloud = rng.standard_normal((2000, 3))
    cloud = 1000.0 * cloud / np.linalg.norm(cloud, axis=1, keepdims=True)
    values = run(cloud, chunks=7)
    assert 0.05 < values["uncentred"] < 1
    assert values["uncentred"] == pytest.approx(brute_force(cloud), rel=RTOL)
    assert values["centred"] == pytest.approx(brute_force(cloud, "centred"), rel=RTOL)


def test_streaming_is_invariant_to_batching():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 10)) @ rng.standard_normal((10, 10)) + 1.0
    assert run(x, chunks=13) == pytest.approx(run(x, chunks=1), rel=1e-10)


def test_memory_is_bounded():
    rng = np.random.default_rng(4)
    d = 16
    metric = PartitionIsotropy()
    sizes = {}
    for index in range(2):
        metric.begin_pass(index)
        for _ in range(200):
            metric.update(token_batch(rng.standard_normal((50, d)) if index == 0 else rng.standard_normal((50, d))))
            sizes.setdefault(index, []).append(metric.memory_bytes())
    assert max(sizes[0]) == min(sizes[0])  # Gram + sum only
    assert max(sizes[1]) == min(sizes[1])  # + 2d directions per variant and their running max/sum
    assert max(sizes[1]) < 8 * (d * d + d + 2 * (d * 2 * d + 4 * d)) + 1024


def test_pass_order_is_enforced():
    metric = PartitionIsotropy()
    metric.begin_pass(0)
    metric.update(token_batch(np.eye(3)))
    assert metric.compute() == []  # second pass not run yet
    metric.pass_index = 1
    with pytest.raises(RuntimeError):
        metric.update(token_batch(np.eye(3)))  # pass 1 without begin_pass(1)
    metric.begin_pass(1)
    metric.update(token_batch(np.eye(3)[:2]))
    with pytest.raises(RuntimeError):
        metric.compute()  # pass 1 saw different tokens than pass 0
    with pytest.raises(ValueError):
        PartitionIsotropy(signs="random")
