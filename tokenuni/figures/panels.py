"""Multi-panel figures from the tidy metrics table: one panel per metric, every model overlaid.

* :func:`plot_geometry_panels` – the seeds' "geometry by layer" figure: skewness of the normalised
  singular values and token uniformity (Yan, Gui, Li, He, UAI 2022), [CLS] uniformity (Shi et al.,
  ICLR 2022), average cosine (Ethayarajh, EMNLP 2019), S_intra and S_inter (Ethayarajh 2019; Cai, Huang,
  Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021),
  IsoScore (Rudman, Gillman, Rayne, Eickhoff, ACL Findings 2022), the partition-function isotropy
  I(V) = min_c Z(c) / max_c Z(c) (Mu & Viswanath, ICLR 2018), the local intrinsic dimension (Amsaleg et
  al., KDD 2015; Cai et al. 2021) and the number of clusters k of maximum mean silhouette (Cai et al. 2021).
* :func:`plot_oversmoothing` – over-smoothing by depth (Shi, Gao, Ren, Xu, Liang, Li, Kwok, "Revisiting
  Over-smoothing in BERT from the Perspective of Graphs", ICLR 2022): cosine and relative distance of
  each token to its sentence's mean token, token uniformity, [CLS] uniformity, and the scale of the
  layer-norm γ (‖γ‖ / √d) that the paper ties to over-smoothing.

Colour per model (:func:`model_colours`), line style per corpus, marker per variant; several seeds of a
(model, corpus, layer) are averaged with their min-max range shaded. Layer 0 = embedding output.
"""
from __future__ import annotations

import logging
import textwrap

import pandas as pd

from tokenuni.figures.layers import draw_metric_lines, line_styles, scalar_rows
from tokenuni.figures.style import (FigureError, _check_columns, _figure_legend, _new_panels, _set_layer_axis,
                                    _set_title, model_colours, model_labels, panels_of, save_figure)

log = logging.getLogger(__name__)

# (metric row, variant or None, panel title), from the row catalogue's views
GEOMETRY_PANELS = panels_of("geometry_panels")
# layer-norm γ: one value per layer norm; its variant "*" draws one line per place in the block
OVERSMOOTHING_PANELS = panels_of("oversmoothing_panels")
_WEIGHTS = "(weights)"
_MODEL_PROPERTIES = {"layernorm_gamma_norm", "layernorm_gamma_rms", "layernorm_beta_norm"}  # same for every corpus


def _panel_rows(table: pd.DataFrame, metric: str, variant: str | None, corpora) -> pd.DataFrame | None:
    """The rows drawn in one panel, or None when the table lacks them (the panel is then left out)."""
    if metric not in set(table["metric"]):
        return None
    rows = scalar_rows(table, metric)
    if corpora is not None:
        rows = rows[rows["corpus"].isin(corpora)]
    if variant not in (None, "*"):
        rows = rows[rows["variant"] == variant]
    if metric in _MODEL_PROPERTIES and not rows.empty:  # read from the weights: one corpus is enough
        rows = rows[rows["corpus"] == sorted(rows["corpus"].unique())[0]].assign(corpus=_WEIGHTS)
    return None if rows.empty else rows


def _plot_panels(table: pd.DataFrame, panels, out_png, out_svg, out_pdf, *, corpora, title: str, what: str) -> None:
    _check_columns(table, ["model", "corpus", "layer", "metric", "value"])
    if corpora is not None:
        corpora = [corpora] if isinstance(corpora, str) else list(corpora)
        unknown = sorted(set(corpora) - set(table["corpus"].astype(str)))
        if unknown:
            raise FigureError(f"corpus {unknown} not in the metrics table; corpora present: "
                              f"{sorted(map(str, table['corpus'].unique()))}")
    drawn = []
    for metric, variant, panel_title in panels:
        rows = _panel_rows(table, metric, variant, corpora)
        if rows is None:
            log.info("%s: no %s rows%s, panel left out", what, metric, f" ({variant})" if variant not in (None, "*") else "")
            continue
        drawn.append((metric, variant, panel_title, rows))
    if not drawn:
        wanted = sorted({metric for metric, _, _ in panels})
        raise FigureError(f"{what}: the metrics table holds none of {wanted}; metrics present: "
                          f"{sorted(map(str, table['metric'].dropna().unique()))}")

    labels = model_labels(table)
    colours = model_colours(table["model"].astype(str).unique())
    every = pd.concat([rows for *_, rows in drawn], ignore_index=True)
    data_rows = every[every["corpus"] != _WEIGHTS]
    styles, _ = line_styles(data_rows if not data_rows.empty else every)
    show_corpus = data_rows["corpus"].nunique() > 1
    fig, axes = _new_panels(len(drawn))
    ncols = axes[0].get_subplotspec().get_gridspec().ncols
    in_legend = []
    for i, (ax, (_metric, variant, panel_title, rows)) in enumerate(zip(axes, drawn)):
        if variant == "*":  # one line per variant (e.g. place of a layer norm), named in the panel's own legend
            _, markers = line_styles(rows)
            layers = draw_metric_lines(ax, rows, labels=labels, colours=colours, styles={_WEIGHTS: "-"},
                                       markers=markers, show_corpus=False, show_variant=True)
            ax.legend(fontsize=6, frameon=False)
        else:
            layers = draw_metric_lines(ax, rows, labels=labels, colours=colours, styles=styles, markers={},
                                       show_corpus=show_corpus)
            in_legend.append(ax)
        suffix = f" [{variant}]" if variant not in (None, "*") else ""
        ax.set_title(textwrap.fill(panel_title + suffix, 38), fontsize=8)
        _set_layer_axis(ax, layers, label=i >= len(drawn) - ncols)  # x label on the bottom row only
    _set_title(fig, title)
    longest = max((len(text) for ax in in_legend for text in ax.get_legend_handles_labels()[1]), default=0)
    _figure_legend(fig, in_legend, max_cols=2 if longest > 40 else 4)
    save_figure(fig, out_png, out_svg, out_pdf)


def plot_geometry_panels(table: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, corpora=None,
                         panels=None, title: str | None = None) -> None:
    """One panel per geometry metric against layer (layer 0 = embedding output), every model overlaid.

    ``panels`` defaults to :data:`GEOMETRY_PANELS` ((metric, variant, title) triples); metrics the table
    lacks are left out (logged). ``corpora`` limits the corpora drawn (default: all, one line style each).
    Raises ``ValueError`` when the table holds none of the metrics or an unknown corpus is asked for.
    """
    _plot_panels(table, panels or GEOMETRY_PANELS, out_png, out_svg, out_pdf, corpora=corpora, what="geometry panels",
                 title=title if title is not None else "Geometry of the representations by layer "
                 "(layer 0 = embedding output)")


def plot_oversmoothing(table: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, corpora=None,
                       title: str | None = None) -> None:
    """Over-smoothing by depth (Shi et al., ICLR 2022): one panel per :data:`OVERSMOOTHING_PANELS` metric.

    token_mean_cosine = (1/n) Σ_i cos(h_i, h̄) within a sentence (→ 1 when smoothed); token_mean_distance =
    Σ_i ‖h_i − h̄‖ / Σ_i ‖h_i‖ (→ 0 when smoothed); layer-norm γ per place in the block (embeddings /
    attention output / block output), drawn once per model (read from the weights). Raises ``ValueError`` when the table holds none of these metrics.
    """
    _plot_panels(table, OVERSMOOTHING_PANELS, out_png, out_svg, out_pdf, corpora=corpora, what="over-smoothing",
                 title=title if title is not None else "Over-smoothing by depth (layer 0 = embedding output)")
