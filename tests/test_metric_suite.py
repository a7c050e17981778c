"""The one-pass metrics suite (tokenuni.metrics.suite, tokenuni.statistics) against each metric's own streaming run
(compute_metric) on the real MiniLM dump: equal tables from one read, re-derivation for derived options, the
shared sample, the no-dump mode of the embed stage and half-precision dumps."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import MINILM

from tokenuni.embed import embed_corpus
from tokenuni.metrics import METRICS, compute_metric
from tokenuni.metrics.suite import Suite, collect_statistics, derive_metric, pass_plan
from tokenuni.numerics import ReservoirSample, token_hash
from tokenuni.statistics import LayerMoments, StatisticsError, load_statistics, moments_path, save_statistics
from tokenuni.store import open_dump

#: every metric, sized for a 60-sentence dump
OPTIONS = {
    "clusters": {"sample_size": 300, "k_max": 4, "n_init": 2, "repeats": 2},
    "lid": {"sample_size": 300, "k": 10, "bootstrap": 10},
    "alignment_uniformity": {"sample_size": 300, "bootstrap": 10},
    "isoscore": {"sample_size": 200, "bootstrap": 5},
    "token_uniformity": {"min_tokens": 3},
}
KEY = ["layer", "metric", "variant", "component"]


def options_of(name: str) -> dict:
    return OPTIONS.get(name, {})


def assert_same_table(expected: pd.DataFrame, got: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same rows, n, sample sizes and seeds; values and spreads to ``rtol``. A singular value is compared relative to
    its layer's largest (values at ε·σ₁ are rounding noise in any computation)."""
    expected, got = expected.copy(), got.copy()
    for table in (expected, got):
        table["component"] = table["component"].fillna(-1)
    merged = expected.merge(got, on=KEY, how="outer", suffixes=("", "_got"), indicator=True)
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"][KEY]
    assert (merged["n"] == merged["n_got"]).all()
    assert merged["sample_size"].equals(merged["sample_size_got"]) and merged["seed"].equals(merged["seed_got"])
    scale = merged["value"].abs()
    singular = merged["metric"] == "singular_value"
    if singular.any():
        largest = merged[singular].groupby(["layer", "variant"])["value"].transform("max")
        scale[singular] = largest
    assert ((merged["value"] - merged["value_got"]).abs() <= rtol * scale + 1e-300).all(), \
        merged.loc[(merged["value"] - merged["value_got"]).abs() > rtol * scale, KEY + ["value", "value_got"]]
    spread = merged["spread"].notna()
    assert spread.equals(merged["spread_got"].notna())
    np.testing.assert_allclose(merged["spread_got"][spread], merged["spread"][spread], rtol=rtol)


@pytest.fixture(scope="module")
def dump_with_moments(stsb_corpus, tmp_path_factory):
    """The real MiniLM dump of the 60 sentences with the moments the embed stage writes beside it."""
    path = tmp_path_factory.mktemp("suite") / "minilm.arrow"
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["moments"] = LayerMoments(n_layers)
        return made["moments"]

    summary = embed_corpus(stsb_corpus, MINILM, path, corpus_name="stsb-test", device="cpu", progress=False,
                           consumer=consumer)
    made["moments"].save(moments_path(path), {"rows": summary["tokens"]})
    return path


@pytest.fixture(scope="module")
def statistics(dump_with_moments):
    plan = pass_plan({name: options_of(name) for name in METRICS})
    return collect_statistics(dump_with_moments, plan, progress=False)


@pytest.fixture(scope="module")
def tables(dump_with_moments):
    return {name: compute_metric(dump_with_moments, name, options_of(name), model="m", corpus="c", progress=False)
            for name in METRICS}


def test_every_metric_from_one_read_equals_its_own_run(statistics, tables, tmp_path):
    assert int(statistics["reads"]) == 1  # partition isotropy's U and the cosine family's mean came from embed
    save_statistics(statistics, tmp_path / "stats.npz")
    loaded = load_statistics(tmp_path / "stats.npz")
    for name in METRICS:
        assert_same_table(tables[name], derive_metric(loaded, name, options_of(name), model="m", corpus="c"))


