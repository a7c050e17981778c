"""Figures from the tidy metrics table (one row per model, corpus, layer, metric, variant, component).

Layer convention everywhere: layer 0 = embedding output (``hidden_states[0]``), layer L = output of
transformer block L; every figure states it in an axis label or legend title.

* :func:`plot_singular_value_cdf` – for one (model, corpus), the empirical CDF of each layer's
  normalised singular values s / max s, one line per layer (viridis, shallow -> deep). This is the
  "token uniformity" figure of Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via
  Singular Value Transformation", UAI 2022: with depth the spectrum grows more skewed (a few large
  singular values, the rest small), so the CDF rises earlier.
* :func:`plot_metric_by_layer` – any scalar metric against layer, one line per (model, corpus[,
  variant]); e.g. the average cosine similarity between random token vectors, the anisotropy measure
  of Ethayarajh, "How Contextual are Contextualized Word Representations?", EMNLP 2019 (see also
  Godey, de la Clergerie, Sagot, "Anisotropy Is Inherent to Self-Attention in Transformers", EACL 2024).
* :func:`save_figure` – PNG (150 dpi) and optional SVG, each written atomically (temporary name in the
  same folder, then ``os.replace``).

Headless: figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend) and
rendered by the Agg / SVG canvases, so nothing depends on a display or on the global backend.
"""
from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

FIGSIZE = (7.0, 4.5)
DPI = 150
LAYER_AXIS_LABEL = "layer (0 = embedding output)"

METRIC_LABELS = {
    "avg_cosine": "average cosine similarity",
    "token_uniformity": "token uniformity (mean pairwise cosine within a sentence)",
    "singular_value_skewness": "skewness of normalised singular values",
    "effective_rank": "effective rank",
    "singular_value": "singular value",
    "explained_variance": "variance explained by the top-k components",
    "s_intra": "S_intra (cosine among instances of a word type)",
    "s_inter": "S_inter (cosine across word types)",
    "token_mean_cosine": "cosine of tokens to their sentence's mean token",
    "token_mean_distance": "relative distance to the sentence's mean token",
    "cls_uniformity": "[CLS] uniformity (cosine of [CLS] to the tokens)",
    "layernorm_gamma_norm": "layer-norm ‖γ‖",
    "layernorm_gamma_rms": "layer-norm ‖γ‖ / √d",
    "layernorm_beta_norm": "layer-norm ‖β‖",
    "norm_frequency_correlation": "Pearson r(‖x‖, log frequency)",
    "pc_frequency_correlation": "Pearson r(PC projection, log frequency)",
    "lid_mean": "local intrinsic dimension (mean, MLE k=100)",
    "lid_std": "local intrinsic dimension (std across tokens)",
    "lid_median": "local intrinsic dimension (median)",
    "lid_k": "neighbours used for LID",
    "lid_duplicate_tokens": "duplicate vectors in the LID sample",
    "wang_isola_uniformity": "Wang–Isola uniformity log E exp(−2‖x̂−ŷ‖²)",
    "isoscore": "IsoScore",
    "isoscore_star": "IsoScore* (shrinkage covariance)",
    "partition_isotropy": "partition-function isotropy I(V)",
    "mms_k": "number of clusters k (max. mean silhouette)",
    "mms_silhouette": "best mean silhouette",
    "within_cluster_avg_cosine": "average cosine within clusters",
    "sentence_singular_value_skewness": "skewness of a sentence's normalised singular values",
    "sentence_top_singular_fraction": "σ₁² / Σσ² per sentence",
}

_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_TAB10 = colormaps["tab10"]


# --------------------------------------------------------------------------------------------- helpers
def metric_label(metric: str) -> str:
    """Human name for a metric row name (the name itself when unknown)."""
    return METRIC_LABELS.get(metric, metric)


def model_labels(table: pd.DataFrame) -> dict[str, str]:
    """Display name per model key: the ``model_label`` column when present and non-empty, else the key."""
    labels = {str(m): str(m) for m in table["model"].dropna().unique()} if "model" in table else {}
    if "model_label" in table.columns:
        pairs = table[["model", "model_label"]].dropna().drop_duplicates("model")
        for model, label in zip(pairs["model"], pairs["model_label"]):
            if str(label).strip():
                labels[str(model)] = str(label)
    return labels


