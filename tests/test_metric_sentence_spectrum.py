"""Per-sentence spectra against numpy's SVD per sentence and scipy.stats.skew on a real MiniLM dump,
and on analytic cases (rank-1 sentences, orthogonal tokens, one sentence, short sentences)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from dump_helpers import layer_tokens
from metric_helpers import feed, token_batch

from tokenuni.metrics import compute_metric
from tokenuni.metrics.sentence_spectrum import SentenceSpectrum
from tokenuni.store import open_dump

RTOL = 1e-6


def reference(x, ids, max_rank=32, min_tokens=2):
    """numpy SVD of each sentence's tokens; zero-padded normalised spectra; means and stds (ddof=1)."""
    skews, tops, spectra, skipped = [], [], [], 0
    for s in np.unique(ids):
        tokens = x[ids == s]
        if len(tokens) < min_tokens:
            skipped += 1
            continue
        sv = np.linalg.svd(tokens, compute_uv=False)
        normalised = sv / sv[0]
        skews.append(scipy.stats.skew(normalised))
        tops.append(sv[0] ** 2 / (sv ** 2).sum())
        padded = np.zeros(max_rank)
        k = min(max_rank, len(normalised))
        padded[:k] = normalised[:k]
        spectra.append(padded)
    spectra = np.array(spectra)
    return {"skew": (np.mean(skews), np.std(skews, ddof=1)), "top": (np.mean(tops), np.std(tops, ddof=1)),
            "rank": (spectra.mean(axis=0), spectra.std(axis=0, ddof=1)), "n": len(skews), "skipped": skipped}


def pick(table, metric, layer, component=None):
    rows = table[(table.metric == metric) & (table.layer == layer)]
    if component is not None:
        rows = rows[rows.component == component]
    assert len(rows) == 1, (metric, layer, component, len(rows))
    return rows.iloc[0]


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, SentenceSpectrum, {}, model="minilm", corpus="stsb-test", progress=False)


def test_equals_numpy_svd_per_sentence_on_minilm(table, minilm_dump):
    for layer in range(open_dump(minilm_dump).n_layers):
        x, ids = layer_tokens(minilm_dump, layer)
        ref = reference(x, ids)
        for metric, key in (("sentence_singular_value_skewness", "skew"), ("sentence_top_singular_fraction", "top")):
            row = pick(table, metric, layer)
            assert row.value == pytest.approx(ref[key][0], rel=RTOL)
            assert row.spread == pytest.approx(ref[key][1], rel=RTOL)
            assert row.n == ref["n"] == 60
        rows = table[(table.metric == "sentence_singular_value") & (table.layer == layer)].sort_values("component")
        assert rows.component.tolist() == list(range(32))
        np.testing.assert_allclose(rows.value.to_numpy(), ref["rank"][0], rtol=RTOL, atol=1e-12)
        np.testing.assert_allclose(rows.spread.to_numpy(), ref["rank"][1], rtol=RTOL, atol=1e-12)
        assert rows.value.iloc[0] == pytest.approx(1.0)
        assert pick(table, "sentence_spectrum_skipped", layer).value == 0


def test_special_tokens_and_options(minilm_dump):
    options = {"special_tokens": True, "max_rank": 5, "min_tokens": 12}
    table = compute_metric(minilm_dump, SentenceSpectrum, options, model="m", corpus="c", progress=False)
    x, ids = layer_tokens(minilm_dump, 4, special=True)
    ref = reference(x, ids, max_rank=5, min_tokens=12)
    assert 0 < ref["skipped"] < 60
    assert pick(table, "sentence_singular_value_skewness", 4).value == pytest.approx(ref["skew"][0], rel=RTOL)
    assert pick(table, "sentence_top_singular_fraction", 4).n == ref["n"]
    skipped = pick(table, "sentence_spectrum_skipped", 4)
    assert (skipped.value, skipped.n) == (ref["skipped"], 60)
    assert sorted(table[table.metric == "sentence_singular_value"].component.unique()) == list(range(5))


# -- analytic cases ----------------------------------------------------------------------------------
def run(x, ids, chunks=1, **options):
    return {(v.metric, v.component): v for v in feed(SentenceSpectrum(**options), x, chunks, sentence_ids=ids)}


