"""cosine_family (avg_cosine, S_intra, S_inter; uncentred and centred) against brute-force pairwise cosine
matrices on the real MiniLM dump, and on analytic cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from metric_helpers import feed, token_batch

from tokenuni.metrics import compute_metric
from tokenuni.metrics.cosine_family import CosineFamily
from tokenuni.numerics import token_hash
from tokenuni.store import layer_column, open_dump, vectors

RTOL = 1e-6
LAYERS = range(7)  # MiniLM: embedding output + 6 blocks


# -- independent references --------------------------------------------------------------------------
def read_layer(dump_path, layer, special=False) -> dict:
    """One layer read whole, with its token index (fine for the small test dump)."""
    dump = open_dump(dump_path)
    parts = {k: [] for k in ("x", "sentence_id", "position", "token_id", "special", "frequency")}
    for batch in dump.batches():
        parts["x"].append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        for name in ("sentence_id", "position", "token_id", "special", "frequency"):
            parts[name].append(batch.column(name).to_numpy(zero_copy_only=False))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    keep = np.ones(len(data["x"]), bool) if special else ~data["special"]
    return {k: v[keep] for k, v in data.items()}


def cosine_matrix(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit @ unit.T


def off_diagonal_mean(matrix):
    n = len(matrix)
    return (matrix.sum() - np.trace(matrix)) / (n * (n - 1))


def brute_force(x, token_id):
    """avg_cosine, S_intra (and its type count), S_inter from the full N×N cosine matrix, grouped by type."""
    cos = cosine_matrix(x)
    groups = pd.Series(np.arange(len(x))).groupby(token_id).indices
    intra = [off_diagonal_mean(cos[np.ix_(idx, idx)]) for idx in groups.values() if len(idx) >= 2]
    # S_inter: mean over pairs of distinct types of the mean cosine between their instances
    averaging = np.zeros((len(groups), len(x)))
    for row, idx in enumerate(groups.values()):
        averaging[row, idx] = 1.0 / len(idx)
    between = averaging @ cos @ averaging.T
    inter = off_diagonal_mean(between) if len(groups) >= 2 else None
    return {"avg_cosine": off_diagonal_mean(cos), "s_intra": np.mean(intra) if intra else None,
            "n_intra": len(intra), "s_inter": inter, "n_types": len(groups)}


def one_per_type_reference(data, seed, centre):
    """Cai's protocol: per type the instance with the smallest seeded hash; mean pairwise cosine of those."""
    keys = token_hash(seed, torch.as_tensor(data["sentence_id"]), torch.as_tensor(data["position"])).numpy()
    frame = pd.DataFrame({"token_id": data["token_id"], "key": keys})
    chosen = frame.groupby("token_id")["key"].idxmin().to_numpy()
    x = data["x"] - data["x"].mean(axis=0) if centre else data["x"]
    return off_diagonal_mean(cosine_matrix(x[chosen])), len(chosen)


def value_of(table, metric, layer, variant):
    rows = table[(table.metric == metric) & (table.layer == layer) & (table.variant == variant)]
    assert len(rows) == 1, (metric, layer, variant, len(rows))
    return rows.iloc[0]


@pytest.fixture(scope="module")
def exact_table(minilm_dump):
    return compute_metric(minilm_dump, CosineFamily, {}, model="minilm", corpus="stsb-test", progress=False)


@pytest.fixture(scope="module")
def sampled_table(minilm_dump):
    return compute_metric(minilm_dump, CosineFamily, {"type_sampling": "one_per_type", "seed": 7, "repeats": 4},
                          model="minilm", corpus="stsb-test", progress=False)


@pytest.fixture(scope="module")
def layers(minilm_dump):
    return {layer: read_layer(minilm_dump, layer) for layer in LAYERS}


