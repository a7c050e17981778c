"""Figures, drawn only from the tidy tables (never from dumps): PNG for the report, SVG and PDF for papers.

Layer convention everywhere: layer 0 = embedding output (``hidden_states[0]``), layer L = output of
transformer block L. One module per family of figures; shared style (sizes, colours per model, atomic
saving) in :mod:`tokenuni.figures.style`:

* :mod:`~tokenuni.figures.layers` – singular-value CDF per layer, any metric by layer;
* :mod:`~tokenuni.figures.panels` – geometry by layer (one panel per metric, models overlaid), over-smoothing;
* :mod:`~tokenuni.figures.sts` – unsupervised STS per transform, geometry before/after, the STS table;
* :mod:`~tokenuni.figures.finetune` – fine-tuning scores per variant with seed spread, isotropy vs score;
* :mod:`~tokenuni.figures.checkpoints` – metrics by training step.
"""
from tokenuni.figures.checkpoints import CHECKPOINT_METRICS, layer_groups, plot_metrics_by_step
from tokenuni.figures.finetune import ISOTROPY_AXES, plot_finetune_scores, plot_isotropy_vs_score
from tokenuni.figures.layers import plot_metric_by_layer, plot_singular_value_cdf
from tokenuni.figures.panels import GEOMETRY_PANELS, OVERSMOOTHING_PANELS, plot_geometry_panels, plot_oversmoothing
from tokenuni.figures.projection import plot_token_projection
from tokenuni.figures.sts import STS_GEOMETRY_PANELS, plot_sts_geometry, plot_sts_scores, plot_sts_table
from tokenuni.figures.style import (DPI, FIGSIZE, LAYER_AXIS_LABEL, PANEL_FIGSIZE, TABLE_FIGSIZE,
                                    metric_label, model_colours, model_labels, save_figure)

__all__ = [
    "DPI", "FIGSIZE", "PANEL_FIGSIZE", "TABLE_FIGSIZE", "LAYER_AXIS_LABEL", "metric_label",
    "model_colours", "model_labels", "save_figure",
    "plot_metric_by_layer", "plot_singular_value_cdf",
    "GEOMETRY_PANELS", "OVERSMOOTHING_PANELS", "plot_geometry_panels", "plot_oversmoothing",
    "STS_GEOMETRY_PANELS", "plot_sts_scores", "plot_sts_geometry", "plot_sts_table",
    "ISOTROPY_AXES", "plot_finetune_scores", "plot_isotropy_vs_score",
    "CHECKPOINT_METRICS", "layer_groups", "plot_metrics_by_step",
    "plot_token_projection",
]