def test_rank_one_sentences():
    """Tokens a_i w: σ = (‖a‖‖w‖, 0, …, 0); skew of one 1 and r − 1 zeros = (r − 2)/√(r − 1)."""
    rng = np.random.default_rng(0)
    lengths = [3, 5, 8]
    x = np.vstack([np.outer(rng.uniform(0.5, 2, n), rng.standard_normal(16)) for n in lengths])
    ids = np.repeat(np.arange(3), lengths)
    rows = run(x, ids, max_rank=4)
    expected = [(r - 2) / np.sqrt(r - 1) for r in lengths]
    assert rows[("sentence_singular_value_skewness", None)].value == pytest.approx(np.mean(expected), abs=1e-6)
    assert rows[("sentence_top_singular_fraction", None)].value == pytest.approx(1.0, abs=1e-12)
    assert rows[("sentence_singular_value", 0)].value == 1.0
    assert rows[("sentence_singular_value", 1)].value == pytest.approx(0.0, abs=1e-7)


def test_orthogonal_equal_norm_tokens():
    """n orthogonal tokens of equal norm: all σ equal, skew 0, top fraction 1/n, σ̃_k = 1 for k < n, 0 after."""
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((10, 10)))
    x = 3.0 * q[:4]  # one sentence of 4 orthogonal tokens
    rows = run(x, np.zeros(4, dtype=np.int64), max_rank=6)
    assert rows[("sentence_singular_value_skewness", None)].value == pytest.approx(0.0, abs=1e-6)
    assert rows[("sentence_top_singular_fraction", None)].value == pytest.approx(0.25, rel=1e-12)
    values = [rows[("sentence_singular_value", k)].value for k in range(6)]
    np.testing.assert_allclose(values, [1, 1, 1, 1, 0, 0], atol=1e-12)
    assert rows[("sentence_singular_value", 0)].spread is None  # one sentence: no spread
    assert rows[("sentence_singular_value", 0)].n == 1


def test_short_and_zero_sentences_are_skipped_and_counted():
    rng = np.random.default_rng(2)
    lengths = [1, 4, 1, 3, 2]
    x = rng.standard_normal((sum(lengths), 5))
    ids = np.repeat(np.arange(5), lengths)
    x[ids == 4] = 0.0  # a sentence of zero vectors has no direction
    rows = run(x, ids)
    assert rows[("sentence_spectrum_skipped", None)].value == 3
    assert rows[("sentence_spectrum_skipped", None)].n == 5
    assert rows[("sentence_top_singular_fraction", None)].n == 2
    only_singleton = run(x[:1], ids[:1])
    assert list(only_singleton) == [("sentence_spectrum_skipped", None)]  # nothing to average
    assert only_singleton[("sentence_spectrum_skipped", None)].value == 1
    keep_singletons = run(x, ids, min_tokens=1)
    assert keep_singletons[("sentence_spectrum_skipped", None)].value == 1  # only the zero sentence


def test_streaming_is_invariant_to_batching_across_sentences():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 25, 40)
    x = rng.standard_normal((lengths.sum(), 12)) + 0.5
    ids = np.repeat(np.arange(40), lengths)
    whole = run(x, ids, chunks=1)
    for chunks in (13, 97, len(x)):  # chunks cut sentences, down to one token per batch
        split = run(x, ids, chunks=chunks)
        assert split.keys() == whole.keys()
        for key, row in whole.items():
            assert split[key].value == pytest.approx(row.value, rel=1e-10, abs=1e-14)
            assert split[key].n == row.n
            assert (split[key].spread or 0) == pytest.approx(row.spread or 0, rel=1e-8, abs=1e-14)


def test_memory_is_bounded():
    rng = np.random.default_rng(4)
    metric = SentenceSpectrum()
    sizes = []
    for b in range(300):
        ids = np.repeat(np.arange(b * 5, b * 5 + 5), 10)
        metric.update(token_batch(rng.standard_normal((50, 8)), ids))
        sizes.append(metric.memory_bytes())
    assert max(sizes[1:]) == min(sizes[1:])  # sums + one pending sentence
    assert max(sizes) < 8 * (4 + 2 * 32 + 10 * 8) + 1024
    assert metric.sentences == 299 * 5 + 4