# -- the real dump -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["uncentred", "centred"])
def test_exact_rows_equal_brute_force(exact_table, layers, variant):
    for layer, data in layers.items():
        x = data["x"] - data["x"].mean(axis=0) if variant == "centred" else data["x"]
        reference = brute_force(x, data["token_id"])
        for metric in ("avg_cosine", "s_intra", "s_inter"):
            row = value_of(exact_table, metric, layer, variant)
            assert row.value == pytest.approx(reference[metric], rel=RTOL, abs=1e-12), (metric, layer)
            assert pd.isna(row.spread) and pd.isna(row.seed) and pd.isna(row.sample_size)
        assert value_of(exact_table, "avg_cosine", layer, variant).n == len(x)
        assert value_of(exact_table, "s_intra", layer, variant).n == reference["n_intra"]
        assert value_of(exact_table, "s_inter", layer, variant).n == reference["n_types"]
    assert len(exact_table) == 7 * 3 * 2


@pytest.mark.parametrize("variant", ["uncentred", "centred"])
def test_one_per_type_equals_brute_force_draw(sampled_table, exact_table, layers, variant):
    for layer, data in layers.items():
        row = value_of(sampled_table, "s_inter", layer, variant)
        reference, types = one_per_type_reference(data, seed=7, centre=variant == "centred")
        assert row.value == pytest.approx(reference, rel=RTOL, abs=1e-12)
        assert row.sample_size == types == row.n and row.seed == 7
        draws = [one_per_type_reference(data, seed=s, centre=variant == "centred")[0] for s in range(7, 11)]
        assert row.spread == pytest.approx(np.std(draws, ddof=1), rel=1e-5)
        # the exact S_inter is the expectation of this draw: the draw scatters around it
        exact = value_of(exact_table, "s_inter", layer, variant).value
        assert abs(np.mean(draws) - exact) < 5 * row.spread / np.sqrt(len(draws)) + 1e-4
        # the other rows do not depend on the sampling
        for metric in ("avg_cosine", "s_intra"):
            assert value_of(sampled_table, metric, layer, variant).value == pytest.approx(
                value_of(exact_table, metric, layer, variant).value, rel=1e-12)


def test_special_tokens_are_types_when_included(minilm_dump):
    table = compute_metric(minilm_dump, CosineFamily, {"special_tokens": True, "variants": ["uncentred"]},
                           model="m", corpus="c", progress=False)
    data = read_layer(minilm_dump, 4, special=True)
    reference = brute_force(data["x"], data["token_id"])
    for metric in ("avg_cosine", "s_intra", "s_inter"):
        assert value_of(table, metric, 4, "uncentred").value == pytest.approx(reference[metric], rel=RTOL)
    assert set(table.variant) == {"uncentred"}


# -- analytic cases -------------------------------------------------------------------------------------
def run(x, token_id, chunks=1, sentence_id=None, position=None, **options):
    """Rows keyed by (metric, variant); positions default to the index in x, frequencies to 1."""
    rows = feed(CosineFamily(**options), x, chunks, token_ids=token_id, sentence_ids=sentence_id,
                positions=np.arange(len(x)) if position is None else position, frequency=np.ones(len(x), np.int64))
    return {(v.metric, v.variant): v for v in rows}


def test_single_token_type_has_no_s_inter():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8)) + 2.0
    values = run(x, np.full(40, 5))
    for variant in ("uncentred", "centred"):
        assert ("s_inter", variant) not in values
        centred = x - x.mean(axis=0) if variant == "centred" else x
        expected = off_diagonal_mean(cosine_matrix(centred))
        assert values[("s_intra", variant)].value == pytest.approx(expected, rel=1e-12)
        assert values[("s_intra", variant)].n == 1
        assert values[("avg_cosine", variant)].value == pytest.approx(expected, rel=1e-12)


def test_duplicated_points_have_all_cosines_one():
    x = np.tile(np.array([[1.0, -2.0, 3.0]]), (30, 1))
    token_id = np.repeat([3, 9, 100], 10)
    for sampling in ("exact", "one_per_type"):
        values = run(x, token_id, type_sampling=sampling)
        for metric in ("avg_cosine", "s_intra", "s_inter"):
            assert values[(metric, "uncentred")].value == pytest.approx(1.0, abs=1e-12)
        # centred, every vector is zero: no direction, no rows
        assert not any(variant == "centred" for _, variant in values)


