"""GLUE tasks for fine-tuning: where each task lives in the data mirror, its labels and its metrics.

The tasks are those of Yan et al. ("Addressing Token Uniformity in Transformers via Singular Value
Transformation", UAI 2022: RTE, CoLA, MRPC, SST-2, QNLI, QQP, MNLI) and of Rudman & Eickhoff
("Stable Anisotropic Regularization", ICLR 2024: SST-2, QNLI, RTE, MRPC, QQP, CoLA, STS-B), evaluated
on the GLUE dev sets (Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural
Language Understanding", ICLR 2019), as both papers do.

:data:`GLUE_TASKS` maps a task name to::

    format       mirror format of :mod:`tokenuni.corpora` (``None``: read here, see below)
    train, dev   mirror files, relative to the data mirror root (``$TOKENUNI_DATA``)
    kind         "classification" or "regression"
    num_labels   classes (1 for the regression task STS-B)
    labels       raw label string in the file -> class id (``None`` for regression)
    metrics      metric names :func:`glue_metrics` returns, in GLUE's order
    main_metric  the one metric used for model selection and summary tables
    available    whether the shared data mirror carries the task

Label ids follow the GLUE / Hugging Face ``nyu-mll/glue`` convention (RTE: entailment = 0,
not_entailment = 1; MNLI: entailment, neutral, contradiction = 0, 1, 2; binary tasks: the file's 0/1).

STS-B (regression on the 0–5 gold score) is read from the official STS Benchmark release in the
mirror (``stsbenchmark/sts-{train,dev}.csv``: the same 5,749 / 1,500 pairs as GLUE's STS-B copy).
Its main metric is ``pearson_spearman_mean``, the mean of Pearson's r and Spearman's ρ, which is how
the GLUE leaderboard folds STS-B into its overall score (and Hugging Face's ``combined_score``); GLUE
papers that quote one number quote Pearson, which is also returned.

QNLI, QQP and MNLI are declared (files as in GLUE's ``download_glue_data.py`` layout) but the shared
mirror does not carry them (each > 20 MB); :func:`load_task` raises :class:`GlueDataError` naming the
missing file. Drop the files into the mirror and they load (read by header columns here).

Every metric is on the 0–1 scale (× 1, not × 100 as papers print them): accuracy, binary F1 of
class 1, Matthews correlation, Pearson's r, Spearman's ρ. They are computed with numpy/scipy and
equal scikit-learn's ``accuracy_score``, ``f1_score``, ``matthews_corrcoef`` (0 when undefined)
and scipy's ``pearsonr`` / ``spearmanr`` (NaN when a side is constant).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np

from tokenuni.corpora import FORMAT_LABELS, CorpusError, Example, has_visible_text, read_mirror
from tokenuni.numerics import pearson, spearman

log = logging.getLogger(__name__)

_BINARY = {"0": 0, "1": 1}


def _label_ids(fmt: str) -> dict[str, int]:
    """Raw label -> class id of a mirror format (its label set, in class-id order, lives in tokenuni.corpora)."""
    return {label: index for index, label in enumerate(FORMAT_LABELS[fmt])}


GLUE_TASKS: dict[str, dict] = {
    "sst2": {"format": "sst2", "train": "glue/SST-2/train.tsv", "dev": "glue/SST-2/dev.tsv",
             "kind": "classification", "num_labels": 2, "labels": _label_ids("sst2"),
             "metrics": ["accuracy"], "main_metric": "accuracy", "available": True},
    "mrpc": {"format": "mrpc", "train": "glue/MRPC/train.tsv", "dev": "glue/MRPC/dev.tsv",
             "kind": "classification", "num_labels": 2, "labels": _label_ids("mrpc"),
             "metrics": ["f1", "accuracy"], "main_metric": "f1", "available": True},
    "rte": {"format": "rte", "train": "glue/RTE/train.tsv", "dev": "glue/RTE/dev.tsv",
            "kind": "classification", "num_labels": 2, "labels": _label_ids("rte"),
            "metrics": ["accuracy"], "main_metric": "accuracy", "available": True},
    "cola": {"format": "cola", "train": "glue/CoLA/train.tsv", "dev": "glue/CoLA/dev.tsv",
             "kind": "classification", "num_labels": 2, "labels": _label_ids("cola"),
             "metrics": ["matthews_corrcoef"], "main_metric": "matthews_corrcoef", "available": True},
    "stsb": {"format": "stsb", "train": "stsbenchmark/sts-train.csv", "dev": "stsbenchmark/sts-dev.csv",
             "kind": "regression", "num_labels": 1, "labels": None,
             "metrics": ["pearson", "spearman", "pearson_spearman_mean"], "main_metric": "pearson_spearman_mean",
             "available": True},
    "qnli": {"format": None, "train": "glue/QNLI/train.tsv", "dev": "glue/QNLI/dev.tsv",
             "kind": "classification", "num_labels": 2, "labels": {"entailment": 0, "not_entailment": 1},
             "metrics": ["accuracy"], "main_metric": "accuracy", "available": False,
             "columns": ("question", "sentence", "label")},
    "qqp": {"format": None, "train": "glue/QQP/train.tsv", "dev": "glue/QQP/dev.tsv",
            "kind": "classification", "num_labels": 2, "labels": dict(_BINARY),
            "metrics": ["f1", "accuracy"], "main_metric": "f1", "available": False,
            "columns": ("question1", "question2", "is_duplicate")},
    "mnli": {"format": None, "train": "glue/MNLI/train.tsv", "dev": "glue/MNLI/dev_matched.tsv",
             "kind": "classification", "num_labels": 3, "labels": {"entailment": 0, "neutral": 1, "contradiction": 2},
             "metrics": ["accuracy"], "main_metric": "accuracy", "available": False,
             "columns": ("sentence1", "sentence2", "gold_label")},
}

for _name, _spec in GLUE_TASKS.items():  # resolved once: a spec carries its name and whether it regresses
    _spec["name"], _spec["regression"] = _name, _spec["kind"] == "regression"

#: (train, dev) examples of each available task in the shared mirror (shared/data/README.md, verified).
GLUE_MIRROR_COUNTS: dict[str, tuple[int, int]] = {
    "sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277), "cola": (8551, 1043), "stsb": (5749, 1500),
}

SPLITS = ("train", "dev")


class GlueDataError(CorpusError):
    """A GLUE task that is unknown, missing from the mirror, or has unexpected labels."""


def task_spec(task: str | dict) -> dict:
    """The :data:`GLUE_TASKS` entry of ``task`` (a name, case-insensitive, or an entry itself: returned as is
    when it carries ``name`` and ``regression``, else completed)."""
    if isinstance(task, dict):
        if "name" in task and "regression" in task:
            return task
        return {**task, "name": task.get("name", "task"), "regression": task.get("kind") == "regression"}
    key = str(task).lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise GlueDataError(f"unknown GLUE task {task!r}; known: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


# -- metrics ---------------------------------------------------------------------------------------
def _as_classes(predictions) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:  # logits or probabilities
        return predictions.argmax(axis=1)
    return predictions.astype(np.int64)


def accuracy(predictions, labels) -> float:
    predictions, labels = _as_classes(predictions), np.asarray(labels).astype(np.int64)
    return float(np.mean(predictions == labels)) if len(labels) else math.nan


def binary_f1(predictions, labels, positive: int = 1) -> float:
    """F1 of class ``positive``: 2TP / (2TP + FP + FN); 0 when there is no positive at all (as scikit-learn)."""
    predictions, labels = _as_classes(predictions), np.asarray(labels).astype(np.int64)
    tp = int(np.sum((predictions == positive) & (labels == positive)))
    fp = int(np.sum((predictions == positive) & (labels != positive)))
    fn = int(np.sum((predictions != positive) & (labels == positive)))
    denominator = 2 * tp + fp + fn
    return 2.0 * tp / denominator if denominator else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation (multiclass form of Gorodkin 2004, as scikit-learn); 0 when undefined."""
    predictions, labels = _as_classes(predictions), np.asarray(labels).astype(np.int64)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    k = len(classes)
    y_true, y_pred = encoded[:len(labels)], encoded[len(labels):]
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (y_true, y_pred), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n_correct, n = np.trace(confusion), confusion.sum()
    cov_ytyp = n_correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp))


