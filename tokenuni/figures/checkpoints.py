"""Geometry against training step, for models listed at several checkpoints (``checkpoints:`` in the config:
each becomes the model ``<key>@step<step>`` and the metrics table carries its ``training_step``).

:func:`plot_metrics_by_step` – one panel per metric, x = training step, one line per layer group
(embedding output = layer 0, lower / middle / upper thirds of the blocks averaged, last block L), so
the emergence of anisotropy and token uniformity during pre-training is visible (cf. Ethayarajh 2019;
Godey, de la Clergerie, Sagot, "Anisotropy Is Inherent to Self-Attention in Transformers", EACL 2024,
who follow it over Pythia checkpoints).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from tokenuni.figures.layers import scalar_rows
from tokenuni.figures.style import (FigureError, _LINESTYLES, _check_columns, _figure_legend, _new_panels, _set_title,
                                    metric_label, model_labels, panels_of, save_figure)

# (metric row, variant or None), from the row catalogue
CHECKPOINT_METRICS = [(metric, variant) for metric, variant, _ in panels_of("checkpoints")]


def base_model(model: str) -> str:
    """``bert@step1000`` -> ``bert`` (the key the checkpoints were listed under)."""
    return str(model).split("@step", 1)[0]


def _step_label(step: int) -> str:
    return f"{step / 1000:g}k" if step >= 1000 and step % 100 == 0 else str(step)


def layer_groups(n_layers: int) -> dict[str, list[int]]:
    """Layer groups of a model whose last layer index is ``n_layers`` (layer 0 = embedding output):
    ``embeddings (0)``, the blocks 1..L−1 split in lower / middle / upper thirds, ``last (L)``."""
    groups = {"embeddings (0)": [0]}
    inner = [list(part) for part in np.array_split(np.arange(1, n_layers), 3) if len(part)] if n_layers > 1 else []
    names = ["lower", "middle", "upper"] if len(inner) == 3 else ["lower", "upper"][: len(inner)] if len(inner) == 2 \
        else ["inner"][: len(inner)]
    for name, part in zip(names, inner):
        span = f"{part[0]}" if len(part) == 1 else f"{part[0]}–{part[-1]}"
        groups[f"{name} ({span})"] = [int(v) for v in part]
    if n_layers > 0:
        groups[f"last ({n_layers})"] = [n_layers]
    return groups


def plot_metrics_by_step(table: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *, metrics=None,
                         corpora=None, title: str | None = None) -> None:
    """One panel per metric against ``training_step``: one line per layer group (colour, shallow -> deep),
    line style per (base model, corpus). Metrics the table lacks are left out.

    Raises ``ValueError`` when the table has no ``training_step`` values (no model listed with
    ``checkpoints:``), fewer than two steps, or none of the metrics.
    """
    _check_columns(table, ["model", "corpus", "layer", "metric", "value"])
    if "training_step" not in table.columns or table["training_step"].notna().sum() == 0:
        raise FigureError("the metrics table has no training_step values: list a model at several checkpoints "
                          "(models.<key>.checkpoints: [{step: ..., revision: ...}, ...]) to draw metrics by step")
    stepped = table[table["training_step"].notna()]
    if corpora is not None:
        corpora = [corpora] if isinstance(corpora, str) else list(corpora)
        stepped = stepped[stepped["corpus"].astype(str).isin(corpora)]
    steps = sorted({int(v) for v in stepped["training_step"]})
    if len(steps) < 2:
        raise FigureError(f"metrics by training step need at least two checkpoints; the table holds step(s) {steps}")
    panels = []
    for metric, variant in metrics or CHECKPOINT_METRICS:
        if metric not in set(stepped["metric"]):
            continue
        rows = scalar_rows(stepped, metric)
        if variant is not None:
            rows = rows[rows["variant"] == variant]
        if not rows.empty:
            panels.append((metric, variant, rows))
    if not panels:
        raise FigureError(f"none of {[m for m, _ in (metrics or CHECKPOINT_METRICS)]} has rows with a training_step; "
                          f"metrics present: {sorted(map(str, stepped['metric'].unique()))}")

    labels = model_labels(table)
    fig, axes = _new_panels(len(panels))
    cmap = colormaps["viridis"]
    series_keys = sorted({(base_model(m), str(c)) for _, _, rows in panels for m, c in zip(rows["model"], rows["corpus"])})
    styles = {key: _LINESTYLES[i % len(_LINESTYLES)] for i, key in enumerate(series_keys)}
    show_series = len(series_keys) > 1
    for ax, (metric, variant, rows) in zip(axes, panels):
        rows = rows.assign(base=rows["model"].map(base_model), training_step=rows["training_step"].astype(int))
        for (base, corpus), series in rows.groupby(["base", "corpus"], sort=True):
            groups = layer_groups(int(series["layer"].max()))
            for g, (group, layers) in enumerate(groups.items()):
                values = series[series["layer"].isin(layers)].groupby("training_step")["value"].mean().sort_index()
                if values.empty:
                    continue
                colour = cmap(g / max(1, len(groups) - 1) * 0.9)
                name = f"layers {group}"
                if show_series:
                    first = next(m for m in series["model"] if base_model(m) == base)
                    name = f"{labels.get(first, base).split('@')[0]} · {corpus} · {name}"
                ax.plot(values.index.to_numpy(), values.to_numpy(), color=colour, linestyle=styles[(base, corpus)],
                        marker="o", markersize=3.5, linewidth=1.5, label=name)
        positive = [s for s in steps if s > 0]
        if positive and positive[-1] / positive[0] > 100:  # checkpoints spread over decades (0, 1k, ..., 143k)
            ax.set_xscale("symlog", linthresh=positive[0])
        if len(steps) <= 8:
            ax.set_xticks(steps, [_step_label(s) for s in steps])
            ax.minorticks_off()
        ax.set_title(metric_label(metric) + (f" [{variant}]" if variant else ""), fontsize=8)
        ax.set_xlabel("training step", fontsize=8)
        ax.grid(True, alpha=0.3)
    _set_title(fig, title if title is not None else
               "Geometry by training step, one line per layer group (layer 0 = embedding output)")
    _figure_legend(fig, axes, title="layer group", max_cols=5)
    save_figure(fig, out_png, out_svg, out_pdf)