def test_isotropic_gaussian():
    rng = np.random.default_rng(1)
    n = 20000
    x = rng.standard_normal((n, 16))
    token_id = rng.integers(0, 300, n)
    for sampling in ("exact", "one_per_type"):
        values = run(x, token_id, type_sampling=sampling, repeats=3)
        for key, row in values.items():
            assert abs(row.value) < 3 / np.sqrt(n), (key, row.value)


def test_every_type_once_makes_s_inter_the_average_cosine():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 6)) + 1.0
    token_id = rng.permutation(1000)[:50]
    exact = run(x, token_id)
    sampled = run(x, token_id, type_sampling="one_per_type", repeats=3)
    for variant in ("uncentred", "centred"):
        expected = off_diagonal_mean(cosine_matrix(x - x.mean(axis=0) if variant == "centred" else x))
        assert exact[("s_inter", variant)].value == pytest.approx(expected, rel=1e-12)
        assert sampled[("s_inter", variant)].value == pytest.approx(expected, rel=1e-12)
        assert sampled[("s_inter", variant)].spread == pytest.approx(0.0, abs=1e-12)  # one instance: no choice
        assert ("s_intra", variant) not in exact


@pytest.mark.parametrize("sampling", ["exact", "one_per_type"])
def test_batching_invariance(sampling):
    rng = np.random.default_rng(3)
    n = 600
    x = rng.standard_normal((n, 10)) + rng.standard_normal(10)
    sentence_id = np.repeat(np.arange(40), 15)
    position = np.tile(np.arange(15), 40)
    token_id = rng.integers(0, 5000, n) % 97 * 31  # sparse, large ids
    whole = run(x, token_id, 1, sentence_id, position, type_sampling=sampling)
    split = run(x, token_id, 13, sentence_id, position, type_sampling=sampling)
    assert whole.keys() == split.keys() and len(whole) == 6
    for key, row in whole.items():
        assert split[key].value == pytest.approx(row.value, rel=1e-9, abs=1e-12)
        assert (split[key].n, split[key].sample_size, split[key].seed) == (row.n, row.sample_size, row.seed)


def test_memory_is_bounded_by_the_vocabulary():
    rng = np.random.default_rng(4)
    metric = CosineFamily(type_sampling="one_per_type", repeats=2)
    sizes = []
    for p in range(metric.passes):
        metric.begin_pass(p)
        for b in range(200):
            x = rng.standard_normal((64, 8))
            metric.update(token_batch(x, np.full(64, b), np.arange(64), rng.integers(0, 50, 64), np.ones(64, np.int64)))
            if p == 0 and b in (20, 199):
                sizes.append(metric.memory_bytes())
    assert sizes[0] == sizes[1]
    assert metric.memory_bytes() == sizes[1] + 8 * 8  # pass 1 adds only the mean μ
    assert metric.memory_bytes() < 64 * 8 * 8 * 6 + 4096  # capacity 64 rows × d, a few matrices
    assert metric.compute()


def test_uncentred_only_needs_one_pass_and_options_are_checked():
    assert CosineFamily().passes == 2
    metric = CosineFamily(variants=["uncentred"])
    assert metric.passes == 1
    rng = np.random.default_rng(5)
    metric.update(token_batch(rng.standard_normal((20, 4)), positions=np.arange(20), token_ids=rng.integers(0, 4, 20),
                               frequency=np.ones(20, np.int64)))
    assert {v.variant for v in metric.compute()} == {"uncentred"}
    for bad in ({"variants": []}, {"variants": ["whitened"]}, {"type_sampling": "two_per_type"}, {"repeats": 0}):
        with pytest.raises(ValueError):
            CosineFamily(**bad)


def test_too_few_tokens_give_no_rows():
    assert CosineFamily().compute() == []
    assert run(np.ones((1, 4)), np.array([1])) == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    for options in ({}, {"type_sampling": "one_per_type"}):
        cpu = compute_metric(minilm_dump, CosineFamily, options, model="m", corpus="c", device="cpu", progress=False)
        gpu = compute_metric(minilm_dump, CosineFamily, options, model="m", corpus="c", device="cuda", progress=False)
        np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6, atol=1e-9)
