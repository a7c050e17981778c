"""Per-layer figures from the tidy metrics table (one row per model, corpus, layer, metric, variant, component).

* :func:`plot_singular_value_cdf` – for one (model, corpus), the empirical CDF of each layer's
  normalised singular values s / max s, one line per layer (viridis, shallow -> deep). This is the
  "token uniformity" figure of Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via
  Singular Value Transformation", UAI 2022: with depth the spectrum grows more skewed (a few large
  singular values, the rest small), so the CDF rises earlier.
* :func:`plot_metric_by_layer` – any scalar metric against layer, one line per (model, corpus[,
  variant]); e.g. the average cosine similarity between random token vectors, the anisotropy measure
  of Ethayarajh, "How Contextual are Contextualized Word Representations?", EMNLP 2019 (see also
  Godey, de la Clergerie, Sagot, "Anisotropy Is Inherent to Self-Attention in Transformers", EACL 2024).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from tokenuni.figures.style import (FigureError, LAYER_AXIS_LABEL, _LINESTYLES, _MARKERS, _check_columns, _new_figure,
                                    _set_title, _variant_name, metric_label, model_colours, model_labels, save_figure)


# ---------------------------------------------------------------------------------- singular-value CDF
def plot_singular_value_cdf(table: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *,
                            variant: str = "uncentred", title: str | None = None) -> None:
    """Empirical CDF of s / max(s) per layer for ONE (model, corpus) (Yan et al., UAI 2022, token uniformity).

    x: normalised singular value in [0, 1]; y: fraction of the layer's singular values <= x. One line per
    layer, viridis from shallow (dark) to deep (yellow). Raises ``ValueError`` when the table holds no or
    several (model, corpus) pairs, no ``singular_value`` rows for ``variant``, or duplicated components.
    """
    _check_columns(table, ["model", "corpus", "layer", "metric", "variant", "component", "value"])
    rows = table[table["metric"] == "singular_value"]
    if rows.empty:
        raise FigureError(f"no 'singular_value' rows in the metrics table; metrics present: "
                          f"{sorted(map(str, table['metric'].dropna().unique()))}")
    pairs = sorted({(str(m), str(c)) for m, c in zip(rows["model"], rows["corpus"])})
    if len(pairs) != 1:
        shown = ", ".join(f"{m}/{c}" for m, c in pairs)
        raise FigureError(f"plot_singular_value_cdf needs exactly one (model, corpus); the singular_value rows "
                          f"hold {len(pairs)}: {shown}; filter the table first")
    model, corpus = pairs[0]
    variants = rows["variant"].map(_variant_name)
    rows = rows[variants == variant]
    if rows.empty:
        raise FigureError(f"no singular_value rows with variant {variant!r} for {model}/{corpus}; "
                          f"variants present: {sorted(set(variants))}")
    duplicated = rows.duplicated(["layer", "component"])
    if duplicated.any():
        raise FigureError(f"singular_value rows for {model}/{corpus} ({variant}) repeat (layer, component) "
                          f"{duplicated.sum()} time(s) (several seeds or sample sizes?); filter the table first")

    label = model_labels(table).get(model, model)
    layers = sorted(int(layer) for layer in rows["layer"].unique())
    cmap = colormaps["viridis"]
    fig, ax = _new_figure()
    plotted = 0
    for i, layer in enumerate(layers):
        values = rows.loc[rows["layer"] == layer, "value"].to_numpy(dtype=np.float64)
        values = np.sort(values[np.isfinite(values)])
        if values.size == 0 or values[-1] <= 0:
            continue  # nothing to normalise (empty or all-zero spectrum)
        x = np.concatenate([[0.0], values / values[-1]])
        y = np.arange(values.size + 1) / values.size
        colour = cmap(i / (len(layers) - 1)) if len(layers) > 1 else cmap(0.0)
        name = "layer 0 (embeddings)" if layer == 0 else f"layer {layer}"
        ax.plot(x, y, drawstyle="steps-post", color=colour, linewidth=1.4, label=name)
        plotted += 1
    if plotted == 0:
        raise FigureError(f"every layer of {model}/{corpus} ({variant}) has an empty or all-zero spectrum")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("normalised singular value s / max(s)")
    ax.set_ylabel("fraction of singular values ≤ x")
    _set_title(fig, title if title is not None else f"{label} · {corpus} · singular-value CDF ({variant})")
    ncols = 1 if plotted <= 14 else 2
    ax.legend(title=LAYER_AXIS_LABEL, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              fontsize=7, title_fontsize=7, ncols=ncols, frameon=False)
    save_figure(fig, out_png, out_svg, out_pdf)


# -------------------------------------------------------------------------------------- metric by layer
def scalar_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of one scalar ``metric``, with ``variant`` ('' when none) and ``sample_size`` (-1 when not
    subsampled) normalised and model/corpus as str. Raises ``ValueError`` when the metric is absent or
    vector-valued (has components)."""
    _check_columns(table, ["model", "corpus", "layer", "metric", "value"])
    rows = table[table["metric"] == metric].copy()
    if rows.empty:
        raise FigureError(f"metric {metric!r} is not in the metrics table; metrics present: "
                          f"{sorted(map(str, table['metric'].dropna().unique()))}")
    if "component" in rows.columns and rows["component"].notna().any():
        raise FigureError(f"metric {metric!r} is vector-valued (has components); plot_metric_by_layer takes "
                          f"scalar metrics (use plot_singular_value_cdf for singular_value)")
    rows["variant"] = rows["variant"].map(_variant_name) if "variant" in rows.columns else ""
    if "sample_size" in rows.columns:  # -1 = not subsampled
        rows["sample_size"] = rows["sample_size"].astype("Int64").fillna(-1).astype("int64")
    else:
        rows["sample_size"] = -1
    rows["model"] = rows["model"].astype(str)
    rows["corpus"] = rows["corpus"].astype(str)
    return rows


