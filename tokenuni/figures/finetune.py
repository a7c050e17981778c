"""GLUE fine-tuning figures from the tidy fine-tuning tables (``results/tables/finetune.parquet``: one row
per (model, task, variant, seed) with the task's main dev metric; ``finetune_summary.parquet``: per
(model, task, variant) the intervals and verdicts; ``finetune_geometry.tsv``: the metrics suite on the
fine-tuned model's dev-set hidden states, layer 0 = embedding output).

* :func:`plot_finetune_scores` – dev metric × 100 per variant: one point per seed, the mean with its 95 %
  interval, the task's chance level; below, the paired difference to the baseline with its 95 % interval
  coloured by verdict (:mod:`tokenuni.finetune.statistics`). Variants are the repairs of the seeds:
  SoftDecay (Yan et al., UAI 2022), I-STAR (Rudman & Eickhoff, ICLR 2024), a cosine regulariser and
  hierarchical layer fusion.
* :func:`plot_isotropy_vs_score` – the isotropy of the fine-tuned last layer (IsoScore, Rudman et al.
  2022; average cosine, Ethayarajh 2019) against the dev score, one point per run, colour per task,
  marker per variant, with the Spearman correlation per task and pooled, its 95 % interval and a plain
  statement whether the data support a relation (does isotropy help? Rudman & Eickhoff, ICLR 2024, find
  that *less* isotropy often helps).
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from tokenuni.figures.style import (
    _MARKERS,
    FigureError,
    DPI,
    PANEL_FIGSIZE,
    _check_columns,
    _figure_legend,
    _new_panels,
    _set_title,
    model_colours,
    model_labels,
    save_figure,
)
from tokenuni.finetune.statistics import correlation_statement, rank_correlation
from tokenuni.finetune.summary import ISOTROPY
from tokenuni.finetune.summary import last_layer_values as last_layer_isotropy
from tokenuni.metrics.rows import row as catalogue_row


def _last_layer_axis(metric: str) -> str:
    """"IsoScore (1 = isotropic)" -> "IsoScore of the last layer (1 = isotropic)": the row's panel title."""
    name, _, note = catalogue_row(metric).panel_title.partition(" (")
    return f"{name} of the last layer" + (f" ({note}" if note else "")


# (metric row, metric variant or None, axis label): the isotropy columns of the fine-tuning summary
ISOTROPY_AXES: list[tuple[str, str | None, str]] = [(metric, variant or None, _last_layer_axis(metric))
                                                    for _, metric, variant in ISOTROPY]


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


#: verdict → colour of a difference's interval
VERDICT_COLOURS = {"better": "#1a9850", "worse": "#d73027", "no evidence": "#7f7f7f"}
CHANCE_LABELS = {"accuracy": "majority class", "f1": "majority class", "matthews_corrcoef": "MCC 0"}