def test_without_the_moments_file_the_pass_reads_twice_and_agrees(dump_with_moments, tables, tmp_path):
    bare = tmp_path / "bare.arrow"
    bare.write_bytes(dump_with_moments.read_bytes())  # the same dump, no moments beside it
    metrics = {name: options_of(name) for name in ("partition_isotropy", "cosine_family", "spectrum")}
    statistics = collect_statistics(bare, pass_plan(metrics), progress=False)
    assert int(statistics["reads"]) == 2
    for name, options in metrics.items():
        assert_same_table(tables[name], derive_metric(statistics, name, options, model="m", corpus="c"))
    only_one_read = collect_statistics(bare, pass_plan({"spectrum": {}, "token_uniformity": {}}), progress=False)
    assert int(only_one_read["reads"]) == 1


@pytest.mark.parametrize("name, options", [
    ("token_uniformity", {"min_tokens": 8}),
    ("spectrum", {"variants": ["centred"], "explained_variance_k": [2, 5]}),
    ("partition_isotropy", {"signs": "canonical", "variants": ["uncentred"]}),
    ("word_frequency", {"log_frequency": False, "components": 2}),
    ("isoscore", {"sample_size": 200, "zeta": 0.5, "bootstrap": 3}),
    ("clusters", {"sample_size": 300, "k_min": 3, "k_max": 3, "n_init": 1, "repeats": 1}),
    ("lid", {"sample_size": 300, "k": 5, "squared_distances": True, "bootstrap": 0}),
    ("alignment_uniformity", {"sample_size": 300, "t": 1.0, "bootstrap": 0}),
])
def test_a_derived_option_re_derives_without_a_read(dump_with_moments, statistics, name, options):
    expected = compute_metric(dump_with_moments, name, options, model="m", corpus="c", progress=False)
    assert_same_table(expected, derive_metric(statistics, name, options, model="m", corpus="c"))


def test_capped_options_are_recorded_as_in_each_metrics_own_run(dump_with_moments, caplog):
    """Options lowered to what the dump allows (k_max to n - 1, sample_size to every token) give the rows and
    sample_size column of each metric's own run, with the warning said once per job (issue 13 through the suite)."""
    capped = {"clusters": {"sample_size": 5, "k_max": 10, "n_init": 1, "repeats": 1},
              "lid": {"sample_size": 100_000, "k": 10, "bootstrap": 0},
              "alignment_uniformity": {"sample_size": 100_000, "bootstrap": 0}}
    statistics = collect_statistics(dump_with_moments, pass_plan(capped), progress=False)
    metadata = open_dump(dump_with_moments).metadata
    tokens = int(metadata["tokens"]) - 2 * int(metadata["sentences"])  # every regular token ([CLS], [SEP] dropped)
    for name, options in capped.items():
        expected = compute_metric(dump_with_moments, name, options, model="m", corpus="c", progress=False)
        caplog.clear()
        got = derive_metric(statistics, name, options, model="m", corpus="c")
        assert_same_table(expected, got)
        assert len([r for r in caplog.records if "lowered" in r.getMessage()]) == 1, name
        if name == "clusters":
            assert set(got.loc[got.metric == "clusters_k_max", "value"]) == {4.0}
            assert set(got["sample_size"]) == {5}
        else:
            assert set(got["sample_size"]) == {tokens}


def test_a_changed_pass_option_asks_for_the_pass(statistics):
    with pytest.raises(StatisticsError, match="rerun the metrics pass"):
        derive_metric(statistics, "cosine_family", {"type_sampling": "one_per_type"}, model="m", corpus="c")
    with pytest.raises(StatisticsError, match="pass options"):
        derive_metric(statistics, "lid", {"sample_size": 300, "seed": 1}, model="m", corpus="c")


def test_one_shared_sample_per_seed_serves_every_size():
    rng = np.random.default_rng(0)
    ids, pos = torch.from_numpy(rng.integers(0, 500, 3000)), torch.from_numpy(rng.integers(0, 40, 3000))
    big, small = ReservoirSample(400, 3), ReservoirSample(150, 3)
    for part in range(0, 3000, 256):
        chunk = slice(part, part + 256)
        big.update(ids[chunk], pos[chunk], tag=ids[chunk] * 100 + pos[chunk])
        small.update(ids[chunk], pos[chunk], tag=ids[chunk] * 100 + pos[chunk])
    for name, values in small.rows().items():
        assert torch.equal(big.bottom(150).rows()[name], values)
    with pytest.raises(ValueError):
        small.bottom(151)
    plan = pass_plan({"lid": {"sample_size": 300}, "clusters": {"sample_size": 500}, "isoscore": {}},
                     {"sample_size": 800, "seed": 0, "special_tokens": False})
    assert plan["samples"] == {"0_regular": 1024}  # isoscore's default 1024 is the largest of seed 0
    assert "k" not in plan["metrics"]["lid"] and plan["metrics"]["lid"]["sample_size"] == 300
    assert token_hash(0, torch.tensor([1]), torch.tensor([2])).dtype == torch.int64