def draw_metric_lines(ax, rows: pd.DataFrame, *, labels: dict, colours: dict, styles: dict, markers: dict,
                      show_corpus: bool = True, show_variant: bool = False, show_sample: bool = False) -> set[int]:
    """Draw prepared :func:`scalar_rows` on ``ax``: one line per (model, corpus, variant, sample size).

    Colour per model, line style per corpus, marker per variant; rows repeating a layer (several seeds)
    are averaged and their min-max range shaded. Returns the layers drawn.
    """
    all_layers: set[int] = set()
    for (model, corpus, variant, sample_size), group in rows.groupby(["model", "corpus", "variant", "sample_size"],
                                                                      sort=True):
        stats = group.groupby("layer")["value"].agg(["mean", "min", "max", "count"]).sort_index()
        layers = stats.index.to_numpy(dtype=int)
        all_layers.update(int(v) for v in layers)
        parts = [labels.get(model, model)]
        if show_corpus:
            parts.append(corpus)
        if show_variant:
            parts.append(variant or "–")
        if show_sample and sample_size != -1:
            parts.append(f"n={sample_size}")
        line, = ax.plot(layers, stats["mean"].to_numpy(), color=colours[model], linestyle=styles.get(corpus, "-"),
                        marker=markers.get(variant, "o"), markersize=4, linewidth=1.5, label=" · ".join(parts))
        if (stats["count"] > 1).any():
            ax.fill_between(layers, stats["min"].to_numpy(), stats["max"].to_numpy(), color=line.get_color(),
                            alpha=0.15, linewidth=0)
    return all_layers


def line_styles(rows: pd.DataFrame) -> tuple[dict, dict]:
    """Line style per corpus and marker per variant, in sorted order (the same in every panel)."""
    corpora = sorted(rows["corpus"].astype(str).unique())
    variants = sorted(rows["variant"].map(_variant_name).unique()) if "variant" in rows.columns else [""]
    return ({c: _LINESTYLES[i % len(_LINESTYLES)] for i, c in enumerate(corpora)},
            {v: _MARKERS[i % len(_MARKERS)] for i, v in enumerate(variants)})


def plot_metric_by_layer(table: pd.DataFrame, metric: str, out_png, out_svg=None, out_pdf=None, *,
                         ylabel: str | None = None, title: str | None = None) -> None:
    """A scalar metric against layer: one line with markers per (model, corpus[, variant when several]).

    Colour per model (stable, :func:`model_colours`), line style per corpus, marker per variant. Rows that
    repeat a (model, corpus, variant, layer) – several seeds – are averaged and their min-max range shaded;
    several sample sizes give separate lines. Raises ``ValueError`` when ``metric`` is absent or vector-valued.
    """
    rows = scalar_rows(table, metric)
    labels = model_labels(table)
    models = sorted(rows["model"].unique())
    styles, markers = line_styles(rows)
    fig, ax = _new_figure()
    all_layers = draw_metric_lines(ax, rows, labels=labels, colours=model_colours(models), styles=styles,
                                   markers=markers, show_variant=rows["variant"].nunique() > 1,
                                   show_sample=rows["sample_size"].nunique() > 1)
    n_lines = len(ax.get_lines())
    if len(all_layers) <= 30:
        ax.set_xticks(sorted(all_layers))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(LAYER_AXIS_LABEL)
    ax.set_ylabel(ylabel if ylabel is not None else metric_label(metric))
    if title is None:
        if len(models) == 1:
            title = f"{labels.get(models[0], models[0])} · {metric_label(metric)} by layer"
        else:
            title = f"{metric_label(metric)} by layer"
    _set_title(fig, title)
    fig.legend(loc="outside lower center", fontsize=7, frameon=False, handlelength=3.5, ncols=min(n_lines, 2 if n_lines <= 8 else 3))
    save_figure(fig, out_png, out_svg, out_pdf)
