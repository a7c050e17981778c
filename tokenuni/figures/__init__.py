"""Figures, drawn only from the tidy tables (never from dumps), PNG for reports and SVG for papers.

Layer convention everywhere: layer 0 = embedding output (``hidden_states[0]``), layer L = output of
transformer block L. One module per family of figures; shared style (sizes, colours per model, atomic
saving) in :mod:`tokenuni.figures.style`.
"""
from tokenuni.figures.layers import plot_metric_by_layer, plot_singular_value_cdf
from tokenuni.figures.style import (DPI, FIGSIZE, LAYER_AXIS_LABEL, METRIC_LABELS, metric_label, model_colours,
                                    model_labels, save_figure)

__all__ = [
    "DPI", "FIGSIZE", "LAYER_AXIS_LABEL", "METRIC_LABELS", "metric_label", "model_colours", "model_labels",
    "save_figure", "plot_metric_by_layer", "plot_singular_value_cdf",
]