def test_no_dump_mode_gives_the_statistics_of_a_dump(stsb_corpus, dump_with_moments, statistics, tmp_path):
    """The embed stage feeding the suite directly (no dump): the same tables, two forward passes because partition
    isotropy and the centred cosine family need the moments first."""
    plan = pass_plan({name: options_of(name) for name in METRICS})
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["suite"] = Suite(plan, n_layers, metadata)
        return made["suite"]

    summary = embed_corpus(stsb_corpus, MINILM, None, corpus_name="stsb-test", device="cpu", progress=False,
                           consumer=consumer)
    assert summary["forward_passes"] == 2 and not list(tmp_path.iterdir())
    streamed = made["suite"].statistics()
    for name in METRICS:
        expected = derive_metric(statistics, name, options_of(name), model="m", corpus="c")
        assert_same_table(expected, derive_metric(streamed, name, options_of(name), model="m", corpus="c"))


def test_windows_bound_the_tokenised_corpus_and_keep_the_frequencies(stsb_corpus, dump_with_moments, tmp_path):
    windowed = tmp_path / "windowed.arrow"
    summary = embed_corpus(stsb_corpus, MINILM, windowed, device="cpu", progress=False, window_sentences=25)
    assert summary["windows"] == 3
    whole, parts = open_dump(dump_with_moments).read_index(), open_dump(windowed).read_index()
    key = ["sentence_id", "position"]
    whole, parts = (t.to_pandas().sort_values(key).reset_index(drop=True) for t in (whole, parts))
    pd.testing.assert_frame_equal(whole, parts)  # same tokens, same corpus-wide frequencies


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_half_precision_dumps_are_half_the_size_and_read_back_as_float32(stsb_corpus, dump_with_moments, tmp_path,
                                                                       precision):
    from tokenuni.store import layer_column, vectors

    path = tmp_path / f"{precision}.arrow"
    embed_corpus(stsb_corpus, {**MINILM, "dump_precision": precision}, path, device="cpu", progress=False)
    dump, reference = open_dump(path), open_dump(dump_with_moments)
    assert dump.metadata["dtype"] == precision
    assert path.stat().st_size < 0.6 * dump_with_moments.stat().st_size
    half = np.concatenate([vectors(b.column(layer_column(3))) for b in dump.batches([layer_column(3)])])
    full = np.concatenate([vectors(b.column(layer_column(3))) for b in reference.batches([layer_column(3)])])
    assert half.dtype == np.float32 or precision == "float16"
    expected = torch.from_numpy(full).to(getattr(torch, precision)).float().numpy()  # torch's rounding
    np.testing.assert_array_equal(half.astype(np.float32), expected)


def test_tokenising_in_chunks_gives_the_ids_of_one_call(monkeypatch, stsb_corpus):
    """The embed stage tokenises TOKENIZE_CHUNK texts per tokenizer call (its encodings are held at once): the ids,
    special-token masks and truncation count are those of one call over every text."""
    from transformers import AutoTokenizer

    from tokenuni.corpora import read_corpus
    from tokenuni.embed import forward
    from tokenuni.weights import WEIGHT_PACKAGES

    tokenizer = AutoTokenizer.from_pretrained(WEIGHT_PACKAGES[MINILM["id"]].materialise(MINILM["id"]))
    texts = read_corpus(stsb_corpus)["text"].to_pylist()
    monkeypatch.setattr(forward, "TOKENIZE_CHUNK", len(texts))
    whole = forward.tokenize(tokenizer, texts, 12)
    monkeypatch.setattr(forward, "TOKENIZE_CHUNK", 7)
    assert forward.tokenize(tokenizer, texts, 12) == whole
    assert whole[2] > 0 and len(whole[0]) == len(texts)  # max_length 12 truncates some
