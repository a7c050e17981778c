"""Unsupervised semantic textual similarity (STS): cosine of pooled sentence embeddings vs gold scores.

For each pair (s₁, s₂) of an STS corpus the prediction is cos(v₁, v₂) = v₁·v₂ / (‖v₁‖ ‖v₂‖); the
score of a set of pairs is the correlation of predictions with gold scores, Spearman's ρ (Pearson's
r of the average ranks, ties averaged) and Pearson's r, both × 100 (scipy's, via
:func:`tokenuni.numerics.spearman` / :func:`~tokenuni.numerics.pearson`) — the protocol of SentEval
(Conneau & Kiela, LREC 2018), SimCSE (Gao et al., EMNLP 2021) and Yan et al. ("Addressing Token
Uniformity in Transformers via Singular Value Transformation", UAI 2022).

STS12–16 consist of several sub-datasets (one mirror file each, the corpus ``subset``), and the
literature aggregates them in two ways that differ by several points (SCIENCE.md, pitfalls):

``concatenated``        one correlation over all pairs of the year (SentEval's "all", SimCSE's tables);
``mean_over_subsets``   the mean of the per-subset correlations (the tokenUni paper's table, SentEval's
                        "mean"); its ``n`` is the total number of pairs.

:func:`sts_correlations` reports both, plus every subset (``protocol = "subset"``); a dataset with a
single subset (STS-B, SICK-R) gets ``protocol = "all"``.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError
from tokenuni.numerics import pearson, spearman

log = logging.getLogger(__name__)

#: Scored pairs of each STS set in the data mirror (shared/data/README.md, verified counts).
STS_MIRROR_COUNTS: dict[str, int] = {
    "stsb-train": 5749, "stsb-dev": 1500, "stsb-test": 1379,
    "sick-train": 4500, "sick-trial": 500, "sick-test": 4927,
    "sts12": 3108, "sts13": 1500, "sts14": 3750, "sts15": 3000, "sts16": 1186,
}
_FILE_KEYS = {
    "sts-train.csv": "stsb-train", "sts-dev.csv": "stsb-dev", "sts-test.csv": "stsb-test",
    "SICK_train.txt": "sick-train", "SICK_trial.txt": "sick-trial", "SICK_test_annotated.txt": "sick-test",
}
_STS_YEAR = re.compile(r"STS(1[2-6])-en-test")
CORRELATION_COLUMNS = ["dataset", "protocol", "subset", "spearman", "pearson", "n"]


class STSError(TokenuniError, ValueError):
    """An STS table or pair count that cannot be evaluated as promised; the message says why."""


def sts_dataset_key(subset: str) -> str | None:
    """The :data:`STS_MIRROR_COUNTS` key of a mirror file (a corpus ``subset``), or None if it is not one.

    ``sts12-16/raw/STS12-en-test/STS.input.MSRpar.txt`` → ``sts12``;
    ``stsbenchmark/sts-test.csv`` → ``stsb-test``; ``sick/SICK_trial.txt`` → ``sick-trial``.
    """
    if not subset:
        return None
    year = _STS_YEAR.search(subset)
    if year:
        return f"sts{year.group(1)}"
    return _FILE_KEYS.get(PurePosixPath(subset).name)


def check_pair_count(dataset_key: str, n_pairs: int, expected: int | None = None, *, sampled: bool = False) -> int:
    """Fail loudly unless an imported STS corpus holds the full set of scored pairs.

    ``expected`` defaults to ``STS_MIRROR_COUNTS[dataset_key]``. With ``sampled=True`` (a corpus
    subsampled on purpose, e.g. ``max_sentences``) fewer pairs are allowed, never more. Returns
    ``n_pairs``.
    """
    if expected is None:
        if dataset_key not in STS_MIRROR_COUNTS:
            raise STSError(f"STS dataset {dataset_key!r} has no known pair count (known: "
                           f"{', '.join(STS_MIRROR_COUNTS)}); pass expected=")
        expected = STS_MIRROR_COUNTS[dataset_key]
    n_pairs, expected = int(n_pairs), int(expected)
    if n_pairs == expected or (sampled and 0 < n_pairs < expected):
        if n_pairs != expected:
            log.warning("STS dataset %s: %d of %d pairs (sampled on purpose)", dataset_key, n_pairs, expected)
        return n_pairs
    why = ("more pairs than the full set" if n_pairs > expected
           else "no pairs" if n_pairs == 0
           else "not the full set: a sample (max_sentences?), dropped empty sentences or the wrong files")
    raise STSError(f"STS dataset {dataset_key!r}: {n_pairs} scored pairs, expected {expected} ({why}); "
                   "results would not be comparable with the literature")


def pair_cosines(table, vectors: np.ndarray, *, device: str = "cpu", dataset: str | None = None) -> pd.DataFrame:
    """One row per pair: ``pair_id, subset, score, cosine`` (side 0 against side 1), sorted by ``pair_id``.

    ``table`` holds the corpus columns ``pair_id, side, score, subset`` (a pyarrow Table, e.g. from
    :meth:`tokenuni.sentence_store.SentenceFile.corpus_columns`, or a DataFrame) row-aligned with ``vectors`` (n, d).
    The cosine is computed in float64 on ``device``. ``dataset`` (the corpus key) names it in errors.
    """
    import torch

    what = f"STS dataset '{dataset}'" if dataset else "pair_cosines"
    fix = ("; sts.datasets takes corpora of paired, scored sentences (mirror formats stsb, sick, sts_semeval, or hub "
           "corpora mapping text_a, text_b and score)")

    frame = table.to_pandas() if hasattr(table, "to_pandas") and not isinstance(table, pd.DataFrame) else table
    frame = frame.reset_index(drop=True).assign(_row=np.arange(len(frame)))
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) != len(frame):
        raise STSError(f"pair_cosines: vectors have shape {vectors.shape}, the table has {len(frame)} rows")
    missing = [c for c in ("pair_id", "side", "score", "subset") if c not in frame.columns]
    if missing:
        raise STSError(f"pair_cosines: the table lacks column(s) {missing}")
    if frame["pair_id"].isna().any() or frame["side"].isna().any():
        raise STSError(f"{what}: the corpus is not paired (rows without pair_id/side){fix}")
    if frame["score"].isna().any():
        raise STSError(f"{what}: some pairs have no gold score{fix}")
    sides = [frame[frame["side"] == side].set_index("pair_id") for side in (0, 1)]
    if len(sides[0]) + len(sides[1]) != len(frame) or not sides[0].index.is_unique or not sides[1].index.is_unique:
        raise STSError("pair_cosines: every pair needs exactly one side-0 and one side-1 sentence")
    if set(sides[0].index) != set(sides[1].index):
        lone = sorted(set(sides[0].index) ^ set(sides[1].index))[:5]
        raise STSError(f"pair_cosines: pairs {lone} lack a side")
    pair_ids = np.sort(sides[0].index.to_numpy())
    a, b = (torch.as_tensor(vectors[side.loc[pair_ids, "_row"].to_numpy()], dtype=torch.float64, device=device)
            for side in sides)
    norms = a.norm(dim=1) * b.norm(dim=1)
    if bool((norms == 0).any()):
        raise STSError("pair_cosines: a zero vector has no cosine")
    cosine = ((a * b).sum(dim=1) / norms).cpu().numpy()
    score0 = sides[0].loc[pair_ids, "score"].to_numpy(dtype=np.float64)
    if not np.allclose(score0, sides[1].loc[pair_ids, "score"].to_numpy(dtype=np.float64)):
        raise STSError("pair_cosines: the two sides of a pair carry different scores")
    return pd.DataFrame({"pair_id": pair_ids.astype(np.int64), "subset": sides[0].loc[pair_ids, "subset"].to_numpy(),
                         "score": score0, "cosine": cosine})


def sts_correlations(pairs: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Spearman and Pearson (× 100) of ``pairs`` (from :func:`pair_cosines`) per subset and aggregated.

    Rows, columns ``dataset, protocol, subset, spearman, pearson, n``: one ``protocol="subset"`` row per
    subset (in order of appearance); then ``"all"`` if there is a single subset, or ``"concatenated"``
    (all pairs together) and ``"mean_over_subsets"`` (mean of the subset rows; ``n`` = all pairs) if
    there are several. ``subset`` is null on the aggregated rows.
    """
    missing = [c for c in ("subset", "score", "cosine") if c not in pairs.columns]
    if missing:
        raise STSError(f"sts_correlations({dataset!r}): pairs lack column(s) {missing}")
    if pairs.empty:
        raise STSError(f"sts_correlations({dataset!r}): no pairs")
    if pairs["subset"].isna().any():
        raise STSError(f"sts_correlations({dataset!r}): some pairs have no subset")

    def row(protocol, subset, score, cosine):
        rho, r = spearman(cosine, score), pearson(cosine, score)
        if math.isnan(rho):
            log.warning("STS %s %s %s: correlation undefined (%d pairs, constant input?)", dataset, protocol, subset,
                        len(score))
        return {"dataset": dataset, "protocol": protocol, "subset": subset, "spearman": 100.0 * rho,
                "pearson": 100.0 * r, "n": int(len(score))}

    subsets = [row("subset", name, group["score"].to_numpy(), group["cosine"].to_numpy())
               for name, group in pairs.groupby("subset", sort=False)]
    score, cosine = pairs["score"].to_numpy(), pairs["cosine"].to_numpy()
    if len(subsets) == 1:
        aggregated = [row("all", None, score, cosine)]
    else:
        aggregated = [row("concatenated", None, score, cosine),
                      {"dataset": dataset, "protocol": "mean_over_subsets", "subset": None,
                       "spearman": float(np.mean([r["spearman"] for r in subsets])),
                       "pearson": float(np.mean([r["pearson"] for r in subsets])), "n": int(len(pairs))}]
    return pd.DataFrame(subsets + aggregated, columns=CORRELATION_COLUMNS)


def split_by_dataset(pairs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pairs grouped by :func:`sts_dataset_key` of their subset (e.g. one corpus holding STS12–16 → five years).

    Subsets that are not mirror files keep their own name as the key.
    """
    keys = pairs["subset"].map(lambda s: sts_dataset_key(s) or s)
    return {key: group.reset_index(drop=True) for key, group in pairs.groupby(keys, sort=False)}
