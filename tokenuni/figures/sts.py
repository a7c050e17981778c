"""Unsupervised STS figures from the tidy STS tables (``results/tables/sts.parquet``, ``sts_geometry.tsv``).

* :func:`plot_sts_scores` – Spearman ρ × 100 of cosine similarity against the gold scores, grouped bars:
  one group per evaluation dataset (plus their average), one bar per post-hoc transform, for one
  pooling; one panel per model. The papers' tables: whitening (Su et al., 2021), all-but-the-top (Mu &
  Viswanath, ICLR 2018), SoftDecay (Yan et al., UAI 2022), cluster-based removal (Rajaee & Pilehvar, 2021).
* :func:`plot_sts_geometry` – the geometry of the (transformed) sentence embeddings before and after
  each transform: skewness of the normalised singular values, effective rank, average cosine,
  IsoScore and I(V); bars = mean over datasets, points = each dataset. The geometry table holds these
  scalars only (no singular-value vectors), so the "before/after" view of the spectrum is its skewness
  and effective rank rather than a CDF.
* :func:`plot_sts_table` – the whole STS table as an annotated heat map: rows pooling · transform,
  columns datasets and their average, for one model.

STS12–16 consist of subsets; their headline number is either the mean over subsets or the Spearman of
the concatenation (``sts_subsets``), the other datasets use their single ``all`` row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from tokenuni.figures.style import (FigureError, FIGSIZE, TABLE_FIGSIZE, _check_columns, _figure_legend, _new_panels,
                                    _set_title, _variant_name, model_colours, model_labels, panels_of,
                                    save_figure)
from tokenuni.sts.scoring import STSError
from tokenuni.sts.summary import headline_scores

SCORE_LABEL = "Spearman ρ × 100"
AVERAGE = "avg."

# (metric row, variant or None, panel title), from the row catalogue
STS_GEOMETRY_PANELS = panels_of("sts_geometry_panels")


def _ordered(values) -> list[str]:
    """Unique values in order of appearance (the config's order), the untransformed baseline first."""
    seen = list(dict.fromkeys(str(v) for v in values))
    baseline = [v for v in seen if v in ("none", "identity")]
    return baseline + [v for v in seen if v not in baseline]


def _transform_colours(transforms) -> dict[str, tuple]:
    cmap = colormaps["tab10"] if len(transforms) <= 10 else colormaps["tab20"]
    return {t: cmap(i % cmap.N) for i, t in enumerate(transforms)}


def sts_headline(scores: pd.DataFrame, sts_subsets: str = "mean_over_subsets") -> pd.DataFrame:
    """One Spearman per (model, pooling, transform, dataset), as the STS summary chooses it
    (:func:`tokenuni.sts.summary.headline_scores`); a FigureError when the table cannot give it."""
    try:
        return headline_scores(scores, sts_subsets)
    except STSError as error:
        raise FigureError(str(error)) from None


def _select_pooling(rows: pd.DataFrame, pooling: str, what: str) -> pd.DataFrame:
    chosen = rows[rows["pooling"].astype(str) == pooling]
    if chosen.empty:
        raise FigureError(f"{what}: no rows for pooling {pooling!r}; poolings present: "
                          f"{sorted(map(str, rows['pooling'].unique()))}")
    return chosen


def _pooling_note(rows: pd.DataFrame, pooling: str) -> str:
    layers = sorted(set(rows["layers"].astype(str))) if "layers" in rows.columns else []
    return f"pooling {pooling}" + (f" (layers {', '.join(layers)}; 0 = embedding output)" if layers else "")


def plot_sts_scores(scores: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, pooling: str = "mean_last",
                    sts_subsets: str = "mean_over_subsets", title: str | None = None) -> None:
    """Grouped bars of Spearman ρ × 100 per dataset (and their average), one bar per transform, for one
    ``pooling``; one panel per model. Raises ``ValueError`` for an unknown pooling or an empty table."""
    rows = _select_pooling(sts_headline(scores, sts_subsets), pooling, "STS scores")
    labels = model_labels(rows)
    models = sorted(rows["model"].unique())
    transforms = _ordered(rows["transform"])
    datasets = _ordered(rows["dataset"]) + [AVERAGE]
    colours = _transform_colours(transforms)
    fig, axes = _new_panels(len(models), ncols=1, figsize=FIGSIZE if len(models) == 1 else (9.0, 3.0 * len(models)))
    width = 0.8 / len(transforms)
    x = np.arange(len(datasets))
    for ax, model in zip(axes, models):
        table = rows[rows["model"] == model].pivot_table(index="transform", columns="dataset", values="spearman",
                                                          aggfunc="mean")
        table[AVERAGE] = table.mean(axis=1)
        for i, transform in enumerate(transforms):
            values = table.reindex(index=[transform], columns=datasets).to_numpy(dtype=float).ravel()
            ax.bar(x - 0.4 + (i + 0.5) * width, values, width, color=colours[transform], label=transform)
        ax.set_xticks(x, datasets, fontsize=7)
        ax.set_ylabel(SCORE_LABEL, fontsize=8)
        finite = table.to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        lowest = float(finite.min()) if finite.size else 0.0
        ax.set_ylim(lowest - 5 if lowest < 0 else max(0.0, lowest - 10), 100)  # zoom in on the differences
        ax.grid(True, axis="y", alpha=0.3)
        ax.grid(False, axis="x")
        if len(models) > 1:
            ax.set_title(labels.get(model, model), fontsize=8)
    if title is None:
        who = labels.get(models[0], models[0]) + " · " if len(models) == 1 else ""
        title = (f"{who}unsupervised STS by post-hoc transform · {_pooling_note(rows, pooling)} · "
                 f"STS12–16: {sts_subsets.replace('_', ' ')}")
    _set_title(fig, title)
    _figure_legend(fig, axes[:1], title="transform", max_cols=4)
    save_figure(fig, out_png, out_svg, out_pdf)


def plot_sts_geometry(geometry: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, pooling: str = "mean_last",
                      title: str | None = None) -> None:
    """Geometry of the sentence embeddings before (``none``) and after each transform, for one ``pooling``:
    one panel per :data:`STS_GEOMETRY_PANELS` metric; x = transform; a bar per model = mean over the
    evaluation datasets, black points = each dataset. Panels the table lacks are left out; none at all is
    a ``ValueError``."""
    _check_columns(geometry, ["model", "pooling", "transform", "dataset", "metric", "value"])
    rows = _select_pooling(geometry, pooling, "STS geometry").copy()
    rows["variant"] = rows["variant"].map(_variant_name) if "variant" in rows.columns else ""
    rows["model"] = rows["model"].astype(str)
    panels = []
    for metric, variant, panel_title in STS_GEOMETRY_PANELS:
        chosen = rows[(rows["metric"] == metric) & (rows["variant"] == (variant or ""))]
        if not chosen.empty:
            panels.append((metric, variant, panel_title, chosen))
    if not panels:
        raise FigureError(f"STS geometry: the table holds none of {[m for m, _, _ in STS_GEOMETRY_PANELS]}; "
                          f"metrics present: {sorted(map(str, rows['metric'].unique()))}")
    labels = model_labels(rows)
    models = sorted(rows["model"].unique())
    colours = model_colours(models)
    transforms = _ordered(rows["transform"])
    fig, axes = _new_panels(len(panels), ncols=min(len(panels), 3))
    x = np.arange(len(transforms))
    width = 0.8 / len(models)
    for ax, (_metric, variant, panel_title, chosen) in zip(axes, panels):
        for j, model in enumerate(models):
            per = chosen[chosen["model"] == model]
            offset = x - 0.4 + (j + 0.5) * width
            means = per.groupby("transform")["value"].mean().reindex(transforms).to_numpy(dtype=float)
            ax.bar(offset, means, width, color=colours[model], alpha=0.75, label=labels.get(model, model))
            for k, transform in enumerate(transforms):
                values = per.loc[per["transform"] == transform, "value"].to_numpy(dtype=float)
                ax.plot(np.full(values.size, offset[k]), values, "o", color="black", markersize=2.5,
                        label="each dataset" if (j == 0 and k == 0) else "_")
        ax.set_xticks(x, transforms, fontsize=6.5, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(panel_title + (f" [{variant}]" if variant else ""), fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.grid(False, axis="x")
    if title is None:
        title = (f"Sentence-embedding geometry before (none) and after each transform · "
                 f"{_pooling_note(rows, pooling)} · bars: mean over {rows['dataset'].nunique()} datasets")
    _set_title(fig, title)
    _figure_legend(fig, axes[:1], max_cols=4)
    save_figure(fig, out_png, out_svg, out_pdf)


def plot_sts_table(scores: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, model: str | None = None,
                   sts_subsets: str = "mean_over_subsets", title: str | None = None) -> None:
    """The STS table as a heat map for ONE model: rows pooling · transform, columns datasets + average,
    each cell annotated with Spearman ρ × 100. Raises ``ValueError`` when the table holds several models
    and ``model`` is not given, or ``model`` is unknown."""
    rows = sts_headline(scores, sts_subsets)
    models = sorted(rows["model"].unique())
    if model is None:
        if len(models) != 1:
            raise FigureError(f"plot_sts_table draws one model; the STS table holds {len(models)}: {models}; "
                              f"pass model=")
        model = models[0]
    if model not in models:
        raise FigureError(f"model {model!r} is not in the STS table; models present: {models}")
    labels = model_labels(rows)
    rows = rows[rows["model"] == model]
    poolings, transforms = _ordered(rows["pooling"]), _ordered(rows["transform"])
    datasets = _ordered(rows["dataset"])
    table = rows.pivot_table(index=["pooling", "transform"], columns="dataset", values="spearman", aggfunc="mean")
    table = table.reindex(columns=datasets)
    table[AVERAGE] = table.mean(axis=1)
    index = [(p, t) for p in poolings for t in transforms if (p, t) in table.index]
    table = table.reindex(index)
    values = table.to_numpy(dtype=float)

    from matplotlib.figure import Figure

    fig = Figure(figsize=TABLE_FIGSIZE, dpi=150, layout="constrained")
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax)
    fontsize = 7 if len(index) <= 40 else 5
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            light = (value - vmin) / (vmax - vmin or 1.0) > 0.6
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=fontsize,
                    color="black" if light else "white")
    ax.set_xticks(range(len(table.columns)), list(table.columns), fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(index)), [f"{p} · {t}" for p, t in index], fontsize=fontsize)
    for k in range(1, len(poolings)):  # separate the poolings
        boundary = sum(1 for p, _ in index if poolings.index(p) < k) - 0.5
        ax.axhline(boundary, color="white", linewidth=2)
    ax.axvline(len(datasets) - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, label=SCORE_LABEL, shrink=0.6)
    layers = rows.drop_duplicates("pooling").set_index("pooling")["layers"].astype(str).to_dict() \
        if "layers" in rows.columns else {}
    note = "; ".join(f"{p}: {layers[p]}" for p in poolings if p in layers)
    _set_title(fig, title if title is not None else
               f"{labels.get(model, model)} · unsupervised STS (Spearman ρ × 100) · STS12–16: "
               f"{sts_subsets.replace('_', ' ')} · layers pooled ({note}; 0 = embedding output)")
    save_figure(fig, out_png, out_svg, out_pdf)