def model_colours(models) -> dict[str, tuple]:
    """Stable colour per model key: tab10 slot crc32(key) % 10, collisions probed in sorted key order.

    A model keeps its colour across figures unless another model in the same figure claimed its slot first.
    """
    taken: set[int] = set()
    colours = {}
    for model in sorted({str(m) for m in models}):
        slot = zlib.crc32(model.encode("utf-8")) % 10
        for step in range(10):
            if (slot + step) % 10 not in taken:
                slot = (slot + step) % 10
                break
        taken.add(slot)
        colours[model] = _TAB10(slot)
    return colours


def _new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _set_title(fig: Figure, title: str) -> None:
    """Figure-level title (constrained layout keeps it and outside legends apart); long titles wrap."""
    fig.suptitle("\n".join(textwrap.wrap(title, 90)) if title else title, fontsize=10)


def _check_columns(table: pd.DataFrame, needed) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"metrics table lacks column(s) {missing}; columns present: {list(table.columns)}")


def _variant_name(variant) -> str:
    return "" if variant is None or (isinstance(variant, float) and np.isnan(variant)) else str(variant)


# ----------------------------------------------------------------------------------------------- saving
def save_figure(fig, out_png, out_svg=None) -> None:
    """Write ``fig`` as PNG (150 dpi) and, when asked, SVG; each atomically; then close the figure.

    Every file goes to a temporary name in its destination folder and is moved into place with
    ``os.replace``, so a reader (or Snakemake) never sees a half-written figure. The size is exactly
    the figure size times the dpi (no ``bbox_inches="tight"``).
    """
    try:
        targets = [(Path(out_png), "png")]
        if out_svg is not None:
            targets.append((Path(out_svg), "svg"))
        for path, fmt in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp.{fmt}")
            os.close(fd)
            try:
                # No date in the metadata: the same table gives byte-identical files.
                metadata = {"Date": None} if fmt == "svg" else None
                fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
    finally:
        if "matplotlib.pyplot" in sys.modules:  # a pyplot-managed figure: release it from the figure manager
            import matplotlib.pyplot as plt

            plt.close(fig)


