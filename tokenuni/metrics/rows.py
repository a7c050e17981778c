"""The catalogue of metric rows: what each row name of the tidy metrics table means.

Every metric declares the rows it produces as :class:`Row` entries in its class attribute ``rows`` (its
own file, beside the formula). Everything that shows a row — the figures' labels and panel titles, the
report's order and findings, the per-layer table of ``tokenuni measure``, the run-level MLflow headline
metrics, the STS and fine-tuning summaries, the workflow's figure rules — reads it from here, through
:func:`row` and :func:`view`. Adding a metric is its file (with its rows) plus its test; it joins a
multi-row view (a panel figure, the measure table) by one line in :data:`VIEWS`.

This module imports nothing heavy: the report and the figures read the catalogue without torch.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

#: which end of a row's scale is isotropic
HIGH, LOW = "high", "low"


@dataclass(frozen=True)
class Row:
    """One row name of the tidy table and what it means.

    ``label``: the long human name (axis labels, legends, report). ``title``: a short panel title (default
    ``label``). ``short``: a column name for compact tables (default ``name``). ``noun``: the row in a
    sentence of the report's findings (default ``label``). ``unit``: what a value counts ("" for a ratio or
    score). ``headline_variant``: the variant the papers' headline numbers use ("" when the row has no
    variants; "*" when every variant is drawn, e.g. one per layer-norm place). ``isotropic``: which end of
    the scale is isotropic (:data:`HIGH`, :data:`LOW`, or None when neither). ``component``: one row per
    component k (singular values, silhouette per k), never a scalar by-layer figure. ``diagnostic``: the row
    describes the computation (k used, skipped sentences), not the geometry; shown last.
    """

    name: str
    label: str
    title: str = ""
    short: str = ""
    noun: str = ""
    unit: str = ""
    headline_variant: str = ""
    isotropic: str | None = None
    component: bool = False
    diagnostic: bool = False

    def __post_init__(self):
        if self.isotropic not in (HIGH, LOW, None):
            raise ValueError(f"row {self.name}: isotropic must be {HIGH!r}, {LOW!r} or None, not {self.isotropic!r}")

    @property
    def panel_title(self) -> str:
        return self.title or self.label

    @property
    def column(self) -> str:
        return self.short or self.name

    @property
    def in_a_sentence(self) -> str:
        return self.noun or self.label

    @property
    def peak_means(self) -> str:
        """What the row's largest value across layers says: "most isotropic", "most anisotropic" or ""."""
        return {HIGH: "most isotropic", LOW: "most anisotropic"}.get(self.isotropic, "")


#: the multi-row views, each an ordered list of row names (one place for "which rows, in which order")
VIEWS: dict[str, tuple[str, ...]] = {
    # the report's per-layer table and its order of the one-metric figures; the papers' headline rows
    "headline": (
        "avg_cosine", "singular_value_skewness", "isoscore", "isoscore_star", "partition_isotropy", "lid_mean",
        "mms_k", "token_uniformity", "effective_rank", "s_intra", "s_inter", "token_mean_cosine",
        "token_mean_distance", "cls_uniformity", "wang_isola_uniformity", "sentence_singular_value_skewness",
        "sentence_top_singular_fraction",
    ),
    # figures/panels.py: geometry_by_layer.png and oversmoothing_by_layer.png
    "geometry_panels": (
        "singular_value_skewness", "token_uniformity", "cls_uniformity", "avg_cosine", "s_intra", "s_inter",
        "isoscore", "partition_isotropy", "lid_mean", "mms_k",
    ),
    "oversmoothing_panels": (
        "token_mean_cosine", "token_mean_distance", "token_uniformity", "cls_uniformity", "layernorm_gamma_rms",
    ),
    # figures/sts.py: isotropy of the transformed sentence embeddings
    "sts_geometry_panels": (
        "singular_value_skewness", "effective_rank", "avg_cosine", "isoscore", "partition_isotropy",
    ),
    # figures/checkpoints.py: metrics by training step
    "checkpoints": (
        "avg_cosine", "isoscore", "singular_value_skewness", "token_uniformity", "partition_isotropy",
        "effective_rank",
    ),
    # tokenuni measure / tokenuni.headline_per_layer: the per-layer table's columns (Row.column)
    "measure_table": (
        "avg_cosine", "isoscore", "singular_value_skewness", "effective_rank", "token_uniformity",
        "partition_isotropy", "lid_mean", "mms_k",
    ),
    # tracking: the last layer's value is a run-level MLflow metric "<name>_last_layer"
    "last_layer_run_metrics": (
        "avg_cosine", "isoscore", "singular_value_skewness", "effective_rank", "token_uniformity",
        "partition_isotropy", "lid_mean",
    ),
    # the report's findings: the layers where these peak and bottom out
    "findings_extremes": ("avg_cosine", "isoscore"),
    # the fine-tuned model's last-layer isotropy beside its dev score (finetune summary and figure)
    "finetune_isotropy": ("isoscore", "avg_cosine"),
    # the STS summary: isotropy of the transformed embeddings beside the mean Spearman
    "sts_isotropy": ("avg_cosine", "isoscore", "partition_isotropy", "singular_value_skewness"),
}


@functools.cache
def catalogue() -> Mapping[str, Row]:
    """Every declared row by name, from the registered metrics (:data:`tokenuni.metrics.METRICS`); built once
    (the registry is fixed at import) and read-only."""
    from tokenuni.metrics import METRICS

    out: dict[str, Row] = {}
    for cls in METRICS.values():
        for declared in cls.rows:
            if declared.name in out:
                raise ValueError(f"row {declared.name!r} is declared twice (metric {cls.name} and another)")
            out[declared.name] = declared
    return MappingProxyType(out)


def row(name: str) -> Row:
    """The declared row ``name``; a row no metric declares (an old table) reads as its own name."""
    found = catalogue().get(name)
    return found if found is not None else Row(name, label=name)


def view(name: str) -> list[Row]:
    """The rows of view ``name`` (:data:`VIEWS`), in order."""
    return [row(n) for n in VIEWS[name]]


def label(name: str) -> str:
    """Human name of a row (the name itself when no metric declares it)."""
    return row(name).label


def metric_of(row_name: str) -> str:
    """The metric (config name) that produces a row, e.g. singular_value_skewness -> spectrum."""
    from tokenuni.metrics import METRICS

    for metric, cls in METRICS.items():
        if row_name in cls.produces:
            return metric
    raise KeyError(f"no metric produces {row_name!r}; known: {sorted(catalogue())}")


def metrics_of_view(name: str) -> set[str]:
    """The metrics (config names) whose rows view ``name`` shows."""
    return {metric_of(n) for n in VIEWS[name]}
