"""Unsupervised STS with post-hoc transforms: one (model, pooling, transform) over every STS dataset.

Protocol (Yan et al., UAI 2022 §5; Su et al., 2021; Rajaee & Pilehvar, ACL 2021): pooled sentence
embeddings (written by :mod:`tokenuni.sentences`, each file opened once through
:func:`tokenuni.sentence_store.open_sentences`), a transform (:mod:`tokenuni.transforms`) fit either on each
evaluation dataset's own sentences (``fit_on: pool``, what the papers do) or once on another corpus
(``fit_on: <corpus key>``, e.g. WikiText), cosine similarity of the two sentences of a pair, Spearman and
Pearson × 100 (:mod:`tokenuni.sts.scoring`). STS12–16 are reported both as the mean over their subsets (the
tokenUni table) and as the concatenation of their subsets (SentEval's "all"), labelled by ``protocol``.

Beside the correlations, the geometry of the transformed embeddings (average cosine, IsoScore, I(V),
singular-value skewness ...) is recomputed with the same streaming metrics as the token dumps, so one
table shows isotropy and STS side by side per transform.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["model", "pooling", "layers", "transform", "transform_type", "params", "fit_on", "dataset",
                 "protocol", "subset", "spearman", "pearson", "n", "fitted"]
#: numbers of a fitted transform's summary that say it did less than its options asked (when above 0)
LOWERED = {
    "n_zeroed": "of the kept whitening directions are set to 0: the fit set spans fewer directions than k "
                "(N fit vectors span at most N - 1); fit on more sentences or lower k",
    "clusters_with_fewer_pcs": "cluster(s) had fewer points than pcs and removed fewer components; lower clusters "
                               "or pcs",
}
GEOMETRY_COLUMNS = ["model", "pooling", "layers", "transform", "dataset", "metric", "variant", "value", "n",
                    "sample_size", "seed"]


def _for_corpus(expected: dict | None, corpus: str) -> dict | None:
    return None if expected is None else {**expected, "corpus": corpus}


def evaluate_transform(sentence_files: dict[str, Path], datasets: list[str], *, model: str, pooling: str,
                       transform_name: str, transform_spec: dict, geometry_metrics: list[str],
                       fitted_dir: Path | None = None, device="cpu", expected: dict | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fit (per dataset or once), apply, correlate; returns the tidy score and geometry tables.

    ``expected``: the model every sentence file must have been written for
    (:func:`tokenuni.sources.expected_provenance`); each file's corpus must be its key.
    """
    from tokenuni.metrics import metric_on_matrix
    from tokenuni.sentence_store import open_sentences
    from tokenuni.sts.scoring import STSError, check_pair_count, pair_cosines, sts_correlations, sts_dataset_key
    from tokenuni.transforms import make_transform

    kind, params = transform_spec["type"], dict(transform_spec.get("params") or {})
    fit_on = transform_spec.get("fit_on", "pool")
    missing = [d for d in datasets + ([fit_on] if fit_on != "pool" else []) if d not in sentence_files]
    if missing:
        raise STSError(f"transform {transform_name}: no sentence embeddings for {', '.join(missing)}")

    def opened(key: str):  # each file read once, its provenance checked once
        return open_sentences(sentence_files[key]).check(_for_corpus(expected, key))

    shared = fit_file = None
    if fit_on != "pool":
        fit_file = opened(fit_on)
        fit_vectors = fit_file.vectors(pooling)
        shared = make_transform(kind, params, device).fit(fit_vectors)
        shared.fitted_on = f"corpus:{fit_on}"
        log.info("%s fit on %s (%d sentences)", transform_name, fit_on, len(fit_vectors))
    layers = None  # the rows' "layers" label: the pooling's layers in the first dataset's file
    scores, geometry = [], []
    warned: set[str] = set()
    for dataset in datasets:
        sentence_file = fit_file if dataset == fit_on else opened(dataset)
        if layers is None:
            layers = sentence_file.pooling_layers(pooling)
        table, vectors = sentence_file.corpus_columns(), sentence_file.vectors(pooling)
        transform = shared
        if transform is None:
            transform = make_transform(kind, params, device).fit(vectors)
            transform.fitted_on = f"pool:{dataset}"
        if fitted_dir is not None and (shared is None or dataset == datasets[0]):
            Path(fitted_dir).mkdir(parents=True, exist_ok=True)
            transform.save(Path(fitted_dir) / f"{'shared' if shared is not None else dataset}.npz")
        transformed = np.asarray(transform.transform(vectors), dtype=np.float64)
        fitted = transform.summary()
        for key, meaning in LOWERED.items():
            if fitted.get(key) and key not in warned:  # once per job, with the value used recorded in `fitted`
                warned.add(key)
                log.warning("transform %s (%s, fit on %s): %d %s", transform_name, kind, transform.fitted_on,
                            fitted[key], meaning)
        pairs = pair_cosines(table, transformed, dataset=dataset)
        sampled = sentence_file.sampled
        for key, group in pairs.groupby(pairs["subset"].map(lambda s: sts_dataset_key(s) or "")):
            if key:  # a known release: it must be complete unless it was sampled on purpose
                check_pair_count(key, group["pair_id"].nunique(), sampled=sampled)
        correlations = sts_correlations(pairs, dataset)
        for row in correlations.to_dict("records"):
            scores.append({"model": model, "pooling": pooling, "layers": layers, "transform": transform_name,
                           "transform_type": kind, "params": json.dumps(transform.params(), sort_keys=True),
                           "fit_on": transform.fitted_on, "fitted": json.dumps(fitted, sort_keys=True, default=float),
                           **row})
        for metric in geometry_metrics:
            for value in metric_on_matrix(metric, {}, transformed, device=device):
                if value.component is not None:
                    continue
                geometry.append({"model": model, "pooling": pooling, "layers": layers, "transform": transform_name,
                                 "dataset": dataset, "metric": value.metric, "variant": value.variant,
                                 "value": value.value, "n": value.n, "sample_size": value.sample_size,
                                 "seed": value.seed})
        main = correlations[correlations["protocol"].isin(["all", "mean_over_subsets"])]
        log.info("%s / %s / %s: Spearman %s", pooling, transform_name, dataset,
                 ", ".join(f"{r.protocol} {r.spearman:.2f}" for r in main.itertuples()))
    score_table = pd.DataFrame(scores).reindex(columns=SCORE_COLUMNS)
    geometry_table = pd.DataFrame(geometry).reindex(columns=GEOMETRY_COLUMNS)
    for column in ("sample_size", "seed"):
        geometry_table[column] = geometry_table[column].astype("Int64")
    return score_table, geometry_table
