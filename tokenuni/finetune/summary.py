"""The fine-tuning study's tables: every run, every variant against the baseline and against chance with
95 % intervals (:mod:`tokenuni.finetune.statistics`), isotropy against the score, and where a job's time
goes — as data frames and as the Markdown that the HTML report shows.

Inputs are the jobs' outputs: ``summary.json`` (metrics, timings, chance predictor), ``predictions.parquet``
(per-example dev outputs, paired across variants by seed and dev example) and ``geometry.parquet``
(the metrics suite on the fine-tuned model's dev-set hidden states).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError
from tokenuni.finetune import statistics as st
from tokenuni.finetune.job import PredictionsError, read_predictions
from tokenuni.metrics.rows import view

log = logging.getLogger(__name__)


class SummaryError(TokenuniError, ValueError):
    """A fine-tuning table lacks what the summary needs (columns, metric rows)."""

BASELINE = "baseline"
KEYS = ["model", "task", "variant"]
#: (label, metric, metric variant) of the last layer's isotropy shown beside the scores (the row catalogue's view)
ISOTROPY = [(f"{r.name.replace('_', ' ')} (last layer)", r.name, r.headline_variant) for r in view("finetune_isotropy")]
#: the stages of a job (:func:`tokenuni.finetune.job.run_finetune` and the CLI), in order
STAGES = ["startup", "imports", "data", "model_load", "tokenise", "train", "epoch_hook", "evaluate", "geometry",
          "write"]


def read_summaries(paths) -> pd.DataFrame:
    """One row per run from the jobs' ``summary.json``: keys, main metric, dev metrics, steps, time per stage."""
    rows = []
    for path in paths:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
        rows.append({"model": summary["model"], "task": summary["task"], "variant": summary["variant"],
                     "seed": summary["seed"], "main_metric": summary["main_metric"], "main": summary["main"],
                     **{f"dev_{k}": v for k, v in summary["dev"].items()},
                     "steps": summary["steps"], "train_examples": summary.get("train_examples"),
                     "dev_examples": summary.get("dev_examples"), "seconds": summary["seconds"],
                     "device": summary["device"], "dev_digest": summary.get("dev_digest"),
                     "train_majority_class": summary.get("train_majority_class"),
                     **{f"seconds_{k}": v for k, v in (summary.get("timings") or {}).items()},
                     **{f"cpu_seconds_{k}": v for k, v in (summary.get("timings_cpu") or {}).items()}})
    return pd.DataFrame(rows)


def last_layer_values(geometry: pd.DataFrame, metric: str, metric_variant: str | None) -> pd.DataFrame:
    """(model, task, variant, seed, value) of ``metric`` at each model's last layer (largest layer index).

    ``metric_variant`` is the metric's own variant (uncentred / centred; None or "" for none); ``variant``
    in the result is the fine-tuning one. Raises ``ValueError`` when the table holds no such rows.
    """
    needed = ["model", "task", "variant", "seed", "layer", "metric", "value"]
    missing = [c for c in needed if c not in geometry.columns]
    if missing:
        raise SummaryError(f"the fine-tuning geometry table lacks column(s) {missing}")
    rows = geometry[geometry["metric"] == metric].copy()
    if "metric_variant" in rows.columns:
        rows = rows[rows["metric_variant"].map(lambda v: "" if v is None or v != v else str(v)) == (metric_variant or "")]
    if "component" in rows.columns:
        rows = rows[rows["component"].isna()]
    if rows.empty:
        raise SummaryError(f"the fine-tuning geometry table holds no {metric!r} rows"
                         f"{f' with metric_variant {metric_variant!r}' if metric_variant else ''}; metrics present: "
                         f"{sorted(map(str, geometry['metric'].unique()))}")
    for column in ("model", "task", "variant"):
        rows[column] = rows[column].astype(str)
    rows = rows[rows["layer"] == rows.groupby("model")["layer"].transform("max")]
    return rows.groupby(["model", "task", "variant", "seed"], as_index=False)["value"].mean()


def last_layer_isotropy(geometry: pd.DataFrame | None) -> pd.DataFrame:
    """(model, task, variant, seed) → one column per :data:`ISOTROPY` label (:func:`last_layer_values`)."""
    keys = [*KEYS, "seed"]
    out = pd.DataFrame(columns=keys)
    if geometry is None or geometry.empty:
        return out
    for label, metric, variant in ISOTROPY:
        try:
            values = last_layer_values(geometry, metric, variant).rename(columns={"value": label})
        except ValueError:
            continue
        out = values if out.empty else out.merge(values, on=keys, how="outer")
    return out


