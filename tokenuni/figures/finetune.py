"""GLUE fine-tuning figures from the tidy fine-tuning tables (``results/tables/finetune.parquet``: one row
per (model, task, variant, seed) with the task's main dev metric; ``finetune_geometry.tsv``: the metrics
suite on the fine-tuned model's dev-set hidden states, layer 0 = embedding output).

* :func:`plot_finetune_scores` – dev metric × 100 per variant with the seed spread: one point per seed,
  mean ± standard deviation (ddof = 1) as a bar; one panel per task. Variants are the repairs of the
  seeds: SoftDecay (Yan et al., UAI 2022), I-STAR (Rudman & Eickhoff, ICLR 2024), a cosine regulariser
  and hierarchical layer fusion.
* :func:`plot_isotropy_vs_score` – the isotropy of the fine-tuned last layer (IsoScore, Rudman et al.
  2022; average cosine, Ethayarajh 2019) against the dev score, one point per run, colour per task,
  marker per variant, with the Spearman correlation per task in the legend (does isotropy help?
  Rudman & Eickhoff, ICLR 2024, find that *less* isotropy often helps).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from tokenuni.figures.style import (FigureError, _MARKERS, _check_columns, _figure_legend, _new_panels, _set_title,
                                    _variant_name, model_colours, model_labels, save_figure)

# (metric row, metric variant or None, axis label)
ISOTROPY_AXES: list[tuple[str, str | None, str]] = [
    ("isoscore", None, "IsoScore of the last layer (1 = isotropic)"),
    ("avg_cosine", "uncentred", "average cosine of the last layer (anisotropy)"),
]


def _ordered(values) -> list[str]:
    seen = list(dict.fromkeys(str(v) for v in values))
    return [v for v in seen if v == "baseline"] + [v for v in seen if v != "baseline"]


def _results(results: pd.DataFrame) -> pd.DataFrame:
    _check_columns(results, ["model", "task", "variant", "seed", "main_metric", "main"])
    if results.empty:
        raise FigureError("the fine-tuning table is empty")
    rows = results.copy()
    for column in ("model", "task", "variant"):
        rows[column] = rows[column].astype(str)
    return rows


def plot_finetune_scores(results: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *,
                         title: str | None = None) -> None:
    """Dev metric × 100 per variant, one panel per task: points = seeds, bar = mean ± std over seeds
    (std with ddof = 1, none for a single seed); colour per model. Raises ``ValueError`` on missing columns."""
    rows = _results(results)
    labels = model_labels(rows)
    models = sorted(rows["model"].unique())
    colours = model_colours(models)
    tasks = list(dict.fromkeys(rows["task"]))
    variants = _ordered(rows["variant"])
    fig, axes = _new_panels(len(tasks), ncols=min(len(tasks), 3))
    x = np.arange(len(variants))
    width = 0.8 / len(models)
    rng = np.random.default_rng(0)  # jitter of the seed points: fixed, the figure is reproducible
    for ax, task in zip(axes, tasks):
        per_task = rows[rows["task"] == task]
        for j, model in enumerate(models):
            per = per_task[per_task["model"] == model]
            centre = x - 0.4 + (j + 0.5) * width
            stats = per.groupby("variant")["main"].agg(["mean", "std", "count"]).reindex(variants) * [100, 100, 1]
            ax.bar(centre, stats["mean"].to_numpy(dtype=float), width * 0.9, color=colours[model], alpha=0.35,
                   label=f"{labels.get(model, model)} (mean)")
            ax.errorbar(centre, stats["mean"].to_numpy(dtype=float), yerr=stats["std"].fillna(0).to_numpy(dtype=float),
                        fmt="none", ecolor=colours[model], elinewidth=1.5, capsize=3, label="_")
            for k, variant in enumerate(variants):
                values = per.loc[per["variant"] == variant, "main"].to_numpy(dtype=float) * 100
                jitter = rng.uniform(-0.25, 0.25, values.size) * width
                ax.plot(centre[k] + jitter, values, "o", color=colours[model], markersize=3.5,
                        markeredgecolor="black", markeredgewidth=0.4,
                        label=f"{labels.get(model, model)} (one seed)" if k == 0 else "_")
        metric = ", ".join(sorted(set(per_task["main_metric"].astype(str))))
        seeds = per_task.groupby(["model", "variant"])["seed"].nunique()
        ax.set_title(f"{task} · {metric} · {seeds.min()}–{seeds.max()} seeds" if seeds.min() != seeds.max()
                     else f"{task} · {metric} · {seeds.min()} seed{'s' if seeds.min() > 1 else ''}", fontsize=8)
        ax.set_ylabel(f"dev {metric} × 100", fontsize=8)
        ax.set_xticks(x, variants, fontsize=6.5, rotation=30, ha="right", rotation_mode="anchor")
        ax.grid(False, axis="x")
    _set_title(fig, title if title is not None else
               "GLUE fine-tuning: dev metric per variant (points: seeds; bar and whisker: mean ± std)")
    _figure_legend(fig, axes, max_cols=4)
    save_figure(fig, out_png, out_svg, out_pdf)


def last_layer_isotropy(geometry: pd.DataFrame, metric: str, variant: str | None) -> pd.DataFrame:
    """(model, task, variant, seed, value) of ``metric`` at each model's last layer (largest layer index).

    ``metric_variant`` is the metric's own variant (uncentred / centred); ``variant`` the fine-tuning one.
    """
    _check_columns(geometry, ["model", "task", "variant", "seed", "layer", "metric", "value"])
    rows = geometry[geometry["metric"] == metric].copy()
    if "metric_variant" in rows.columns:
        rows = rows[rows["metric_variant"].map(_variant_name) == (variant or "")]
    if "component" in rows.columns:
        rows = rows[rows["component"].isna()]
    if rows.empty:
        raise FigureError(f"the fine-tuning geometry table holds no {metric!r} rows"
                          f"{f' with metric_variant {variant!r}' if variant else ''}; metrics present: "
                          f"{sorted(map(str, geometry['metric'].unique()))}")
    for column in ("model", "task", "variant"):
        rows[column] = rows[column].astype(str)
    last = rows.groupby("model")["layer"].transform("max")
    rows = rows[rows["layer"] == last]
    return rows.groupby(["model", "task", "variant", "seed"], as_index=False)["value"].mean()


def plot_isotropy_vs_score(results: pd.DataFrame, geometry: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *,
                           title: str | None = None) -> None:
    """Scatter of last-layer isotropy (one panel per :data:`ISOTROPY_AXES` metric) against the dev score × 100.

    One point per (model, task, variant, seed) run; colour per task, marker per variant; the legend gives
    each task's Spearman ρ between isotropy and score (over its runs; '–' when fewer than 3 runs or constant).
    Raises ``ValueError`` when no run of the results table has geometry rows.
    """
    rows = _results(results)
    panels = []
    for metric, variant, axis_label in ISOTROPY_AXES:
        try:
            isotropy = last_layer_isotropy(geometry, metric, variant)
        except ValueError:
            continue
        merged = rows.merge(isotropy, on=["model", "task", "variant", "seed"], how="inner")
        if not merged.empty:
            panels.append((axis_label, merged))
    if not panels:
        raise FigureError("no fine-tuning run has last-layer isotropy (isoscore / avg_cosine) in the geometry "
                          "table; check that both tables come from the same study (model, task, variant, seed)")
    tasks = list(dict.fromkeys(rows["task"]))
    variants = _ordered(rows["variant"])
    cmap = colormaps["tab10"]
    task_colours = {t: cmap(i % 10) for i, t in enumerate(tasks)}
    shapes = _MARKERS + ["*", "<", ">", "h", "p", "d"]
    markers = {v: shapes[i % len(shapes)] for i, v in enumerate(variants)}
    fig, axes = _new_panels(len(panels), ncols=len(panels), figsize=(11.0, 5.5))
    for ax, (axis_label, merged) in zip(axes, panels):
        for task in tasks:
            per = merged[merged["task"] == task]
            if per.empty:
                continue
            rho = per["value"].corr(per["main"], method="spearman") if len(per) >= 3 else float("nan")
            metric = ", ".join(sorted(set(per["main_metric"].astype(str))))
            for variant in variants:
                chosen = per[per["variant"] == variant]
                ax.scatter(chosen["value"], chosen["main"] * 100, color=task_colours[task], marker=markers[variant],
                           s=22, edgecolor="black", linewidth=0.3, label="_")
            ax.scatter([], [], color=task_colours[task], marker="o",
                       label=f"{task} ({metric}; ρ = {rho:.2f})" if np.isfinite(rho) else f"{task} ({metric}; ρ = –)")
        ax.set_xlabel(axis_label, fontsize=8)
        ax.set_ylabel("dev metric × 100 (the task's main metric)", fontsize=8)
        ax.legend(fontsize=6.5, frameon=False, title="task (Spearman ρ)", title_fontsize=6.5)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="none", marker=markers[v], color="grey", markeredgecolor="black",
                      markeredgewidth=0.3, label=f"variant {v}") for v in variants]  # the marker key, once
    fig.legend(handles=handles, loc="outside lower center", fontsize=7, frameon=False, ncols=min(len(handles), 4))
    labels = model_labels(rows)
    models = sorted(rows["model"].unique())
    who = " · ".join(labels.get(m, m) for m in models)
    _set_title(fig, title if title is not None else
               f"{who} · isotropy of the fine-tuned last layer (dev set) vs dev score, one point per run")
    save_figure(fig, out_png, out_svg, out_pdf)
