"""Each metric against an independent computation (numpy/scipy SVD, brute-force cosines) on a real
MiniLM dump, and on analytic cases."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from dump_helpers import layer_tokens
from metric_helpers import feed

from tokenuni.metrics import METRICS, compute_metric, make_metric
from tokenuni.metrics.spectrum import effective_rank
from tokenuni.numerics import skewness
from tokenuni.store import layer_column, open_dump

RTOL = 1e-6


def brute_force_avg_cosine(x):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    n = len(x)
    return (cos.sum() - np.trace(cos)) / (n * (n - 1))


def table_value(table, metric, layer, variant=""):
    rows = table[(table.metric == metric) & (table.layer == layer) & (table.variant == variant)]
    assert len(rows) == 1, (metric, layer, variant, len(rows))
    return float(rows.value.iloc[0])


@pytest.fixture(scope="module")
def tables(minilm_dump):
    return {name: compute_metric(minilm_dump, name, {}, model="minilm", corpus="stsb-test", progress=False)
            for name in METRICS}


def test_dump_has_many_batches(minilm_dump):
    assert open_dump(minilm_dump).reader.num_record_batches > 2  # streaming is really exercised


@pytest.mark.parametrize("variant", ["uncentred", "centred"])
def test_spectrum_equals_numpy_svd(tables, minilm_dump, variant):
    table = tables["spectrum"]
    for layer in range(open_dump(minilm_dump).n_layers):
        x, _ = layer_tokens(minilm_dump, layer)
        if variant == "centred":
            x = x - x.mean(axis=0)
        reference = np.linalg.svd(x, compute_uv=False)
        rows = table[(table.metric == "singular_value") & (table.layer == layer) & (table.variant == variant)]
        ours = rows.sort_values("component").value.to_numpy()
        k = min(len(ours), len(reference))
        assert k >= 300
        # relative to the largest singular value: the Gram route is exact up to eps * s_max^2
        np.testing.assert_allclose(ours[:k], reference[:k], rtol=RTOL, atol=RTOL * reference[0])
        np.testing.assert_allclose(ours[:50], reference[:50], rtol=RTOL)
        normalised = reference / reference[0]
        assert table_value(table, "singular_value_skewness", layer, variant) == pytest.approx(
            scipy.stats.skew(normalised), rel=1e-5)
        p = reference / reference.sum()
        assert table_value(table, "effective_rank", layer, variant) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_avg_cosine_equals_brute_force(tables, minilm_dump):
    for layer in range(open_dump(minilm_dump).n_layers):
        x, _ = layer_tokens(minilm_dump, layer)
        assert table_value(tables["cosine_family"], "avg_cosine", layer, "uncentred") == pytest.approx(brute_force_avg_cosine(x), rel=RTOL)


def test_token_uniformity_equals_brute_force(tables, minilm_dump):
    for layer in range(open_dump(minilm_dump).n_layers):
        x, ids = layer_tokens(minilm_dump, layer)
        per_sentence = [brute_force_avg_cosine(x[ids == s]) for s in np.unique(ids) if (ids == s).sum() >= 2]
        rows = tables["token_uniformity"]
        assert table_value(rows, "token_uniformity", layer) == pytest.approx(np.mean(per_sentence), rel=RTOL)
        assert int(rows[(rows.layer == layer)].n.iloc[0]) == len(per_sentence)


def test_special_tokens_option_changes_the_token_set(minilm_dump):
    with_special = compute_metric(minilm_dump, "cosine_family", {"special_tokens": True, "variants": ["uncentred"]}, model="m", corpus="c", progress=False)
    x, _ = layer_tokens(minilm_dump, 3, special=True)
    assert table_value(with_special, "avg_cosine", 3, "uncentred") == pytest.approx(brute_force_avg_cosine(x), rel=RTOL)
    assert int(with_special[with_special.layer == 3].n.iloc[0]) == len(x)


def test_tidy_table_columns(tables):
    for table in tables.values():
        assert list(table.columns) == ["model", "training_step", "corpus", "layer", "metric", "variant", "component", "value", "spread", "n",
                                       "sample_size", "seed"]
        assert set(table.layer) == set(range(7))  # MiniLM: embeddings + 6 blocks
        assert table.value.notna().all()


# -- analytic cases --------------------------------------------------------------------------------
def run(name, x, sentence_ids=None, chunks=1, **options):
    rows = feed(make_metric(name, options, "cpu"), x, chunks, sentence_ids=sentence_ids)
    return {(v.metric, v.variant, v.component): v.value for v in rows}


def test_isotropic_gaussian():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 16))
    values = run("cosine_family", x, variants=["uncentred"])
    assert abs(values[("avg_cosine", "uncentred", None)]) < 0.005
    spectrum = run("spectrum", x)
    s = np.array([spectrum[("singular_value", "centred", k)] for k in range(16)])
    assert s.min() / s.max() > 0.9  # all directions alike
    assert spectrum[("effective_rank", "centred", None)] > 15.9


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rank_one_data(sign):
    rng = np.random.default_rng(1)
    direction = rng.standard_normal(8)
    scales = rng.uniform(0.5, 2.0, 50)
    x = np.outer(scales, direction)
    x[::2] *= sign  # sign -1: half the points point the other way
    expected = 1.0 if sign > 0 else brute_force_avg_cosine(x)
    assert run("cosine_family", x, variants=["uncentred"])[("avg_cosine", "uncentred", None)] == pytest.approx(expected, abs=1e-12)
    spectrum = run("spectrum", x)
    s = [spectrum[("singular_value", "uncentred", k)] for k in range(8)]
    assert s[0] == pytest.approx(np.linalg.norm(scales) * np.linalg.norm(direction), rel=1e-10)
    assert max(s[1:]) < 1e-6 * s[0]
    assert spectrum[("effective_rank", "uncentred", None)] == pytest.approx(1.0, abs=1e-6)


def test_duplicated_points_and_single_sentence():
    x = np.tile(np.array([[1.0, 2.0, 3.0]]), (5, 1))
    values = run("token_uniformity", x)  # one sentence of 5 identical tokens
    assert values[("token_uniformity", "", None)] == pytest.approx(1.0)
    assert run("cosine_family", x, variants=["uncentred"])[("avg_cosine", "uncentred", None)] == pytest.approx(1.0)


def test_streaming_is_invariant_to_batching_even_across_sentences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 12))
    ids = np.repeat(np.arange(30), 10)
    whole = run("token_uniformity", x, ids, chunks=1)
    split = run("token_uniformity", x, ids, chunks=17)  # chunks cut sentences in two
    assert split == pytest.approx(whole, rel=1e-12)
    for name in ("spectrum", "cosine_family"):
        assert run(name, x, chunks=13) == pytest.approx(run(name, x, chunks=1), rel=1e-9)


def test_too_few_tokens_give_no_rows():
    assert {k: v for k, v in run("cosine_family", np.ones((1, 4))).items() if k[0] == "avg_cosine"} == {}
    assert run("token_uniformity", np.ones((1, 4))) == {}


def test_skewness_matches_scipy():
    values = np.random.default_rng(3).exponential(size=500)
    assert skewness(values) == pytest.approx(scipy.stats.skew(values), rel=1e-12)
    assert skewness(np.ones(5)) == 0.0
    assert effective_rank(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)


def test_record_batch_input_matches_token_batch(minilm_dump):
    dump = open_dump(minilm_dump)
    metric = make_metric("cosine_family", {"variants": ["uncentred"]}, "cpu")
    for batch in dump.batches():
        rb = batch.select(["sentence_id", "token_id", "special", "frequency"]).append_column("vector", batch.column(layer_column(2)))
        metric.update(rb)
    x, _ = layer_tokens(minilm_dump, 2)
    assert next(v for v in metric.compute() if v.metric == "avg_cosine").value == pytest.approx(brute_force_avg_cosine(x), rel=RTOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    for name in METRICS:
        cpu = compute_metric(minilm_dump, name, {}, model="m", corpus="c", device="cpu", progress=False)
        gpu = compute_metric(minilm_dump, name, {}, model="m", corpus="c", device="cuda", progress=False)
        np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6, atol=1e-9)