def _paired(predictions: dict, model: str, task: str) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]], dict]:
    """Labels, {variant: {seed: predictions}} and the shared metadata of one (model, task); checks that
    every run scored the same dev examples (digest and labels)."""
    labels, meta, arms = None, None, {}
    for (m, t, variant, seed), (frame, info) in sorted(predictions.items(), key=lambda kv: kv[0][2:]):
        if (m, t) != (model, task):
            continue
        frame = frame.sort_values("example")
        if labels is None:
            labels, meta = frame["label"].to_numpy(), info
        elif info.get("dev_digest") != meta.get("dev_digest") or not np.array_equal(frame["label"].to_numpy(), labels):
            raise PredictionsError(
                f"{model}/{task}: run {variant}/seed {seed} scored other dev examples (digest {info.get('dev_digest')}) "
                f"than {meta['variant']}/seed {meta['seed']} ({meta.get('dev_digest')}); rerun the study's fine-tuning "
                "jobs with one finetune config")
        arms.setdefault(variant, {})[int(seed)] = frame["prediction"].to_numpy()
    return labels, arms, meta


def compare_variants(results: pd.DataFrame, predictions: dict, baseline: str = BASELINE, n_boot: int = st.N_BOOT,
                     seed: int = 0, level: float = st.LEVEL) -> pd.DataFrame:
    """Per (model, task, variant): mean ± sd over seeds with its interval, the paired difference to the
    baseline on the same seeds with its interval and verdict, and the difference to chance likewise.

    ``predictions``: {(model, task, variant, seed): (frame, metadata)} from :func:`read_predictions`.
    All arms of one (model, task) share one set of ``n_boot`` resamples of the dev examples (seeded).
    """
    rows = []
    for (model, task), group in results.groupby(["model", "task"], sort=False):
        labels, arms, meta = _paired(predictions, model, task)
        if labels is None:
            raise PredictionsError(f"{model}/{task}: no predictions file among the inputs")
        metric = meta["main_metric"]
        bootstrap = st.PairedBootstrap(metric, labels, n_boot, seed)
        chance_full, chance_boot = bootstrap.chance_values(meta.get("train_majority_class"), 1)
        chance = float(chance_full[0])
        base_seeds = sorted(arms.get(baseline, {}))
        values = {variant: bootstrap.values(np.stack([runs[s] for s in sorted(runs)])) for variant, runs in arms.items()}
        for variant in dict.fromkeys(group["variant"]):
            runs = arms.get(variant)
            if not runs:
                raise PredictionsError(f"{model}/{task}/{variant}: no predictions file among the inputs")
            seeds = sorted(runs)
            full, boot = values[variant]
            own = st.seed_example_interval(full, boot, level, st.METRIC_RANGES.get(metric))
            over = st.seed_example_interval(full - chance, boot - chance_boot, level)
            row = {"model": model, "task": task, "variant": variant, "metric": metric, "seeds": len(seeds),
                   "mean": own.estimate, "sd": own.sd_seeds, "low": own.low, "high": own.high, "chance": chance,
                   "over_chance": over.estimate, "over_chance_low": over.low, "over_chance_high": over.high,
                   "chance_verdict": {"better": "above chance", "worse": "below chance"}.get(
                       st.verdict(over.low, over.high), "no evidence"),
                   "difference": math.nan, "difference_low": math.nan, "difference_high": math.nan,
                   "difference_seeds": 0, "verdict": ""}
            common = sorted(set(seeds) & set(base_seeds))
            if variant != baseline and common:
                pick = [seeds.index(s) for s in common]
                base_pick = [base_seeds.index(s) for s in common]
                base_full, base_boot = values[baseline]
                difference = st.seed_example_interval(full[pick] - base_full[base_pick],
                                                      boot[:, pick] - base_boot[:, base_pick], level)
                row.update(difference=difference.estimate, difference_low=difference.low,
                           difference_high=difference.high, difference_seeds=len(common),
                           verdict=st.verdict(difference.low, difference.high))
            elif variant != baseline:
                row["verdict"] = "no paired baseline"
            rows.append(row)
    return pd.DataFrame(rows)


