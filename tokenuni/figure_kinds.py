"""The registry of figure kinds: what ``tokenuni figure <kind>`` draws, from which table, with which options.

It drives both the command line's choices and help and the dispatch (:func:`draw`), so a new figure is its
plotting function in :mod:`tokenuni.figures` plus one entry here (and its rule). This module imports no
plotting library: the command line builds its parser from it without loading matplotlib.
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenuni.errors import TokenuniError


@dataclass(frozen=True)
class FigureKind:
    """``function(table, *[options[n] for n in before], png, svg, pdf, **{k: options[k] for k in keywords})``
    of :mod:`tokenuni.figures`; ``reads``: the tidy table it draws from; ``before`` may name extra tables
    (:data:`EXTRA_TABLES`), which the command line reads and must be given."""

    function: str
    reads: str
    before: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(name for name in self.before if name in EXTRA_TABLES)


#: extra tables a figure kind may need: option name -> what it is
EXTRA_TABLES = {"summary": "the fine-tuning summary table with intervals",
                "geometry": "the fine-tuning geometry table"}

#: every figure kind by its command-line name, in the order of the help
FIGURE_KINDS: dict[str, FigureKind] = {
    "singular-value-cdf": FigureKind("plot_singular_value_cdf", "metrics table", keywords=("variant",)),
    "by-layer": FigureKind("plot_metric_by_layer", "metrics table", before=("metric",)),
    "geometry-panels": FigureKind("plot_geometry_panels", "metrics table"),
    "oversmoothing": FigureKind("plot_oversmoothing", "metrics table"),
    "checkpoints": FigureKind("plot_metrics_by_step", "metrics table"),
    "sts-scores": FigureKind("plot_sts_scores", "STS scores", keywords=("pooling",)),
    "sts-table": FigureKind("plot_sts_table", "STS scores", keywords=("model",)),
    "sts-geometry": FigureKind("plot_sts_geometry", "STS geometry", keywords=("pooling",)),
    "finetune-scores": FigureKind("plot_finetune_scores", "fine-tuning results", before=("summary",)),
    "finetune-isotropy": FigureKind("plot_isotropy_vs_score", "fine-tuning results", before=("geometry",)),
}


def draw(kind: str, table, out: tuple, options: dict) -> None:
    """Draw figure ``kind`` from ``table`` to ``out`` = (png, svg, pdf) with ``options`` (metric, variant,
    pooling, model, and the extra tables it needs as data frames)."""
    from tokenuni import figures

    spec = FIGURE_KINDS[kind]
    missing = [name for name in spec.needs if options.get(name) is None]
    if missing:
        raise TokenuniError(f"figure {kind} needs --{missing[0]} ({EXTRA_TABLES[missing[0]]})")
    function = getattr(figures, spec.function)
    function(table, *[options[name] for name in spec.before], *out, **{name: options[name] for name in spec.keywords})
