"""Mirror readers against the row counts verified in shared/data/README.md, sampling and atomic writes."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tokenuni.corpora import (CorpusError, corpus_metadata, import_corpus, read_corpus, read_mirror,
                              sample_examples)

STS_SEMEVAL = {
    "STS12": ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"],
    "STS13": ["FNWN", "headlines", "OnWN"],
    "STS14": ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"],
    "STS15": ["answers-forums", "answers-students", "belief", "headlines", "images"],
    "STS16": ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"],
}


@pytest.mark.parametrize("fmt, files, count", [
    ("stsb", ["stsbenchmark/sts-train.csv"], 5749),
    ("stsb", ["stsbenchmark/sts-dev.csv"], 1500),
    ("stsb", ["stsbenchmark/sts-test.csv"], 1379),
    ("sick", ["sick/SICK_train.txt"], 4500),
    ("sick", ["sick/SICK_trial.txt"], 500),
    ("sick", ["sick/SICK_test_annotated.txt"], 4927),
    ("sst2", ["glue/SST-2/train.tsv"], 67349),
    ("sst2", ["glue/SST-2/dev.tsv"], 872),
    ("sst2", ["glue/SST-2/test.tsv"], 1821),
    ("mrpc", ["glue/MRPC/train.tsv"], 3668),
    ("mrpc", ["glue/MRPC/dev.tsv"], 408),
    ("mrpc", ["glue/MRPC/test.tsv"], 1725),
    ("rte", ["glue/RTE/train.tsv"], 2490),
    ("rte", ["glue/RTE/dev.tsv"], 277),
    ("rte", ["glue/RTE/test.tsv"], 3000),
    ("cola", ["glue/CoLA/train.tsv"], 8551),
    ("cola", ["glue/CoLA/dev.tsv"], 1043),
    ("cola", ["glue/CoLA/test.tsv"], 1063),
])
def test_mirror_row_counts(mirror, fmt, files, count):
    examples = read_mirror(fmt, files, mirror)
    assert len(examples) == count
    assert all(text.strip() for e in examples for text in e.texts)


@pytest.mark.parametrize("year, count", [("STS12", 3108), ("STS13", 1500), ("STS14", 3750),
                                         ("STS15", 3000), ("STS16", 1186)])
def test_sts_semeval_scored_pairs(mirror, year, count):
    prefix = "STS2016" if year == "STS16" else "STS"
    files = [f"sts12-16/raw/{year}-en-test/{prefix}.input.{name}.txt" for name in STS_SEMEVAL[year]]
    examples = read_mirror("sts_semeval", files, mirror)
    assert len(examples) == count
    assert all(0.0 <= e.score <= 5.0 for e in examples)


def test_labels_and_scores_are_parsed(mirror):
    sick = read_mirror("sick", ["sick/SICK_trial.txt"], mirror)
    assert {e.label for e in sick} == {"NEUTRAL", "ENTAILMENT", "CONTRADICTION"}
    assert all(1.0 <= e.score <= 5.0 for e in sick)
    mrpc = read_mirror("mrpc", ["glue/MRPC/dev.tsv"], mirror)
    assert {e.label for e in mrpc} == {"0", "1"}
    assert not mrpc[0].texts[0].startswith("\ufeff")
    sst = read_mirror("sst2", ["glue/SST-2/test.tsv"], mirror)
    assert all(e.label is None for e in sst)


def test_unbalanced_quotes_are_kept_verbatim(mirror):
    """Read without CSV quoting: a stray '"' must not swallow the following rows."""
    examples = read_mirror("stsb", ["stsbenchmark/sts-train.csv"], mirror)
    assert any('"' in t for e in examples for t in e.texts)
    assert len(examples) == 5749


def test_wikitext_skips_titles_and_splits_sentences(mirror):
    examples = read_mirror("wikitext", ["wikitext-2/wiki.valid.tokens"], mirror)
    texts = [e.texts[0] for e in examples]
    assert not any(t.startswith("= ") for t in texts)
    assert all(len(t.split()) >= 3 for t in texts)
    paragraphs = read_mirror("wikitext", ["wikitext-2/wiki.valid.tokens"], mirror, {"split_sentences": False})
    assert len(texts) > 2 * len(paragraphs)


def test_bad_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"bad\.txt:2: not valid UTF-8"):
        read_mirror("lines", ["bad.txt"], tmp_path)


def test_short_row_names_file_and_line(tmp_path):
    (tmp_path / "sts.csv").write_text("main-news\tf\t2012\t1\t3.0\tonly one sentence\n")
    with pytest.raises(CorpusError, match=r"sts\.csv:1: expected 7 tab-separated fields \(genre, .*\), found 6$"):
        read_mirror("stsb", ["sts.csv"], tmp_path)


def test_crlf_and_bom_are_stripped(tmp_path):
    (tmp_path / "l.txt").write_bytes("\ufeffone line\r\ntwo line\r\n".encode())
    assert [e.texts[0] for e in read_mirror("lines", ["l.txt"], tmp_path)] == ["one line", "two line"]


def _spec(max_sentences, seed=0):
    return {"name": "stsb-dev", "hub": None, "mirror": {"format": "stsb", "files": ["stsbenchmark/sts-dev.csv"]},
            "max_sentences": max_sentences, "seed": seed, "drop_empty": True}


def test_import_is_seeded_keeps_pairs_and_is_deterministic(mirror, tmp_path):
    first = import_corpus(_spec(101), mirror, tmp_path / "a.parquet")
    import_corpus(_spec(101), mirror, tmp_path / "b.parquet")
    import_corpus(_spec(101, seed=1), mirror, tmp_path / "c.parquet")
    a, b, c = (read_corpus(tmp_path / f"{n}.parquet") for n in "abc")
    assert first["rows_before"] == 3000 and first["rows_after"] == 100 and first["pairs"] == 50
    assert a.equals(b) and not a.equals(c)
    assert a["sentence_id"].to_pylist() == list(range(100))
    assert a["pair_id"].to_pylist() == [i // 2 for i in range(100)]
    assert a["side"].to_pylist() == [0, 1] * 50
    meta = corpus_metadata(tmp_path / "a.parquet")
    assert meta["source"] == "mirror:stsb" and len(meta["digest"]) == 64
    assert len(first["files"][0]["sha256"]) == 64


def test_sample_keeps_corpus_order():
    from tokenuni.corpora import Example

    examples = [Example((str(i),)) for i in range(50)]
    sample = sample_examples(examples, 10, seed=3)
    assert len(sample) == 10
    assert [int(e.texts[0]) for e in sample] == sorted(int(e.texts[0]) for e in sample)


def test_failed_import_leaves_nothing(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "bad.txt").write_bytes(b"ok\n\xff\n")
    spec = {"name": "bad", "mirror": {"format": "lines", "files": ["bad.txt"]}}
    with pytest.raises(CorpusError):
        import_corpus(spec, tmp_path / "m", tmp_path / "out" / "bad.parquet")
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_missing_mirror_without_hub_is_a_clear_error(tmp_path):
    spec = {"name": "gone", "mirror": {"format": "lines", "files": ["nowhere.txt"]}}
    with pytest.raises(CorpusError, match=r"corpus 'gone': missing mirror file\(s\): .*nowhere\.txt"):
        import_corpus(spec, tmp_path, tmp_path / "x.parquet")


def test_parquet_is_readable_without_tokenuni(mirror, tmp_path):
    import_corpus(_spec(20), mirror, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.num_rows == 20 and set(table.column_names) >= {"sentence_id", "text", "score"}