def glue_metrics(task: str | dict, predictions, labels) -> dict[str, float]:
    """The metrics of ``task`` (``GLUE_TASKS[task]['metrics']``, each on the 0–1 scale) of predictions vs labels.

    Classification: ``predictions`` are class ids (N,) or scores/logits (N, C), arg-maxed. Regression:
    predicted scores (N,). F1 is the binary F1 of class 1 (MRPC paraphrase, QQP duplicate). Pearson
    and Spearman are NaN when either side is constant; ``pearson_spearman_mean`` is their mean.
    """
    spec = task_spec(task)
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    out: dict[str, float] = {}
    if spec["kind"] == "regression":
        r, rho = pearson(predictions, labels), spearman(predictions, labels)
        values = {"pearson": r, "spearman": rho, "pearson_spearman_mean": (r + rho) / 2}
    else:
        values = {}
        for name in spec["metrics"]:
            fn = {"accuracy": accuracy, "f1": binary_f1, "matthews_corrcoef": matthews_corrcoef}[name]
            values[name] = fn(predictions, labels)
    for name in spec["metrics"]:
        out[name] = values[name]
    return out


# -- data ------------------------------------------------------------------------------------------
def _mirror_root(mirror_root) -> Path:
    root = mirror_root or os.environ.get("TOKENUNI_DATA")
    if not root:
        raise GlueDataError("no data mirror given (pass mirror_root or set TOKENUNI_DATA)")
    return Path(root).expanduser()


