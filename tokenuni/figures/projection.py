"""PCA views of a layer's tokens (the "Swiss roll" view), drawn from the projection table only.

Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021
(§4): a seeded sample of a layer's tokens projected on the layer's first two or three principal components,
coloured by the log frequency of the token in the corpus (frequent tokens gather in one region; GPT-2's
layers form a "Swiss roll", BERT's do not) or by k-means cluster. The table comes from
:func:`tokenuni.projection.token_projection` (one row per layer and sampled token; ``pc1`` … ``pc3``,
``explained_variance_ratio_pc<k>``, ``frequency``, ``cluster``).

:func:`plot_token_projection` draws one panel per layer on a grid of :data:`~tokenuni.figures.style.PANEL_FIGSIZE`
inches; axes are labelled "PC<k> (x.x % var.)" with that layer's share of the total variance. Cluster
labels are k-means labels of each layer separately: colours do not match clusters across layers.
Layer convention: layer 0 = embedding output, layer L = output of block L.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D

from tokenuni.figures.style import (FigureError, PANEL_FIGSIZE, _check_columns, _new_panels, _set_title, model_labels,
                                    save_figure)

COLOUR_BY = ("frequency", "cluster")
FREQUENCY_CMAP = "viridis"  # rare (dark) -> frequent (yellow)
_POINT_SIZE = {2: 3.0, 3: 2.0}


def _layer_title(layer: int, k=None) -> str:
    name = "layer 0 = embedding output" if layer == 0 else f"layer {layer}"
    if k is None:
        return name
    return f"{name} · k = {k}" + (" (one cluster)" if k == 1 else "")


def _pc_label(rows: pd.DataFrame, k: int) -> str:
    column = f"explained_variance_ratio_pc{k}"
    if column in rows.columns and rows[column].notna().any():
        return f"PC{k} ({100 * float(rows[column].iloc[0]):.1f} % var.)"
    return f"PC{k}"


def _cluster_colours(n: int):
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def plot_token_projection(table: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, layers=None,
                          colour_by: str = "frequency", dims: int = 2, title: str | None = None) -> None:
    """Sampled tokens on PC1–PC2 (``dims=2``) or PC1–PC3 (``dims=3``), one panel per layer, for ONE (model, corpus).

    ``colour_by="frequency"``: colour = log10 of the token's frequency in the corpus (one shared colour
    bar); ``"cluster"``: colour = the layer's k-means label (legend; k in each panel's title). ``layers``:
    the layers to draw (default: every layer in the table). Raises ``ValueError`` naming what is wrong
    (several models/corpora, a missing layer or PC column, no cluster labels).
    """
    if colour_by not in COLOUR_BY:
        raise FigureError(f"colour_by must be one of {COLOUR_BY}, got {colour_by!r}")
    if dims not in (2, 3):
        raise FigureError(f"dims must be 2 or 3, got {dims!r}")
    pcs = [f"pc{k}" for k in range(1, dims + 1)]
    _check_columns(table, ["model", "corpus", "layer", "frequency", *pcs] + (["cluster"] if colour_by == "cluster" else []))
    pairs = sorted({(str(m), str(c)) for m, c in zip(table["model"], table["corpus"])})
    if len(pairs) != 1:
        shown = ", ".join(f"{m}/{c}" for m, c in pairs) or "none"
        raise FigureError(f"plot_token_projection needs exactly one (model, corpus); the table holds {len(pairs)}: "
                          f"{shown}; filter the table first")
    model, corpus = pairs[0]
    present = sorted(int(layer) for layer in table["layer"].unique())
    if layers is None:
        chosen = present
    else:
        chosen = []
        for layer in ([layers] if isinstance(layers, (int, np.integer)) else layers):
            index = int(layer) + (max(present) + 1 if layer < 0 else 0)
            if index not in present:
                raise FigureError(f"layer {layer} is not in the projection table of {model}/{corpus} "
                                  f"(layers present: {present}; layer 0 = embedding output)")
            if index not in chosen:
                chosen.append(index)
        chosen.sort()
    if not chosen:
        raise FigureError(f"the projection table of {model}/{corpus} is empty")
    if colour_by == "cluster":
        unlabelled = [layer for layer in chosen if table.loc[table["layer"] == layer, "cluster"].isna().all()]
        if unlabelled:
            raise FigureError(f"no cluster labels for layer(s) {unlabelled} of {model}/{corpus} "
                              f"(the projection was computed with clusters=None); colour by frequency or rerun with "
                              "clusters")

    label = model_labels(table).get(model, model)
    fig, axes = _new_panels(len(chosen), figsize=PANEL_FIGSIZE)
    if dims == 3:  # same grid cells, 3-D axes
        replaced = []
        for ax in axes:
            spec = ax.get_subplotspec()
            fig.delaxes(ax)
            replaced.append(fig.add_subplot(spec, projection="3d"))
        axes = replaced

    frequency = np.log10(table["frequency"].clip(lower=1).to_numpy(dtype=np.float64))
    norm = Normalize(vmin=float(np.min(frequency)), vmax=float(np.max(frequency)))
    cmap = colormaps[FREQUENCY_CMAP]
    n_clusters = int(table["cluster"].max()) + 1 if colour_by == "cluster" else 0
    cluster_colours = _cluster_colours(n_clusters)
    mappable = None
    for ax, layer in zip(axes, chosen):
        rows = table[table["layer"] == layer]
        coords = [rows[pc].to_numpy(dtype=np.float64) for pc in pcs]
        common = dict(s=_POINT_SIZE[dims], linewidths=0, alpha=0.7, rasterized=True)
        if colour_by == "frequency":
            values = np.log10(rows["frequency"].clip(lower=1).to_numpy(dtype=np.float64))
            mappable = ax.scatter(*coords, c=values, cmap=cmap, norm=norm, **common)
            k = None
        else:
            labels = rows["cluster"].to_numpy(dtype=np.int64)
            colours = np.array(cluster_colours)[labels]
            ax.scatter(*coords, c=colours, **common)
            k = int(rows["cluster_k"].iloc[0]) if "cluster_k" in rows and rows["cluster_k"].notna().any() \
                else len(np.unique(labels))
        ax.set_title(_layer_title(layer, k), fontsize=8)
        ax.set_xlabel(_pc_label(rows, 1), fontsize=7)
        ax.set_ylabel(_pc_label(rows, 2), fontsize=7)
        if dims == 3:
            ax.set_zlabel(_pc_label(rows, 3), fontsize=7, labelpad=2)
            ax.xaxis.labelpad = ax.yaxis.labelpad = 2
            ax.tick_params(labelsize=6, pad=0)
            ax.view_init(elev=20, azim=-60)
            ax.set_box_aspect(None, zoom=0.82)  # room for the PC3 label inside the panel
        else:
            ax.tick_params(labelsize=7)

    n = int(table.loc[table["layer"] == chosen[0]].shape[0])
    seeds = sorted({int(s) for s in table["seed"].dropna()}) if "seed" in table else []
    sample = f"{n} sampled tokens" + (f" (seed {seeds[0]})" if len(seeds) == 1 else "")
    what = "log10 frequency" if colour_by == "frequency" else "k-means cluster"
    _set_title(fig, title if title is not None else
               f"{label} · {corpus} · {sample} on each layer's PC1–PC{dims}, coloured by {what} "
               f"(layer 0 = embedding output)")
    if colour_by == "frequency":
        bar = fig.colorbar(mappable, ax=axes, shrink=0.85, pad=0.02)
        bar.set_label("log10 frequency of the token in the corpus", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    else:
        handles = [Line2D([], [], linestyle="", marker="o", markersize=5, color=cluster_colours[i], label=f"cluster {i}")
                   for i in range(n_clusters)]
        fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False,
                   ncols=min(n_clusters, 10), title="k-means label within each layer (k chosen per layer)",
                   title_fontsize=7)
    save_figure(fig, out_png, out_svg, out_pdf)


__all__ = ["plot_token_projection", "COLOUR_BY"]