def plot_finetune_scores(results: pd.DataFrame, summary: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *,
                         title: str | None = None, baseline: str = "baseline") -> None:
    """Per task (columns): the dev score × 100 of each variant (top) and its difference to the baseline
    (bottom), with the 95 % intervals of :mod:`tokenuni.finetune.statistics` as error bars.

    Top: one point per seed, a bar at the mean over seeds and the interval of the mean as whiskers; a
    dashed line at the task's chance level (majority class, MCC 0 or correlation 0). Bottom: the paired
    difference to the baseline on the same seeds with its interval, green when it lies above 0
    ("better"), red below ("worse"), grey when it contains 0 ("no evidence"). Colour per model on top.
    ``summary``: the per-(model, task, variant) table of :func:`tokenuni.finetune.summary.compare_variants`.
    Raises ``ValueError`` on missing columns or an empty table.
    """
    rows = _results(results)
    _check_columns(summary, ["model", "task", "variant", "mean", "low", "high", "chance", "difference",
                             "difference_low", "difference_high", "verdict"])
    summary = summary.copy()
    for column in ("model", "task", "variant"):
        summary[column] = summary[column].astype(str)
    labels = model_labels(rows)
    models = sorted(rows["model"].unique())
    colours = model_colours(models)
    tasks = list(dict.fromkeys(rows["task"]))
    variants = _ordered(rows["variant"])
    others = [v for v in variants if v != baseline]
    fig = Figure(figsize=PANEL_FIGSIZE, dpi=DPI, layout="constrained")
    grid = fig.subplots(2, len(tasks), squeeze=False, height_ratios=[3, 2])
    x = np.arange(len(variants))
    width = 0.8 / len(models)
    rng = np.random.default_rng(0)  # jitter of the seed points: fixed, the figure is reproducible
    for column, task in enumerate(tasks):
        top, bottom = grid[0, column], grid[1, column]
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.grid(False, axis="x")
        per_task = rows[rows["task"] == task]
        stats_task = summary[summary["task"] == task]
        for j, model in enumerate(models):
            per = per_task[per_task["model"] == model]
            stats = stats_task[stats_task["model"] == model].set_index("variant").reindex(variants)
            centre = x - 0.4 + (j + 0.5) * width
            mean = stats["mean"].to_numpy(dtype=float) * 100
            whiskers = np.abs(np.vstack([mean - stats["low"].to_numpy(dtype=float) * 100,
                                         stats["high"].to_numpy(dtype=float) * 100 - mean]))
            name = labels.get(model, model)
            top.bar(centre, mean, width * 0.9, color=colours[model], alpha=0.3, label=f"{name} (mean over seeds)")
            top.errorbar(centre, mean, yerr=np.nan_to_num(whiskers), fmt="none", ecolor=colours[model], elinewidth=1.6,
                         capsize=3, label=f"{name} (95 % interval of the mean)")
            for k, variant in enumerate(variants):
                values = per.loc[per["variant"] == variant, "main"].to_numpy(dtype=float) * 100
                jitter = rng.uniform(-0.25, 0.25, values.size) * width
                top.plot(centre[k] + jitter, values, "o", color=colours[model], markersize=3.2, markeredgecolor="black",
                         markeredgewidth=0.4, label=f"{name} (one seed)" if k == 0 else "_")
            chance = stats["chance"].dropna()
            if len(chance):
                metric = str(stats["metric"].dropna().iloc[0]) if "metric" in stats and stats["metric"].notna().any() else ""
                top.axhline(float(chance.iloc[0]) * 100, color=colours[model] if len(models) > 1 else "black",
                            linestyle="--", linewidth=1.0,
                            label=f"chance ({CHANCE_LABELS.get(metric, 'correlation 0')})" if j == 0 else "_")
            xo = np.arange(len(others)) - 0.4 + (j + 0.5) * width
            diffs = stats.reindex(others)
            for k, variant in enumerate(others):
                row = diffs.loc[variant]
                if not np.isfinite(row["difference"]):
                    continue
                colour = VERDICT_COLOURS.get(row["verdict"], "black")
                bottom.errorbar([xo[k]], [row["difference"] * 100],
                                yerr=[[(row["difference"] - row["difference_low"]) * 100],
                                      [(row["difference_high"] - row["difference"]) * 100]],
                                fmt="D", color=colour, markersize=4, capsize=3, elinewidth=1.6,
                                markeredgecolor=colours[model], label=f"difference: {row['verdict']}")
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.set_xlim(-0.6, max(len(others), 1) - 0.4)
        metric = ", ".join(sorted(set(per_task["main_metric"].astype(str))))
        seeds = per_task.groupby(["model", "variant"])["seed"].nunique()
        n_seeds = f"{seeds.min()}–{seeds.max()}" if seeds.min() != seeds.max() else f"{seeds.min()}"
        top.set_title(f"{task} · {metric} · {n_seeds} seed{'s' if seeds.max() > 1 else ''}", fontsize=8)
        top.set_ylabel(f"dev {metric} × 100", fontsize=8)
        top.set_xticks(x, variants, fontsize=6.5, rotation=30, ha="right", rotation_mode="anchor")
        bottom.set_ylabel(f"difference to {baseline} × 100", fontsize=8)
        bottom.set_xticks(np.arange(len(others)), others, fontsize=6.5, rotation=30, ha="right",
                          rotation_mode="anchor")
    _set_title(fig, title if title is not None else
               "GLUE fine-tuning: dev score per variant (points: seeds; bar: mean; whiskers: 95 % interval) and the "
               "paired difference to the baseline with its 95 % interval")
    _figure_legend(fig, list(grid.ravel()), max_cols=4)
    save_figure(fig, out_png, out_svg, out_pdf)


def plot_isotropy_vs_score(results: pd.DataFrame, geometry: pd.DataFrame, out_png, out_svg=None, out_pdf=None, *,
                           title: str | None = None) -> None:
    """Scatter of last-layer isotropy (one panel per :data:`ISOTROPY_AXES` metric) against the dev score × 100.

    One point per (model, task, variant, seed) run; colour per task, marker per variant; the legend gives
    each task's Spearman ρ between isotropy and score across its runs (within each model) with its 95 %
    interval (:func:`tokenuni.finetune.statistics.rank_correlation`; '–' with too few runs), and each panel
    states, per task and pooled over tasks, whether the data support a relation.
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
        statements = []
        for task in tasks:
            per = merged[merged["task"] == task]
            if per.empty:
                continue
            result = rank_correlation(per["value"], per["main"], per["model"].to_numpy())
            statements.append(correlation_statement(result, task))
            metric = ", ".join(sorted(set(per["main_metric"].astype(str))))
            for variant in variants:
                chosen = per[per["variant"] == variant]
                ax.scatter(chosen["value"], chosen["main"] * 100, color=task_colours[task], marker=markers[variant],
                           s=22, edgecolor="black", linewidth=0.3, label="_")
            rho = (f"ρ = {result['rho']:+.2f} [{result['low']:+.2f}, {result['high']:+.2f}]"
                   if np.isfinite(result["rho"]) else "ρ = –")
            ax.scatter([], [], color=task_colours[task], marker="o", label=f"{task} ({metric}; {rho})")
        if merged["task"].nunique() > 1:
            strata = (merged["model"].astype(str) + "/" + merged["task"].astype(str)).to_numpy()
            statements.append(correlation_statement(rank_correlation(merged["value"], merged["main"], strata),
                                                    "pooled over tasks"))
        ax.set_xlabel(axis_label, fontsize=8)
        ax.set_ylabel("dev metric × 100 (the task's main metric)", fontsize=8)
        ax.legend(fontsize=6.5, frameon=True, framealpha=0.85, title="task (Spearman ρ, 95 % interval)",
                  title_fontsize=6.5, loc="best")
        ax.set_title("\n".join(textwrap.fill(text, 75) for text in statements), fontsize=6.5, loc="left")
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