def isotropy_correlations(results: pd.DataFrame, geometry: pd.DataFrame | None, level: float = st.LEVEL) -> pd.DataFrame:
    """Spearman ρ across runs between each :data:`ISOTROPY` value and the dev score, per task (models as
    strata) and pooled over tasks ((model, task) strata), with interval, verdict and a plain statement."""
    runs = results.merge(last_layer_isotropy(geometry), on=[*KEYS, "seed"], how="inner")
    rows = []
    for label, _, _ in ISOTROPY:
        if label not in runs:
            continue
        scopes = [(task, runs[runs["task"] == task]) for task in dict.fromkeys(runs["task"])]
        if len(scopes) > 1:
            scopes.append(("pooled", runs))
        for scope, chosen in scopes:
            strata = chosen["model"].astype(str) + "/" + chosen["task"].astype(str)
            result = st.rank_correlation(chosen[label].to_numpy(), chosen["main"].to_numpy(), strata.to_numpy(), level)
            what = f"{label.replace(' (last layer)', '')} vs score, {scope}"
            rows.append({"scope": scope, "isotropy": label, **result,
                         "statement": st.correlation_statement(result, what)})
    return pd.DataFrame(rows)


def time_split(results: pd.DataFrame) -> pd.DataFrame:
    """Seconds per job stage (:data:`STAGES`): median and mean over runs of the wall clock and of the
    process's CPU time, and each stage's share of the mean total (the stages a job measured; Snakemake's
    own scheduling is not in it). The CPU time is the figure to compare on a busy machine: with one
    thread per job it is close to the wall time of an idle one."""
    stages = [s for s in STAGES if f"seconds_{s}" in results]
    if not stages:
        return pd.DataFrame(columns=["stage", "median_s", "mean_s", "share", "median_cpu_s", "mean_cpu_s", "cpu_share"])
    walls = results[[f"seconds_{s}" for s in stages]].astype(float)
    out = pd.DataFrame({"stage": stages, "median_s": walls.median().to_numpy(), "mean_s": walls.mean().to_numpy()})
    out["share"] = out["mean_s"] / out["mean_s"].sum()
    cpu_columns = [f"cpu_seconds_{s}" for s in stages]
    if all(c in results for c in cpu_columns):
        cpus = results[cpu_columns].astype(float)
        out["median_cpu_s"], out["mean_cpu_s"] = cpus.median().to_numpy(), cpus.mean().to_numpy()
        out["cpu_share"] = out["mean_cpu_s"] / out["mean_cpu_s"].sum()
    return out


