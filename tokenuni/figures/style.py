"""Shared figure style: sizes, labels, colours per model, headless figure creation, atomic saving.

Sizes: single-axis figures are :data:`FIGSIZE` inches, multi-panel grids :data:`PANEL_FIGSIZE`, the STS
heat-map table :data:`TABLE_FIGSIZE`; every PNG is that size times :data:`DPI` pixels exactly. PNG is for
the Snakemake report, SVG and PDF for papers (``save_figure``).

Layer convention everywhere: layer 0 = embedding output (``hidden_states[0]``), layer L = output of
transformer block L; every figure states it in an axis label or legend title.

Headless: figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no GUI backend) and
rendered by the Agg / SVG canvases, so nothing depends on a display or on the global backend.
"""
from __future__ import annotations

import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure

from tokenuni.errors import TokenuniError
from tokenuni.metrics.rows import label, view


class FigureError(TokenuniError, ValueError):
    """A figure asked of a table that cannot give it (rows, metrics, models or layers it lacks)."""

FIGSIZE = (7.0, 4.5)
PANEL_FIGSIZE = (13.0, 7.5)  # grids of panels (one metric or task per panel)
TABLE_FIGSIZE = (9.0, 10.0)  # heat-map tables (rows: pooling x transform)
DPI = 150
LAYER_AXIS_LABEL = "layer (0 = embedding output)"


_LINESTYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
_TAB10 = colormaps["tab10"]


# --------------------------------------------------------------------------------------------- helpers
def metric_label(metric: str) -> str:
    """Human name for a metric row name (its :class:`~tokenuni.metrics.rows.Row` label; the name itself when
    no metric declares it)."""
    return label(metric)


def panels_of(view_name: str) -> list[tuple[str, str | None, str]]:
    """(metric row, variant — None when the row has none, "*" for every variant — , panel title) of each row
    of a view of the row catalogue (:data:`tokenuni.metrics.rows.VIEWS`), in order."""
    return [(r.name, r.headline_variant or None, r.panel_title) for r in view(view_name)]


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


def _new_panels(n_panels: int, ncols: int | None = None, figsize=PANEL_FIGSIZE) -> tuple[Figure, list]:
    """A figure with ``n_panels`` axes on a grid (unused grid cells removed), gridlines on, small fonts."""
    if n_panels < 1:
        raise FigureError("a panel figure needs at least one panel")
    ncols = ncols or (1 if n_panels == 1 else 2 if n_panels <= 4 else 3 if n_panels <= 6 else 4 if n_panels <= 8 else 5)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.ravel())
    for ax in axes[n_panels:]:
        fig.delaxes(ax)
    for ax in axes[:n_panels]:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    return fig, axes[:n_panels]


def _set_layer_axis(ax, layers, label: bool = True) -> None:
    """Integer layer ticks (every layer up to 30 layers) and, when asked, the layer-convention label."""
    from matplotlib.ticker import MaxNLocator

    layers = sorted({int(v) for v in layers})
    if 0 < len(layers) <= 30:
        step = 1 if len(layers) <= 15 else 2
        ax.set_xticks(layers[::step])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if label:
        ax.set_xlabel(LAYER_AXIS_LABEL, fontsize=8)


def _figure_legend(fig: Figure, axes, *, title: str | None = None, max_cols: int = 4) -> None:
    """One legend below the panels with every distinct label of ``axes`` (first handle per label)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            if not text.startswith("_"):
                handles.setdefault(text, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=7, frameon=False,
                   handlelength=3.0, title=title, title_fontsize=7, ncols=min(len(handles), max_cols))


def _set_title(fig: Figure, title: str) -> None:
    """Figure-level title (constrained layout keeps it and outside legends apart); long titles wrap."""
    fig.suptitle("\n".join(textwrap.wrap(title, 90)) if title else title, fontsize=10)


def _check_columns(table: pd.DataFrame, needed) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise FigureError(f"metrics table lacks column(s) {missing}; columns present: {list(table.columns)}")


def _variant_name(variant) -> str:
    return "" if variant is None or (isinstance(variant, float) and np.isnan(variant)) else str(variant)


# ----------------------------------------------------------------------------------------------- saving
def save_figure(fig, out_png, out_svg=None, out_pdf=None) -> None:
    """Write ``fig`` as PNG (150 dpi; for the report) and, when asked, SVG and PDF (for papers); each
    atomically; then close the figure.

    Every file goes to a temporary name in its destination folder and is moved into place with
    ``os.replace`` (:func:`tokenuni.files.atomic_path`), so a reader (or Snakemake) never sees a
    half-written figure. The PNG is exactly the figure size times the dpi (no ``bbox_inches="tight"``).
    """
    from tokenuni.files import atomic_path

    try:
        targets = [(Path(out_png), "png")]
        if out_svg is not None:
            targets.append((Path(out_svg), "svg"))
        if out_pdf is not None:
            targets.append((Path(out_pdf), "pdf"))
        for path, fmt in targets:
            # No date in the metadata and fixed SVG ids: the same table gives byte-identical files.
            metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}.get(fmt)
            with atomic_path(path) as tmp, rc_context({"svg.hashsalt": "tokenuni"}):
                fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    finally:
        if "matplotlib.pyplot" in sys.modules:  # a pyplot-managed figure: release it from the figure manager
            import matplotlib.pyplot as plt

            plt.close(fig)


