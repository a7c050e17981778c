"""GLUE tasks: metrics against scikit-learn/scipy, label maps, and the real mirror's train/dev counts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tokenuni.glue import GLUE_MIRROR_COUNTS, GLUE_TASKS, GlueDataError, glue_metrics, load_task, task_spec

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    labels = rng.integers(0, 2, size=n)
    predictions = np.where(rng.random(n) < 0.7, labels, 1 - labels)  # correlated, imperfect
    mrpc = glue_metrics("mrpc", predictions, labels)
    assert list(mrpc) == ["f1", "accuracy"]
    assert mrpc["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, predictions), abs=1e-12)
    assert mrpc["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions), abs=1e-12)
    cola = glue_metrics("cola", predictions, labels)
    assert cola["matthews_corrcoef"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)
    assert glue_metrics("sst2", predictions, labels)["accuracy"] == pytest.approx(np.mean(predictions == labels))
    # logits are arg-maxed
    logits = rng.normal(size=(n, 2))
    assert glue_metrics("rte", logits, labels)["accuracy"] == pytest.approx(
        sklearn_metrics.accuracy_score(labels, logits.argmax(1)))
    # three classes (MNLI) for Matthews' multiclass form
    from tokenuni.glue import matthews_corrcoef

    y3, p3 = rng.integers(0, 3, size=n), rng.integers(0, 3, size=n)
    assert matthews_corrcoef(p3, y3) == pytest.approx(sklearn_metrics.matthews_corrcoef(y3, p3), abs=1e-12)


def test_degenerate_classification_metrics_match_sklearn():
    labels = np.array([0, 1, 0, 1, 1])
    constant = np.zeros(5, dtype=int)
    m = glue_metrics("mrpc", constant, labels)
    assert m["f1"] == sklearn_metrics.f1_score(labels, constant, zero_division=0) == 0.0
    assert glue_metrics("cola", constant, labels)["matthews_corrcoef"] == sklearn_metrics.matthews_corrcoef(
        labels, constant) == 0.0
    assert glue_metrics("cola", labels, labels)["matthews_corrcoef"] == pytest.approx(1.0)
    assert glue_metrics("cola", 1 - labels, labels)["matthews_corrcoef"] == pytest.approx(-1.0)


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 26, size=300) / 5.0  # 0-5 in steps of 0.2: ties, like STS-B
    predictions = labels + rng.normal(scale=1.5, size=300)
    m = glue_metrics("stsb", predictions, labels)
    assert list(m) == GLUE_TASKS["stsb"]["metrics"]
    assert m["pearson"] == pytest.approx(scipy.stats.pearsonr(predictions, labels)[0], abs=1e-12)
    assert m["spearman"] == pytest.approx(scipy.stats.spearmanr(predictions, labels)[0], abs=1e-12)
    assert m["pearson_spearman_mean"] == pytest.approx((m["pearson"] + m["spearman"]) / 2)
    assert -1 <= m["spearman"] <= 1  # × 1, not × 100
    constant = glue_metrics("stsb", np.full(300, 2.5), labels)
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])


def test_task_table():
    for spec in GLUE_TASKS.values():
        assert spec["kind"] in ("classification", "regression")
        assert spec["main_metric"] in spec["metrics"]
        if spec["kind"] == "classification":
            assert sorted(spec["labels"].values()) == list(range(spec["num_labels"]))
        else:
            assert spec["labels"] is None and spec["num_labels"] == 1
    assert GLUE_TASKS["rte"]["labels"] == {"entailment": 0, "not_entailment": 1}
    assert GLUE_TASKS["mrpc"]["main_metric"] == "f1"
    assert GLUE_TASKS["cola"]["main_metric"] == "matthews_corrcoef"
    assert {n for n, s in GLUE_TASKS.items() if not s["available"]} == {"qnli", "qqp", "mnli"}
    assert task_spec("SST-2") is GLUE_TASKS["sst2"] and task_spec("STS_B") is GLUE_TASKS["stsb"]
    with pytest.raises(GlueDataError, match="unknown GLUE task"):
        task_spec("wnli2")


@pytest.mark.parametrize("task", sorted(GLUE_MIRROR_COUNTS))
def test_every_task_loads_with_the_readme_counts(mirror, task):
    spec = GLUE_TASKS[task]
    for split, expected in zip(("train", "dev"), GLUE_MIRROR_COUNTS[task]):
        texts_a, texts_b, labels = load_task(task, split, mirror)
        assert len(texts_a) == len(labels) == expected
        assert (texts_b is None) == (task in ("sst2", "cola"))
        if texts_b is not None:
            assert len(texts_b) == expected
        assert all(isinstance(t, str) and t for t in texts_a[:50])
        if spec["kind"] == "classification":
            assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(spec["num_labels"]))
        else:
            assert labels.dtype == np.float32 and labels.min() >= 0 and labels.max() <= 5


def _raw_rows(path, skip_header):
    lines = path.read_bytes().decode("utf-8").lstrip("\ufeff").split("\n")
    return [line.rstrip("\r").split("\t") for line in lines[1 if skip_header else 0:] if line.strip()]


def test_label_mapping_follows_the_files(mirror):
    # RTE: label column by name, entailment -> 0, not_entailment -> 1
    rows = _raw_rows(mirror / "glue/RTE/dev.tsv", True)
    a, b, labels = load_task("rte", "dev", mirror)
    assert [r[1] for r in rows] == a and [r[2] for r in rows] == b
    assert labels.tolist() == [{"entailment": 0, "not_entailment": 1}[r[3]] for r in rows]
    # SST-2: "sentence label", 1 = positive
    rows = _raw_rows(mirror / "glue/SST-2/dev.tsv", True)
    a, b, labels = load_task("sst2", "dev", mirror)
    assert b is None and a == [r[0] for r in rows] and labels.tolist() == [int(r[1]) for r in rows]
    # CoLA: no header, label in column 2, sentence in column 4
    rows = _raw_rows(mirror / "glue/CoLA/dev.tsv", False)
    a, _, labels = load_task("cola", "dev", mirror)
    assert a == [r[3] for r in rows] and labels.tolist() == [int(r[1]) for r in rows]
    # MRPC: Quality first, strings 4 and 5 (the file starts with a BOM)
    rows = _raw_rows(mirror / "glue/MRPC/dev.tsv", True)
    a, b, labels = load_task("mrpc", "dev", mirror)
    assert labels.tolist() == [int(r[0]) for r in rows] and a[0] == rows[0][3] and b[-1] == rows[-1][4]
    # STS-B: score column 5
    rows = _raw_rows(mirror / "stsbenchmark/sts-dev.csv", False)
    a, b, scores = load_task("stsb", "dev", mirror)
    np.testing.assert_allclose(scores, [float(r[4]) for r in rows], rtol=1e-6)
    assert a[7] == rows[7][5] and b[7] == rows[7][6]


def test_seeded_subsampling(mirror):
    full_a, full_b, full_y = load_task("mrpc", "train", mirror)
    a1, b1, y1 = load_task("mrpc", "train", mirror, max_examples=50, seed=3)
    a2, b2, y2 = load_task("mrpc", "train", mirror, max_examples=50, seed=3)
    a3, _, _ = load_task("mrpc", "train", mirror, max_examples=50, seed=4)
    assert (a1, b1) == (a2, b2) and np.array_equal(y1, y2) and len(a1) == 50
    assert a1 != a3
    position = {(a, b): i for i, (a, b) in enumerate(zip(full_a, full_b))}
    index = [position[(a, b)] for a, b in zip(a1, b1)]
    assert index == sorted(index)  # file order kept
    assert y1.tolist() == [int(full_y[i]) for i in index]
    everything = load_task("rte", "dev", mirror, max_examples=10_000)
    assert len(everything[0]) == 277


def test_unavailable_and_bad_requests(mirror):
    for task, missing in (("qnli", "glue/QNLI/train.tsv"), ("qqp", "glue/QQP/train.tsv"),
                          ("mnli", "glue/MNLI/train.tsv")):
        if (mirror / missing).exists():
            continue
        with pytest.raises(GlueDataError, match=missing.replace(".", r"\.")):
            load_task(task, "train", mirror)
    with pytest.raises(GlueDataError, match="split"):
        load_task("sst2", "test", mirror)
    with pytest.raises(GlueDataError, match="mirror"):
        load_task("sst2", "dev", mirror / "nowhere")


def test_qnli_layout_loads_when_present(tmp_path):
    (tmp_path / "glue/QNLI").mkdir(parents=True)
    (tmp_path / "glue/QNLI/dev.tsv").write_text(
        "index\tquestion\tsentence\tlabel\n0\tWhat \"is\" it?\tIt is.\tentailment\n"
        "1\tWho?\tNobody.\tnot_entailment\n", encoding="utf-8")
    a, b, labels = load_task("qnli", "dev", tmp_path)
    assert a == ['What "is" it?', "Who?"] and b == ["It is.", "Nobody."] and labels.tolist() == [0, 1]