def _pct(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _interval(low: float, high: float, signed: bool = False) -> str:
    return f"[{_pct(low, signed)}, {_pct(high, signed)}]"


def difference_text(difference: float, low: float, high: float) -> str:
    """A variant's difference to the baseline × 100 with its interval, as the summary's tables write it
    (``+1.4 [+0.7, +2.0]``); the HTML report's findings quote it."""
    return f"{_pct(difference, True)} {_interval(low, high, True)}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(comparisons: pd.DataFrame, isotropy: pd.DataFrame, timings: pd.DataFrame, results: pd.DataFrame,
                     *, n_boot: int, level: float = st.LEVEL, baseline: str = BASELINE) -> str:
    """The study's fine-tuning section: baseline vs chance, variants vs baseline, isotropy vs score, time split."""
    out = ["# GLUE fine-tuning", ""]
    seeds = sorted(set(results["seed"]))
    sizes = results.groupby("task")[["train_examples", "dev_examples"]].first() if "train_examples" in results else None
    out.append(f"{len(results)} runs; seeds {', '.join(map(str, seeds))}. Dev metric × 100: mean over seeds, its "
               f"{level:.0%} interval and, for a variant, the paired difference to the {baseline} on the same seeds "
               f"and dev examples (interval from {n_boot} paired bootstrap resamples of the dev examples combined "
               "with the between-seed variance, t with Welch–Satterthwaite degrees of freedom; "
               "`tokenuni.finetune.statistics`). Verdict: *better* / *worse* when the interval excludes 0, "
               "*no evidence* when it contains 0.")
    if sizes is not None:
        out.append("")
        out.append("Examples per task (train / dev): " + "; ".join(
            f"{task} {int(r.train_examples)} / {int(r.dev_examples)}" for task, r in sizes.iterrows()) + ".")
    out += ["", "## The baseline against chance", ""]
    base = comparisons[comparisons["variant"] == baseline]
    chance_name = {"accuracy": "majority class", "f1": "majority class", "matthews_corrcoef": "MCC 0"}
    rows = [[r.model, r.task, r.metric, r.seeds, f"{_pct(r.mean)} {_interval(r.low, r.high)}",
             f"{_pct(r.chance)} ({chance_name.get(r.metric, 'correlation 0')})",
             f"{_pct(r.over_chance, True)} {_interval(r.over_chance_low, r.over_chance_high, True)}", r.chance_verdict]
            for r in base.itertuples()]
    out.append(_md_table(["model", "task", "metric", "seeds", f"{baseline} × 100 [{level:.0%} CI]", "chance × 100",
                          "over chance [CI]", "verdict"], rows) if rows else f"No `{baseline}` variant in the study.")
    out += ["", f"## Variants against the {baseline}", ""]
    labels = [label for label, _, _ in ISOTROPY if label in comparisons]
    rows = []
    for r in comparisons.to_dict("records"):
        difference = "" if r["variant"] == baseline else (
            difference_text(r["difference"], r["difference_low"], r["difference_high"]))
        sd = "" if math.isnan(r["sd"]) else f" ± {_pct(r['sd'])}"
        rows.append([r["model"], r["task"], r["variant"], f"{_pct(r['mean'])}{sd}", _interval(r["low"], r["high"]),
                     difference, r["verdict"] or "", *["" if pd.isna(r[label]) else f"{r[label]:.4f}" for label in labels]])
    out.append(_md_table(["model", "task", "variant", "mean ± sd", f"{level:.0%} CI", f"difference to {baseline} [CI]",
                          "verdict", *labels], rows))
    compared = comparisons[comparisons["variant"] != baseline]
    if len(compared):
        counts = compared["verdict"].value_counts()
        out.append("")
        out.append(f"{len(compared)} comparisons: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in st.VERDICTS)
                   + f". Without a correction for multiple comparisons about {len(compared) * (1 - level):.1f} of "
                   "them would exclude 0 by chance alone if no variant changed anything.")
    out += ["", "## Isotropy of the last layer against the score", ""]
    if isotropy is not None and len(isotropy):
        out += [f"- {s}" for s in isotropy["statement"]]
        out.append("")
        out.append("Spearman ρ across runs (variants × seeds), within each model and task (pooled: within-stratum "
                   "ranks), Fisher-z interval with the Bonett–Wright variance.")
    else:
        out.append("No geometry rows: no correlation.")
    out += ["", "## Where a job's time goes", ""]
    if len(timings):
        cpu = "mean_cpu_s" in timings
        rows = [[r["stage"], f"{r['median_s']:.1f}", f"{r['mean_s']:.1f}", f"{100 * r['share']:.0f} %",
                 *([f"{r['mean_cpu_s']:.1f}", f"{100 * r['cpu_share']:.0f} %"] if cpu else [])]
                for r in timings.to_dict("records")]
        out.append(_md_table(["stage", "median s", "mean s", "share", *(["mean CPU s", "CPU share"] if cpu else [])],
                             rows))
        out.append("")
        total = f"Mean job: {timings['mean_s'].sum():.0f} s wall"
        if cpu:
            total += f", {timings['mean_cpu_s'].sum():.0f} s CPU"
        out.append(total + f" over the stages above, {len(results)} jobs (startup: interpreter and CLI import; write: "
                   "the job's outputs). CPU time is the process's, all threads: with one thread per job it is close to "
                   "the wall time of an idle machine.")
    return "\n".join(out) + "\n"


def study_tables(summaries, predictions, geometry=None, *, baseline: str = BASELINE, n_boot: int = st.N_BOOT,
                 seed: int = 0, level: float = st.LEVEL) -> dict:
    """Everything the ``finetune-table`` stage writes, from the jobs' output paths.

    Returns {"results": per run, "summary": per (model, task, variant) with intervals and last-layer
    isotropy, "isotropy": correlations, "timings": time split, "geometry": merged geometry, "markdown": text}.
    """
    results = read_summaries(summaries)
    loaded = {}
    for path in predictions:
        frame, meta = read_predictions(path)
        key = (meta["model"], meta["task"], meta["variant"], int(meta["seed"]))
        if key in loaded:
            raise PredictionsError(f"{path}: a second predictions file for {key}")
        loaded[key] = (frame, meta)
    missing = {tuple(k) for k in results[[*KEYS, "seed"]].itertuples(index=False)} - set(loaded)
    if missing:
        raise PredictionsError(f"runs without a predictions file: {sorted(missing)[:5]}")
    merged = pd.concat([pd.read_parquet(p) for p in geometry], ignore_index=True) if geometry else None
    comparisons = compare_variants(results, loaded, baseline, n_boot, seed, level)
    isotropy = last_layer_isotropy(merged)
    if len(isotropy):
        means = isotropy.groupby(KEYS, as_index=False).mean(numeric_only=True).drop(columns="seed")
        comparisons = comparisons.merge(means, on=KEYS, how="left")
    correlations = isotropy_correlations(results, merged, level)
    timings = time_split(results)
    text = summary_markdown(comparisons, correlations, timings, results, n_boot=n_boot, level=level, baseline=baseline)
    return {"results": results, "summary": comparisons, "isotropy": correlations, "timings": timings,
            "geometry": merged, "markdown": text}
