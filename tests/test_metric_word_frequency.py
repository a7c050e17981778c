"""word_frequency (principal components and norms against log frequency) against numpy / scikit-learn on
the real MiniLM dump, and on analytic cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from metric_helpers import feed, token_batch
from sklearn.decomposition import PCA

from tokenuni.metrics import compute_metric
from tokenuni.metrics.word_frequency import WordFrequency
from tokenuni.store import layer_column, open_dump, vectors

RTOL = 1e-6
LAYERS = range(7)


def read_layer(dump_path, layer):
    """(X, frequency) of the non-special tokens of one layer, read whole."""
    dump = open_dump(dump_path)
    xs, freqs, special = [], [], []
    for batch in dump.batches():
        xs.append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        freqs.append(batch.column("frequency").to_numpy())
        special.append(batch.column("special").to_numpy(zero_copy_only=False))
    keep = ~np.concatenate(special)
    return np.concatenate(xs)[keep], np.concatenate(freqs)[keep]


def numpy_reference(x, f, components=3):
    """Signed PC-frequency correlations (PC sign: largest-|loading| coordinate positive) and the norm one."""
    centred = x - x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x, rowvar=False))
    signed = []
    for index in np.argsort(eigenvalues)[::-1][:components]:
        v = eigenvectors[:, index]
        v = v * np.sign(v[np.argmax(np.abs(v))])
        signed.append(np.corrcoef(centred @ v, f)[0, 1])
    return np.array(signed), np.corrcoef(np.linalg.norm(x, axis=1), f)[0, 1]


def rows_of(table, layer):
    part = table[table.layer == layer]
    pc = part[part.metric == "pc_frequency_correlation"]
    signed = pc[pc.variant == "signed"].sort_values("component")
    absolute = pc[pc.variant == "absolute"].sort_values("component")
    norm = part[part.metric == "norm_frequency_correlation"]
    assert len(norm) == 1
    return signed, absolute, norm.iloc[0]


@pytest.fixture(scope="module")
def table(minilm_dump):
    return compute_metric(minilm_dump, WordFrequency, {}, model="minilm", corpus="stsb-test", progress=False)


def test_equals_numpy_and_sklearn_on_the_real_dump(table, minilm_dump):
    for layer in LAYERS:
        x, frequency = read_layer(minilm_dump, layer)
        f = np.log(frequency)
        signed_ref, norm_ref = numpy_reference(x, f)
        signed, absolute, norm = rows_of(table, layer)
        assert list(signed.component) == [1, 2, 3] and list(absolute.component) == [1, 2, 3]
        np.testing.assert_allclose(signed.value.to_numpy(), signed_ref, rtol=RTOL)
        np.testing.assert_allclose(absolute.value.to_numpy(), np.abs(signed_ref), rtol=RTOL)
        assert norm.value == pytest.approx(norm_ref, rel=RTOL)
        assert set(table[table.layer == layer].n) == {len(x)}
        assert norm.variant == "" and pd.isna(norm.component)
        if layer not in (0, 3, 6):
            continue
        # scikit-learn's PCA (its own sign convention): the absolute values agree
        projections = PCA(n_components=3, svd_solver="full").fit_transform(x)
        sk = [abs(np.corrcoef(projections[:, k], f)[0, 1]) for k in range(3)]
        np.testing.assert_allclose(absolute.value.to_numpy(), sk, rtol=RTOL)


def test_raw_frequency_option(minilm_dump):
    table = compute_metric(minilm_dump, WordFrequency, {"log_frequency": False, "components": 5}, model="m", corpus="c",
                           progress=False)
    x, frequency = read_layer(minilm_dump, 3)
    signed_ref, norm_ref = numpy_reference(x, frequency.astype(float), components=5)
    signed, _, norm = rows_of(table, 3)
    np.testing.assert_allclose(signed.value.to_numpy(), signed_ref, rtol=RTOL)
    assert norm.value == pytest.approx(norm_ref, rel=RTOL)


# -- analytic cases ------------------------------------------------------------------------------------------
def run(x, frequency, chunks=1, **options):
    rows = feed(WordFrequency(**options), x, chunks, frequency=frequency)
    return {(v.metric, v.variant, v.component): v.value for v in rows}


def test_frequency_along_one_axis_and_norms_shrinking_with_frequency():
    rng = np.random.default_rng(0)
    frequency = rng.integers(1, 1000, 500)
    f = np.log(frequency)
    x = 0.01 * rng.standard_normal((500, 6))
    x[:, 2] = -3.0 * f  # PC1 = ±e2; largest loading made positive, so the signed correlation is -1
    values = run(x, frequency, components=1)
    assert values[("pc_frequency_correlation", "signed", 1)] == pytest.approx(-1.0, abs=1e-4)
    assert values[("pc_frequency_correlation", "absolute", 1)] == pytest.approx(1.0, abs=1e-4)
    direction = rng.standard_normal(6)
    direction /= np.linalg.norm(direction)
    y = np.outer(20.0 - f, direction)  # ‖y‖ = 20 − log f exactly
    assert run(y, frequency)[("norm_frequency_correlation", "", None)] == pytest.approx(-1.0, abs=1e-12)


def test_isotropic_gaussian_is_uncorrelated_with_frequency():
    rng = np.random.default_rng(1)
    n = 20000
    values = run(rng.standard_normal((n, 8)), rng.integers(1, 500, n))
    assert all(abs(v) < 4 / np.sqrt(n) for v in values.values())


def test_constant_frequency_or_too_few_tokens_give_no_rows():
    rng = np.random.default_rng(2)
    assert run(rng.standard_normal((50, 4)), np.full(50, 7)) == {}
    assert run(rng.standard_normal((1, 4)), np.array([3])) == {}
    assert WordFrequency().compute() == []
    with pytest.raises(ValueError):
        WordFrequency(components=0)


def test_batching_invariance_and_large_offsets():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((700, 12)) @ rng.standard_normal((12, 12))
    frequency = rng.integers(1, 300, 700)
    x[:, 0] += 0.5 * np.log(frequency)
    whole = run(x, frequency, chunks=1)
    assert run(x, frequency, chunks=13) == pytest.approx(whole, rel=1e-9)
    # a large common offset (norms ~1e4) does not change any correlation of the centred data much
    shifted = run(x + 1e4, frequency, chunks=13)
    for key, value in whole.items():
        if key[0] == "pc_frequency_correlation":
            assert shifted[key] == pytest.approx(value, rel=1e-6)


def test_memory_is_bounded():
    rng = np.random.default_rng(4)
    metric = WordFrequency()
    sizes = []
    for b in range(300):
        metric.update(token_batch(rng.standard_normal((64, 16)), frequency=rng.integers(1, 100, 64)))
        if b in (10, 299):
            sizes.append(metric.memory_bytes())
    assert sizes[0] == sizes[1] < 16 * 16 * 8 * 2 + 4096  # O(d²)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    cpu = compute_metric(minilm_dump, WordFrequency, {}, model="m", corpus="c", device="cpu", progress=False)
    gpu = compute_metric(minilm_dump, WordFrequency, {}, model="m", corpus="c", device="cuda", progress=False)
    np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6, atol=1e-9)
