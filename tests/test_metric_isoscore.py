"""IsoScore / IsoScore* against the authors' package ``isoscore`` (module ``IsoScore``) and the
participation-ratio identity on a real MiniLM dump, and on analytic cases."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from IsoScore import IsoScore as isoscore_package
from metric_helpers import feed, token_batch

from tokenuni.metrics import compute_metric
from tokenuni.metrics.isoscore import IsoScoreMetric, isoscore_from_covariance, isoscore_from_variances
from tokenuni.numerics import token_hash
from tokenuni.store import layer_column, open_dump, vectors

RTOL = 1e-6


def layer_rows(dump_path, layer):
    """(X, sentence ids, positions) of the non-special tokens of one layer, read whole."""
    xs, ids, positions, flags = [], [], [], []
    for batch in open_dump(dump_path).batches():
        xs.append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        ids.append(batch.column("sentence_id").to_numpy())
        positions.append(batch.column("position").to_numpy())
        flags.append(batch.column("special").to_numpy(zero_copy_only=False))
    keep = ~np.concatenate(flags)
    return np.concatenate(xs)[keep], np.concatenate(ids)[keep], np.concatenate(positions)[keep]


def reservoir_rows(ids, positions, size, seed):
    """Indices of the bottom-``size`` tokens by the seeded hash of (sentence_id, position)."""
    keys = token_hash(seed, torch.as_tensor(ids), torch.as_tensor(positions)).numpy()
    return np.sort(np.argsort(keys, kind="stable")[:size])


def participation_ratio_score(x):
    """(PR − 1)/(n − 1), PR = (Σλ)²/Σλ² = tr(Σ)²/‖Σ‖_F² (no eigendecomposition)."""
    cov = np.cov(x.T)
    return (np.trace(cov) ** 2 / (cov ** 2).sum() - 1) / (x.shape[1] - 1)


def row(table, metric, layer):
    rows = table[(table.metric == metric) & (table.layer == layer)]
    assert len(rows) == 1, (metric, layer, len(rows))
    return rows.iloc[0]


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, IsoScoreMetric, {"sample_size": 300, "seed": 7, "bootstrap": 10},
                          model="minilm", corpus="stsb-test", progress=False)


def test_isoscore_equals_package_on_minilm(table, minilm_dump):
    for layer in range(open_dump(minilm_dump).n_layers):
        x, _, _ = layer_rows(minilm_dump, layer)
        ours = row(table, "isoscore", layer)
        assert ours.value == pytest.approx(float(isoscore_package.IsoScore(x)), rel=RTOL)
        assert ours.value == pytest.approx(participation_ratio_score(x), rel=1e-9)
        assert ours.n == len(x) and pd_isna(ours.sample_size) and pd_isna(ours.spread)


def test_isoscore_star_equals_package_on_minilm(table, minilm_dump):
    for layer in range(open_dump(minilm_dump).n_layers):
        x, ids, positions = layer_rows(minilm_dump, layer)
        assert len(x) > 300  # the mini-batch really is a subset
        sample = x[reservoir_rows(ids, positions, 300, 7)]
        reference = float(isoscore_package.IsoScore_star(sample, torch.as_tensor(np.cov(x.T)), 0.2))
        ours = row(table, "isoscore_star", layer)
        assert ours.value == pytest.approx(reference, rel=RTOL)
        assert (ours.sample_size, ours.seed, ours.n) == (300, 7, len(x))
        assert 0 < ours.spread < 0.1


def pd_isna(value):
    return bool(pd.isna(value))


# -- analytic cases ----------------------------------------------------------------------------------
def run(x, chunks=1, tokens_per_sentence=10, **options):
    metric = IsoScoreMetric(**options)
    rows = feed(metric, x, chunks, sentence_ids=np.arange(len(x)) // tokens_per_sentence,
                positions=np.arange(len(x)) % tokens_per_sentence)
    return metric, {v.metric: v for v in rows}


def test_isotropic_gaussian_scores_one():
    x = np.random.default_rng(0).standard_normal((20000, 10))
    _, rows = run(x, sample_size=5000, bootstrap=0)
    assert rows["isoscore"].value > 0.99
    assert rows["isoscore_star"].value > 0.99
    assert rows["isoscore_star"].spread is None  # bootstrap disabled


def test_rank_one_data_scores_zero():
    rng = np.random.default_rng(1)
    x = np.outer(rng.standard_normal(500), rng.standard_normal(12)) + 3.0  # a line, off the origin
    _, rows = run(x, sample_size=100)
    assert rows["isoscore"].value == pytest.approx(0.0, abs=1e-9)  # the paper's lower bound
    assert rows["isoscore_star"].value == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_k_of_n_dimensions_used_equally(k):
    """Equal variance in k of n directions: k dimensions used, IsoScore = (k − 1)/(n − 1) exactly."""
    n = 8
    cube = np.array(list(itertools.product([-1.0, 1.0], repeat=k)))  # covariance exactly c·I_k
    rotation, _ = np.linalg.qr(np.random.default_rng(k).standard_normal((n, n)))
    x = np.hstack([cube, np.zeros((len(cube), n - k))]) @ rotation.T + 0.5
    x = np.tile(x, (2, 1))  # N ≥ n
    _, rows = run(x, sample_size=len(x))
    assert rows["isoscore"].value == pytest.approx((k - 1) / (n - 1), abs=1e-12)
    assert isoscore_from_variances([1.0] * k + [0.0] * (n - k)) == pytest.approx((k - 1) / (n - 1), abs=1e-14)


def test_gaussian_in_k_dimensions_is_close_to_k_minus_one_over_n_minus_one():
    rng = np.random.default_rng(2)
    x = np.zeros((20000, 16))
    x[:, :4] = rng.standard_normal((20000, 4))
    _, rows = run(x, sample_size=2000)
    assert rows["isoscore"].value == pytest.approx(3 / 15, abs=0.01)


def test_zeta_limits():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    metric, full = run(x, zeta=1.0, sample_size=100, seed=4)
    assert full["isoscore_star"].value == pytest.approx(full["isoscore"].value, rel=1e-12)
    assert full["isoscore_star"].spread == pytest.approx(0.0, abs=1e-12)  # no mini-batch left in Σ_ζ
    metric, batch_only = run(x, zeta=0.0, sample_size=100, seed=4)
    sample = metric.sample.rows()["x"].numpy()
    assert len(sample) == 100
    assert batch_only["isoscore_star"].value == pytest.approx(float(isoscore_package.IsoScore(sample)), rel=RTOL)
    with pytest.raises(ValueError):
        IsoScoreMetric(zeta=1.5)


def test_shrinkage_stabilises_small_batches():
    """Fewer points than dimensions: the mini-batch alone is rank-deficient, the shrunk covariance is not."""
    x = np.random.default_rng(5).standard_normal((5000, 32))
    _, raw = run(x, zeta=0.0, sample_size=16)
    _, shrunk = run(x, zeta=0.2, sample_size=16)
    assert raw["isoscore_star"].value <= (15 - 1) / (32 - 1) + 1e-12  # rank ≤ 15: at most 15 dimensions used
    assert raw["isoscore_star"].value < shrunk["isoscore_star"].value < shrunk["isoscore"].value


def test_streaming_is_invariant_to_batching():
    x = np.random.default_rng(6).standard_normal((700, 9)) @ np.random.default_rng(7).standard_normal((9, 9))
    _, whole = run(x, chunks=1, sample_size=200, tokens_per_sentence=13)
    _, split = run(x, chunks=13, sample_size=200, tokens_per_sentence=13)
    for name in ("isoscore", "isoscore_star"):
        assert split[name].value == pytest.approx(whole[name].value, rel=1e-10)
        assert (split[name].spread or 0.0) == pytest.approx(whole[name].spread or 0.0, rel=1e-8)
    assert split["isoscore_star"].sample_size == 200


def test_memory_is_bounded():
    rng = np.random.default_rng(8)
    metric = IsoScoreMetric(sample_size=100)
    d = 16
    sizes = []
    for b in range(200):
        ids = np.repeat(np.arange(b * 10, b * 10 + 10), 10)
        metric.update(token_batch(rng.standard_normal((100, d)), ids, np.tile(np.arange(10), 10)))
        sizes.append(metric.memory_bytes())
    bound = 8 * (d * d + d) + 2 * 100 * 8 * (d + 4) + 2 * 100 * 8 + 1024
    assert max(sizes) <= bound
    assert metric.sums.count == 20000


def test_degenerate_inputs_give_no_rows():
    assert run(np.ones((1, 4)))[1] == {}
    assert run(np.tile([[1.0, 2.0, 3.0]], (10, 1)))[1] == {}  # duplicated points: no variance, no score
    assert np.isnan(isoscore_from_covariance(np.zeros((3, 3))))