def _read_by_columns(path: Path, name: str, columns: tuple[str, str, str], labels) -> list[Example]:
    """QNLI / QQP / MNLI: tab-separated with a header; sentence pair and label found by column name, every
    row with the header's field count and a label in ``labels``."""
    from tokenuni.corpora import read_file_lines, read_glue_pairs

    first, second, label = columns
    return list(read_glue_pairs(read_file_lines(path, name), first, second, label, tuple(labels)))


def load_task(task: str | dict, split: str, mirror_root=None, max_examples: int | None = None,
              seed: int = 0) -> tuple[list[str], list[str] | None, np.ndarray]:
    """``(texts_a, texts_b, labels)`` of a GLUE task's ``train`` or ``dev`` split from the data mirror.

    ``texts_b`` is ``None`` for single-sentence tasks (SST-2, CoLA) and the second sentence for the
    pair tasks (MRPC, RTE, STS-B, QNLI, QQP, MNLI). ``labels`` are int64 class ids (see the task's
    ``labels`` map) or float32 scores (STS-B, 0–5). ``max_examples`` keeps a seeded random subset
    (``numpy.random.default_rng(seed)``, without replacement), in file order. Every row of the file
    is kept (no empty-text filtering), so the counts equal the GLUE release's.
    """
    spec = task_spec(task)
    name = spec["name"]
    if split not in SPLITS:
        raise GlueDataError(f"GLUE split must be one of {SPLITS} (test labels are not public), not {split!r}")
    root = _mirror_root(mirror_root)
    relative = spec[split]
    path = root / relative
    if not path.is_file():
        note = "" if spec.get("available", True) else f" (the shared mirror does not carry {name.upper()})"
        raise GlueDataError(f"GLUE task {name!r}, split {split!r}: missing mirror file {path}{note}")
    if spec["format"] is None:
        examples = _read_by_columns(path, relative, spec["columns"], spec["labels"])
    else:
        skipped: dict[str, int] = {}
        examples = read_mirror(spec["format"], [relative], root, skipped=skipped)
        if skipped:
            log.warning("GLUE %s %s: skipped %s in %s", name, split,
                        ", ".join(f"{n} {reason.replace('_', ' ')}(s)" for reason, n in skipped.items()), path)
    if not examples:
        raise GlueDataError(f"{path}: no examples")
    for example in examples:  # every row is kept, so an empty text is an error, not a skip
        for text, field_name in zip(example.texts, example.fields or ()):
            if not has_visible_text(text):
                raise GlueDataError(f"{example.where}: {field_name} {text!r} has no visible characters (empty, "
                                    "whitespace or invisible format characters only); fix or remove the row")

    if spec["kind"] == "regression":
        if any(e.score is None for e in examples):
            raise GlueDataError(f"{path}: rows without a score")
        labels = np.asarray([e.score for e in examples], dtype=np.float32)
    else:
        mapping = spec["labels"]
        unknown = sorted({str(e.label) for e in examples if e.label not in mapping})
        if unknown:
            raise GlueDataError(f"{path}: label value(s) {unknown[:5]} not in the {name} label map {sorted(mapping)}")
        labels = np.asarray([mapping[e.label] for e in examples], dtype=np.int64)

    if max_examples is not None and max_examples < len(examples):
        keep = np.sort(np.random.default_rng(seed).choice(len(examples), size=int(max_examples), replace=False))
        examples = [examples[i] for i in keep]
        labels = labels[keep]
    texts_a = [e.texts[0] for e in examples]
    texts_b = [e.texts[1] for e in examples] if len(examples[0].texts) == 2 else None
    log.info("GLUE %s %s: %d examples from %s", name, split, len(examples), path)
    return texts_a, texts_b, labels
