"""STS evaluation: correlations against scipy, the aggregation protocols, pair counts of the real mirror."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.stats

from conftest import MINILM

STS12_FILES = [f"sts12-16/raw/STS12-en-test/STS.input.{name}.txt"
               for name in ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews")]
MIRROR_FILES = {  # dataset key -> (format, files), as in config/paper.yaml and config/config.yaml
    "stsb-train": ("stsb", ["stsbenchmark/sts-train.csv"]),
    "stsb-dev": ("stsb", ["stsbenchmark/sts-dev.csv"]),
    "stsb-test": ("stsb", ["stsbenchmark/sts-test.csv"]),
    "sick-train": ("sick", ["sick/SICK_train.txt"]),
    "sick-trial": ("sick", ["sick/SICK_trial.txt"]),
    "sick-test": ("sick", ["sick/SICK_test_annotated.txt"]),
    "sts12": ("sts_semeval", STS12_FILES),
    "sts13": ("sts_semeval", [f"sts12-16/raw/STS13-en-test/STS.input.{n}.txt" for n in ("FNWN", "headlines", "OnWN")]),
    "sts14": ("sts_semeval", [f"sts12-16/raw/STS14-en-test/STS.input.{n}.txt" for n in
                              ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")]),
    "sts15": ("sts_semeval", [f"sts12-16/raw/STS15-en-test/STS.input.{n}.txt" for n in
                              ("answers-forums", "answers-students", "belief", "headlines", "images")]),
    "sts16": ("sts_semeval", [f"sts12-16/raw/STS16-en-test/STS2016.input.{n}.txt" for n in
                              ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")]),
}


def _synthetic(seed=0, subsets=(("a", 40), ("b", 25), ("c", 60)), d=16):
    """A paired corpus table with integer (tied) scores and vectors whose cosines correlate with them."""
    rng = np.random.default_rng(seed)
    rows, vecs = [], []
    pair = 0
    for subset, n in subsets:
        for _ in range(n):
            score = float(rng.integers(0, 6))
            base = rng.normal(size=d)
            for side in (0, 1):
                rows.append({"sentence_id": len(rows), "pair_id": pair, "side": side, "score": score,
                             "label": None, "subset": subset})
                vecs.append(base + rng.normal(scale=3.0 / (1.0 + score), size=d) if side else base)
            pair += 1
    order = rng.permutation(len(rows))  # pairs need not be contiguous
    table = pa.Table.from_pylist([rows[i] for i in order])
    return table, np.asarray(vecs)[order]


def test_pair_cosines_match_numpy():
    from tokenuni.sts import pair_cosines

    table, vecs = _synthetic()
    pairs = pair_cosines(table, vecs)
    frame = table.to_pandas()
    assert list(pairs.columns) == ["pair_id", "subset", "score", "cosine"]
    assert pairs["pair_id"].tolist() == sorted(frame["pair_id"].unique())
    for _, row in pairs.sample(20, random_state=0).iterrows():
        a = vecs[((frame.pair_id == row.pair_id) & (frame.side == 0)).to_numpy()][0]
        b = vecs[((frame.pair_id == row.pair_id) & (frame.side == 1)).to_numpy()][0]
        assert row.cosine == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-12)
        assert row.score == frame[frame.pair_id == row.pair_id].score.iloc[0]
    # a DataFrame works as well as a pyarrow Table
    pd.testing.assert_frame_equal(pair_cosines(frame, vecs), pairs)


def test_correlations_match_scipy_and_protocols():
    from tokenuni.numerics import spearman
    from tokenuni.sts import pair_cosines, sts_correlations

    table, vecs = _synthetic()
    pairs = pair_cosines(table, vecs)
    result = sts_correlations(pairs, "sts-synthetic")
    assert list(result.columns) == ["dataset", "protocol", "subset", "spearman", "pearson", "n"]
    assert result["protocol"].tolist() == ["subset"] * 3 + ["concatenated", "mean_over_subsets"]
    assert (result["dataset"] == "sts-synthetic").all()
    subset_rows = result[result.protocol == "subset"].set_index("subset")
    for subset, group in pairs.groupby("subset"):
        assert subset_rows.loc[subset, "n"] == len(group)
        assert subset_rows.loc[subset, "spearman"] == pytest.approx(
            100 * scipy.stats.spearmanr(group.cosine, group.score).statistic, abs=1e-9)
        assert subset_rows.loc[subset, "pearson"] == pytest.approx(
            100 * scipy.stats.pearsonr(group.cosine, group.score).statistic, abs=1e-9)
    concatenated = result[result.protocol == "concatenated"].iloc[0]
    assert concatenated["n"] == len(pairs) and pd.isna(concatenated["subset"])
    assert concatenated["spearman"] == pytest.approx(100 * scipy.stats.spearmanr(pairs.cosine, pairs.score).statistic,
                                                     abs=1e-9)
    assert concatenated["pearson"] == pytest.approx(100 * scipy.stats.pearsonr(pairs.cosine, pairs.score).statistic,
                                                    abs=1e-9)
    mean = result[result.protocol == "mean_over_subsets"].iloc[0]
    assert mean["n"] == len(pairs)
    assert mean["spearman"] == pytest.approx(subset_rows["spearman"].mean(), abs=1e-12)
    assert mean["pearson"] == pytest.approx(subset_rows["pearson"].mean(), abs=1e-12)
    # ties: average ranks as scipy (the scores are rounded, so they tie)
    scores = pairs.score.to_numpy()
    assert len(np.unique(scores)) < len(scores)
    assert spearman(pairs.cosine, scores) == scipy.stats.spearmanr(pairs.cosine, scores).statistic


def test_single_subset_gets_protocol_all():
    from tokenuni.sts import pair_cosines, sts_correlations

    table, vecs = _synthetic(seed=1, subsets=(("stsbenchmark/sts-test.csv", 50),))
    result = sts_correlations(pair_cosines(table, vecs), "stsb-test")
    assert result["protocol"].tolist() == ["subset", "all"]
    assert result["spearman"].iloc[0] == result["spearman"].iloc[1] and result["n"].tolist() == [50, 50]


def test_pair_cosines_errors():
    from tokenuni.sts import STSError, pair_cosines

    table, vecs = _synthetic(subsets=(("a", 5),))
    with pytest.raises(STSError, match="vectors have shape"):
        pair_cosines(table, vecs[:-1])
    frame = table.to_pandas()
    with pytest.raises(STSError, match="not paired"):
        pair_cosines(frame.assign(pair_id=None), vecs)
    lone = frame[~((frame.pair_id == 2) & (frame.side == 1))]
    with pytest.raises(STSError, match=r"pairs \[2\] lack a side"):
        pair_cosines(lone, vecs[lone.index])
    with pytest.raises(STSError, match="zero vector"):
        pair_cosines(frame, np.where(np.arange(len(frame))[:, None] == 0, 0.0, vecs))


def test_sts_dataset_keys_and_pair_count_check():
    from tokenuni.sts import STS_MIRROR_COUNTS, STSError, check_pair_count, sts_dataset_key

    assert sts_dataset_key(STS12_FILES[0]) == "sts12"
    assert sts_dataset_key("sts12-16/raw/STS16-en-test/STS2016.input.headlines.txt") == "sts16"
    assert sts_dataset_key("stsbenchmark/sts-dev.csv") == "stsb-dev"
    assert sts_dataset_key("sick/SICK_test_annotated.txt") == "sick-test"
    assert sts_dataset_key("test") is None
    assert check_pair_count("sts12", 3108) == 3108
    with pytest.raises(STSError, match=r"'sts12': 1000 scored pairs, expected 3108 \(not the full set"):
        check_pair_count("sts12", 1000)
    assert check_pair_count("sts12", 1000, sampled=True) == 1000
    with pytest.raises(STSError, match="more pairs than the full set"):
        check_pair_count("sick-trial", 501, sampled=True)
    with pytest.raises(STSError, match="no known pair count"):
        check_pair_count("sts17", 10)
    assert check_pair_count("sts17", 10, expected=10) == 10
    assert sum(STS_MIRROR_COUNTS[k] for k in ("sts12", "sts13", "sts14", "sts15", "sts16")) == 12544


def test_evaluate_transform_opens_each_sentence_file_once(tmp_path, monkeypatch):
    """One read per file per job: a dataset's file gives its provenance check, vectors, layers label and the
    sampled flag from one handle; a fit_on corpus is read once, also when it is an evaluated dataset."""
    import json

    import tokenuni.sentence_store as sentence_store
    from tokenuni.sentence_store import write_sentences
    from tokenuni.sts.evaluation import evaluate_transform

    meta = {"model_id": "org/model", "corpus_max_sentences": "null",
            "poolings": json.dumps({"mean_first_last": {"pool": "mean", "layers": [1, 6]}})}
    files = {}
    for seed, key in enumerate(("stsb-test", "sick-r", "wiki")):
        table, vecs = _synthetic(seed=seed, subsets=((f"{key}-part", 20),))
        files[key] = tmp_path / f"{key}.arrow"
        write_sentences(files[key], table, {"mean_first_last": vecs}, {**meta, "corpus": key})
    reads = []
    real_memory_map = pa.memory_map
    monkeypatch.setattr(pa, "memory_map", lambda path, *args: reads.append(path) or real_memory_map(path, *args))
    opens = []
    real_open = sentence_store.open_sentences
    monkeypatch.setattr(sentence_store, "open_sentences", lambda path: opens.append(str(path)) or real_open(path))
    for fit_on, read in (("pool", ["stsb-test", "sick-r"]), ("wiki", ["wiki", "stsb-test", "sick-r"]),
                         ("sick-r", ["sick-r", "stsb-test"])):
        reads.clear()
        opens.clear()
        scores, _ = evaluate_transform(files, ["stsb-test", "sick-r"], model="m", pooling="mean_first_last",
                                       transform_name="whitening", transform_spec={"type": "whitening",
                                                                                   "fit_on": fit_on},
                                       geometry_metrics=[], expected={"model_id": "org/model"})
        assert opens == reads == [str(files[key]) for key in read], fit_on
        assert set(scores["layers"]) == {"1+6"} and set(scores["dataset"]) == {"stsb-test", "sick-r"}


def test_mirror_counts_are_the_mirror(mirror):
    """Every STS set of the mirror, read with the project's readers, has the README's scored-pair count."""
    from tokenuni.corpora import read_mirror
    from tokenuni.sts import STS_MIRROR_COUNTS, sts_dataset_key

    assert set(MIRROR_FILES) == set(STS_MIRROR_COUNTS)
    for key, (fmt, files) in MIRROR_FILES.items():
        examples = read_mirror(fmt, files, mirror)
        assert len(examples) == STS_MIRROR_COUNTS[key], key
        assert {sts_dataset_key(e.subset) for e in examples} == {key}


def test_minilm_on_sick_trial_and_sts12(mirror, tmp_path, capsys):
    """Real data: full SICK trial and STS12 from the mirror, MiniLM mean pooling of the last layer."""
    import torch

    from tokenuni.corpora import import_corpus
    from tokenuni.sentences import embed_sentences, read_sentences
    from tokenuni.sts import check_pair_count, pair_cosines, sts_correlations, sts_dataset_key

    torch.set_num_threads(1)
    specs = {
        "sick-trial": {"mirror": {"format": "sick", "files": ["sick/SICK_trial.txt"]}},
        "sts12": {"mirror": {"format": "sts_semeval", "files": STS12_FILES}},
    }
    results = []
    for name, spec in specs.items():
        corpus = tmp_path / f"{name}.parquet"
        summary = import_corpus({"name": name, "hub": None, **spec}, mirror, corpus)
        check_pair_count(name, summary["pairs"])
        out = tmp_path / f"{name}.arrow"
        embed_sentences(corpus, dict(MINILM, batch_size=64), {"mean_last": {"pool": "mean", "layers": [-1]}}, out,
                        corpus_name=name, device="cpu", progress=False)
        table, vecs = read_sentences(out, "mean_last")
        pairs = pair_cosines(table, vecs)
        assert {sts_dataset_key(s) for s in pairs.subset} == {name}
        results.append(sts_correlations(pairs, name))
    result = pd.concat(results, ignore_index=True)
    with capsys.disabled():
        print("\n" + result.round(2).to_string())
    aggregated = result[result.protocol != "subset"].set_index(["dataset", "protocol"])["spearman"]
    assert set(aggregated.index) == {("sick-trial", "all"), ("sts12", "concatenated"), ("sts12", "mean_over_subsets")}
    for value in aggregated:
        assert 65 < value < 88
    assert result[(result.dataset == "sts12") & (result.protocol == "subset")]["n"].tolist() == [750, 750, 459, 750, 399]
