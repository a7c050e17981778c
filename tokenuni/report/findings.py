"""The report's findings in words, generated from its tables (every number in a sentence is in a table),
and the per-layer headline table they read."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path


from tokenuni.metrics.rows import view
from tokenuni.metrics.rows import label as _metric_label
from tokenuni.report.discovery import HEADLINE_METRICS, Figure, figure_anchor
from tokenuni.report.markup import esc

log = logging.getLogger("tokenuni.report")


def headline_table(table, metrics=HEADLINE_METRICS) -> object:
    """The headline scalar metrics pivoted: index (model, corpus, metric, variant), one column per layer.

    Rows without a component (scalars) only; several rows of one (model, corpus, metric, variant, layer)
    – seeds, sample sizes – are averaged. Metrics in the order of ``metrics``.
    """
    import pandas as pd

    rows = table[table["component"].isna() & table["metric"].isin(metrics)].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["variant"] = rows["variant"].fillna("").astype(str)
    rows["model"] = rows["model"].astype(str)
    rows["corpus"] = rows["corpus"].astype(str)
    pivot = rows.pivot_table(index=["model", "corpus", "metric", "variant"], columns="layer", values="value",
                             aggfunc="mean")
    order = {m: i for i, m in enumerate(metrics)}
    keys = sorted(pivot.index, key=lambda k: (k[0], k[1], order.get(k[2], len(order)), k[3]))
    return pivot.loc[keys]


def format_value(value) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}"


# ------------------------------------------------------------------------------------------ findings
@dataclass
class Finding:
    """One generated sentence of the findings: its text (numbers as the report's tables print them), the
    report's table that holds them, and the figure (or table) behind it."""

    section: str  # geometry | sts | finetune
    text: str
    href: str  # "#<anchor>" in the report
    link: str  # the link's words


def _read_any(results: Path, stem: str):
    """``tables/<stem>.parquet`` (or ``.tsv``) as a data frame, or None when neither is there or readable."""
    from tokenuni.tables import read_table

    for suffix in (".parquet", ".tsv"):
        path = results / "tables" / f"{stem}{suffix}"
        if path.is_file():
            try:
                return read_table(path)
            except Exception as error:  # a damaged table: the findings say nothing about it, the note says why
                log.warning("report: %s not readable for the findings (%s)", path, error)
                return None
    return None


def _figure_link(rels: set[str], rel: str, fallback: str, what: str) -> tuple[str, str]:
    return (f"#{figure_anchor(rel)}", f"figure: {what}") if rel in rels else (fallback, "table")


def geometry_findings(table, rels: set[str]) -> list[Finding]:
    """Per (model, corpus): the layers where the average cosine and IsoScore peak and bottom out, with their
    values as the per-layer table prints them (3 significant digits)."""
    extremes = view("findings_extremes")  # the rows, their headline variant, name in a sentence and peak
    pivot = headline_table(table, [r.name for r in extremes])
    out = []
    for model, corpus in dict.fromkeys((model, corpus) for model, corpus, _, _ in pivot.index):
        for metric, variant, name, peak_means in ((r.name, r.headline_variant, r.in_a_sentence, r.peak_means)
                                                  for r in extremes):
            if (model, corpus, metric, variant) not in pivot.index:
                continue
            values = pivot.loc[(model, corpus, metric, variant)].dropna()
            if len(values) < 2:
                continue
            top, bottom = int(values.idxmax()), int(values.idxmin())
            text = (f"{model} on {corpus}: {name} peaks at layer {top} ({format_value(values[top])}, {peak_means}) "
                    f"and bottoms out at layer {bottom} ({format_value(values[bottom])}).")
            href, link = _figure_link(rels, f"figures/{metric}_by_layer.png", "#headline-table",
                                      f"{_metric_label(metric)} by layer")
            out.append(Finding("geometry", text, href, link))
    return out


def sts_findings(scores, rels: set[str]) -> list[Finding]:
    """Per model (pooling ``mean_last`` where the study has it, else its first): the best and the worst
    transform against no transform (the identity), by the mean Spearman over the STS datasets of the STS
    summary (STS12–16 as the mean over their subsets), as its table prints it."""
    from tokenuni.sts.summary import summary_tables

    wide = summary_tables(scores)["spearman_mean_over_subsets"]
    identity = set(scores.loc[scores["transform_type"] == "identity", "transform"]) if "transform_type" in scores \
        else {"none"}
    out = []
    for model in dict.fromkeys(wide.index.get_level_values("model")):
        rows = wide.loc[model]
        poolings = list(dict.fromkeys(rows.index.get_level_values("pooling")))
        pooling = "mean_last" if "mean_last" in poolings else poolings[0]
        means = rows.loc[pooling]["mean"].dropna()
        baseline = [t for t in means.index if t in identity]
        if means.empty:
            continue
        best, worst = means.idxmax(), means.idxmin()

        def value(name, means=means):
            return f"{means[name]:.4g}"  # as tables/sts_summary.html prints it

        if baseline:
            none = baseline[0]
            against = f"; with no transform ({none}) it is {value(none)}"
            if best == none:
                head = f"no transform is best ({none}, {value(none)}); the worst is {worst} ({value(worst)})"
                against = ""
            else:
                head = f"the best transform is {best} ({value(best)}), the worst {worst} ({value(worst)})"
        else:
            head = f"the best transform is {best} ({value(best)}), the worst {worst} ({value(worst)})"
            against = "; the study has no identity transform to compare with"
        text = f"{model}, pooling {pooling}, mean Spearman over the STS datasets: {head}{against}."
        href, link = _figure_link(rels, f"figures/sts/{pooling}/scores.png", "#sts", f"STS scores, {pooling}")
        out.append(Finding("sts", text, href, link))
    return out


def finetune_findings(summary, rels: set[str]) -> list[Finding]:
    """Per (model, task): which variants were better, worse or gave no evidence against the baseline, with
    the difference and its interval as the fine-tuning summary's table prints them."""
    from tokenuni.finetune.summary import difference_text

    out = []
    compared = summary[summary["verdict"].isin(["better", "worse", "no evidence"])]
    for (model, task), group in compared.groupby(["model", "task"], sort=False):
        parts = []
        for verdict in ("better", "worse", "no evidence"):
            chosen = group[group["verdict"] == verdict]
            listed = ", ".join(f"{r.variant} ({difference_text(r.difference, r.difference_low, r.difference_high)})"
                               for r in chosen.itertuples())
            parts.append(f"{verdict}: {listed or 'no variant'}")
        metric = group["metric"].iloc[0]
        text = (f"{model} fine-tuned on {task} ({metric} on dev, difference to the baseline with its interval) — "
                + "; ".join(parts) + ".")
        href, link = _figure_link(rels, "figures/finetune/scores.png", "#finetune", "fine-tuning scores")
        out.append(Finding("finetune", text, href, link))
    return out


def findings(results: Path, figures: list[Figure] = ()) -> list[Finding]:
    """The report's opening summary, generated from ``results/tables`` (see the module docstring); parts
    whose table is missing are left out."""
    rels = {figure.rel for figure in figures}
    out = []
    metrics = _read_any(results, "metrics")
    if metrics is not None and {"metric", "component", "layer"} <= set(metrics.columns):
        out += geometry_findings(metrics, rels)
    scores = _read_any(results, "sts")
    if scores is not None and len(scores):
        out += sts_findings(scores, rels)
    summary = _read_any(results, "finetune_summary")
    if summary is not None and len(summary) and "verdict" in summary:
        out += finetune_findings(summary, rels)
    return out
FINDING_TITLES = {"geometry": "Geometry by layer", "sts": "Unsupervised STS: transforms against no transform",
                  "finetune": "Fine-tuning: repairs against the baseline"}


def findings_html(items: list[Finding]) -> str:
    if not items:
        return "<p class='note'>No tables to summarise yet (tables/metrics, sts, finetune_summary).</p>"
    out = ["<p>Generated from the study's tables: every number below is in one of the report's tables, and each "
           "sentence links to the figure behind it.</p>"]
    for section, title in FINDING_TITLES.items():
        chosen = [f for f in items if f.section == section]
        if chosen:
            out.append(f"<h3>{esc(title)}</h3><ul class='findings'>" + "".join(
                f"<li>{esc(f.text)} <a href='{esc(f.href)}'>{esc(f.link)}</a></li>" for f in chosen) + "</ul>")
    return "".join(out)