# ---------------------------------------------------------------------------------- singular-value CDF
def plot_singular_value_cdf(table: pd.DataFrame, out_png, out_svg=None, *, variant: str = "uncentred",
                            title: str | None = None) -> None:
    """Empirical CDF of s / max(s) per layer for ONE (model, corpus) (Yan et al., UAI 2022, token uniformity).

    x: normalised singular value in [0, 1]; y: fraction of the layer's singular values <= x. One line per
    layer, viridis from shallow (dark) to deep (yellow). Raises ``ValueError`` when the table holds no or
    several (model, corpus) pairs, no ``singular_value`` rows for ``variant``, or duplicated components.
    """
    _check_columns(table, ["model", "corpus", "layer", "metric", "variant", "component", "value"])
    rows = table[table["metric"] == "singular_value"]
    if rows.empty:
        raise ValueError(f"no 'singular_value' rows in the metrics table; metrics present: "
                         f"{sorted(map(str, table['metric'].dropna().unique()))}")
    pairs = sorted({(str(m), str(c)) for m, c in zip(rows["model"], rows["corpus"])})
    if len(pairs) != 1:
        shown = ", ".join(f"{m}/{c}" for m, c in pairs)
        raise ValueError(f"plot_singular_value_cdf needs exactly one (model, corpus); the singular_value rows "
                         f"hold {len(pairs)}: {shown}; filter the table first")
    model, corpus = pairs[0]
    variants = rows["variant"].map(_variant_name)
    rows = rows[variants == variant]
    if rows.empty:
        raise ValueError(f"no singular_value rows with variant {variant!r} for {model}/{corpus}; "
                         f"variants present: {sorted(set(variants))}")
    duplicated = rows.duplicated(["layer", "component"])
    if duplicated.any():
        raise ValueError(f"singular_value rows for {model}/{corpus} ({variant}) repeat (layer, component) "
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
        raise ValueError(f"every layer of {model}/{corpus} ({variant}) has an empty or all-zero spectrum")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("normalised singular value s / max(s)")
    ax.set_ylabel("fraction of singular values ≤ x")
    _set_title(fig, title if title is not None else f"{label} · {corpus} · singular-value CDF ({variant})")
    ncols = 1 if plotted <= 14 else 2
    ax.legend(title=LAYER_AXIS_LABEL, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              fontsize=7, title_fontsize=7, ncols=ncols, frameon=False)
    save_figure(fig, out_png, out_svg)


# -------------------------------------------------------------------------------------- metric by layer
def plot_metric_by_layer(table: pd.DataFrame, metric: str, out_png, out_svg=None, *, ylabel: str | None = None,
                         title: str | None = None) -> None:
    """A scalar metric against layer: one line with markers per (model, corpus[, variant when several]).

    Colour per model (stable, :func:`model_colours`), line style per corpus, marker per variant. Rows that
    repeat a (model, corpus, variant, layer) – several seeds – are averaged and their min-max range shaded;
    several sample sizes give separate lines. Raises ``ValueError`` when ``metric`` is absent or vector-valued.
    """
    _check_columns(table, ["model", "corpus", "layer", "metric", "value"])
    rows = table[table["metric"] == metric].copy()
    if rows.empty:
        raise ValueError(f"metric {metric!r} is not in the metrics table; metrics present: "
                         f"{sorted(map(str, table['metric'].dropna().unique()))}")
    if "component" in rows.columns and rows["component"].notna().any():
        raise ValueError(f"metric {metric!r} is vector-valued (has components); plot_metric_by_layer takes "
                         f"scalar metrics (use plot_singular_value_cdf for singular_value)")
    rows["variant"] = rows["variant"].map(_variant_name) if "variant" in rows.columns else ""
    if "sample_size" in rows.columns:  # -1 = not subsampled
        rows["sample_size"] = rows["sample_size"].astype("Int64").fillna(-1).astype("int64")
    else:
        rows["sample_size"] = -1
    rows["model"] = rows["model"].astype(str)
    rows["corpus"] = rows["corpus"].astype(str)

    labels = model_labels(table)
    models = sorted(rows["model"].unique())
    corpora = sorted(rows["corpus"].unique())
    variants = sorted(rows["variant"].unique())
    sample_sizes = sorted(rows["sample_size"].unique())
    show_variant = len(variants) > 1
    show_sample = len(sample_sizes) > 1
    colours = model_colours(models)
    styles = {c: _LINESTYLES[i % len(_LINESTYLES)] for i, c in enumerate(corpora)}
    markers = {v: _MARKERS[i % len(_MARKERS)] for i, v in enumerate(variants)}

    fig, ax = _new_figure()
    key_columns = ["model", "corpus", "variant"]
    grouped = rows.groupby(key_columns + ["sample_size"], sort=True)
    all_layers: set[int] = set()
    n_lines = 0
    for (model, corpus, variant, sample_size), group in grouped:
        stats = group.groupby("layer")["value"].agg(["mean", "min", "max", "count"]).sort_index()
        layers = stats.index.to_numpy(dtype=int)
        all_layers.update(int(v) for v in layers)
        parts = [labels.get(model, model), corpus]
        if show_variant:
            parts.append(variant or "–")
        if show_sample and sample_size != -1:
            parts.append(f"n={sample_size}")
        line, = ax.plot(layers, stats["mean"].to_numpy(), color=colours[model], linestyle=styles[corpus],
                        marker=markers[variant], markersize=4, linewidth=1.5, label=" · ".join(parts))
        if (stats["count"] > 1).any():
            ax.fill_between(layers, stats["min"].to_numpy(), stats["max"].to_numpy(), color=line.get_color(),
                            alpha=0.15, linewidth=0)
        n_lines += 1

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
    save_figure(fig, out_png, out_svg)
