"""The papers'-style STS summary: Spearman × 100 per (model, pooling, transform) and dataset, STS12–16 as the
mean over their subsets (the tokenUni table) and as their concatenation (SentEval's "all"), and isotropy of
the transformed embeddings beside it (:func:`summary_tables`, :func:`write_summary`). :func:`headline_scores`
is the one choice of a row per dataset, which the STS figures use too."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from tokenuni.sts.scoring import STSError

log = logging.getLogger(__name__)

#: how STS12–16 (datasets made of subsets) enter a one-number-per-dataset view
SUBSET_PROTOCOLS = ("mean_over_subsets", "concatenated")


def headline_scores(scores: pd.DataFrame, protocol_for_multi: str = "mean_over_subsets") -> pd.DataFrame:
    """One Spearman per (model, pooling, transform, dataset): the ``all`` row, or for datasets made of subsets
    (STS12–16) the ``protocol_for_multi`` row (mean over subsets or concatenation). Key columns as str."""
    missing = [c for c in ("model", "pooling", "transform", "dataset", "protocol", "spearman") if c not in scores]
    if missing:
        raise STSError(f"the STS scores table lacks columns {missing}")
    if protocol_for_multi not in SUBSET_PROTOCOLS:
        raise STSError(f"sts_subsets must be one of {SUBSET_PROTOCOLS} (how STS12-16 enter a one-number view), "
                       f"not {protocol_for_multi!r}")
    rows = scores[scores["protocol"].isin(["all", protocol_for_multi])].copy()
    if rows.empty:
        raise STSError(f"the STS table holds no 'all' or {protocol_for_multi!r} rows; protocols present: "
                       f"{sorted(map(str, scores['protocol'].unique()))}")
    for column in ("model", "pooling", "transform", "dataset"):
        rows[column] = rows[column].astype(str)
    return rows.reset_index(drop=True)


def summary_tables(scores: pd.DataFrame, geometry: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Spearman × 100 shaped like the papers' tables: rows (model, pooling, transform), columns datasets + mean.

    Two tables, one per STS12–16 protocol (mean over subsets / concatenated); and, with ``geometry``,
    isotropy beside STS: per row the mean Spearman and the rows of the catalogue's view ``sts_isotropy``
    (average cosine, IsoScore, I(V), singular-value skewness) of the transformed embeddings of the first dataset.
    """
    from tokenuni.metrics.rows import view

    keys = ["model", "pooling", "transform"]
    datasets = list(dict.fromkeys(scores["dataset"]))
    out = {}
    for protocol in ("mean_over_subsets", "concatenated"):
        headline = headline_scores(scores, protocol)
        wide = headline.pivot_table(index=keys, columns="dataset", values="spearman", sort=False)
        wide = wide.reindex(columns=[d for d in datasets if d in wide.columns])
        wide["mean"] = wide.mean(axis=1)
        out[f"spearman_{protocol}"] = wide.round(2)
    if geometry is not None and len(geometry):
        reference = datasets[0]
        picks = {r.column: (r.name, r.headline_variant) for r in view("sts_isotropy")}
        side = out["spearman_mean_over_subsets"][["mean"]].rename(columns={"mean": "mean Spearman"})
        for label, (metric, variant) in picks.items():
            rows = geometry[(geometry["dataset"] == reference) & (geometry["metric"] == metric)
                            & (geometry["variant"].fillna("") == variant)]
            if len(rows):
                side[f"{label} ({reference})"] = rows.set_index(keys)["value"].reindex(side.index)
        out["isotropy_beside_sts"] = side.round(4)
    return out


TITLES = {
    "spearman_mean_over_subsets": "Spearman × 100 (STS12–16: mean over subsets, as the tokenUni table)",
    "spearman_concatenated": "Spearman × 100 (STS12–16: subsets concatenated, as SentEval's 'all')",
    "isotropy_beside_sts": "Isotropy of the transformed embeddings beside the mean Spearman",
}


def write_summary(scores: pd.DataFrame, geometry: pd.DataFrame | None, markdown_path, html_path) -> dict:
    """Write the papers'-style summary as Markdown and HTML (atomically); returns the tables."""
    from tokenuni.files import atomic_path
    from tokenuni.tables import to_markdown

    tables = summary_tables(scores, geometry)
    parts_md = ["# Unsupervised STS", "",
                "Cosine similarity of pooled sentence embeddings; `fit_on` of each transform in sts.tsv.", ""]
    parts_html = ["<html><head><meta charset='utf-8'><title>tokenuni STS</title><style>"
                  "body{font-family:sans-serif} table{border-collapse:collapse;margin-bottom:2em}"
                  "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>",
                  "<h1>Unsupervised STS</h1>"]
    for name, table in tables.items():
        parts_md += [f"## {TITLES[name]}", "", to_markdown(table), ""]
        parts_html += [f"<h2>{TITLES[name]}</h2>", table.to_html(float_format=lambda v: f"{v:.4g}", na_rep="")]
    parts_html.append("</body></html>")
    with atomic_path(markdown_path) as tmp:
        Path(tmp).write_text("\n".join(parts_md), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        Path(tmp).write_text("\n".join(parts_html), encoding="utf-8")
    return tables
