"""What the MLflow UI opens on: run-level headline metrics with stable names, the stage tag, the experiment's
tags and the shared view of its runs table."""
from __future__ import annotations

import functools
import json




@functools.cache
def headline_last_layer() -> dict[str, str]:
    """Per-layer keys (logged with step = layer, ``<row>[.<variant>]``) whose last layer is a headline run metric
    ``<row>_last_layer``: the row catalogue's view ``last_layer_run_metrics`` in each row's headline variant.
    (Read on first use: the catalogue imports the metrics package, which a job that logs no rows never needs.)"""
    from tokenuni.metrics.rows import view

    return {(f"{r.name}.{r.headline_variant}" if r.headline_variant else r.name): f"{r.name}_last_layer"
            for r in view("last_layer_run_metrics")}


def is_headline(key: str) -> bool:
    """Whether a run-level metric name is a headline one (the run then carries ``tokenuni.headline = true``)."""
    return key in ("sts_spearman", "dev_main") or key in headline_last_layer().values()


#: the run-level headline metrics the study's shared runs view shows as columns, in this order
HEADLINE_COLUMNS = ["avg_cosine_last_layer", "isoscore_last_layer", "singular_value_skewness_last_layer",
                    "token_uniformity_last_layer", "sts_spearman", "dev_main"]


#: rule -> stage (the ``tokenuni.stage`` tag); figure rules are "figures", any other rule is its own stage
STAGES = {"corpus": "data", "embed": "geometry", "embed_without_dump": "geometry", "stats": "geometry",
          "metric": "geometry", "metrics_table": "geometry",
          "projection": "geometry", "measure": "geometry", "sentence_embed": "sts", "sts": "sts", "sts_table": "sts",
          "finetune": "finetune", "finetune_table": "finetune"}


#: the key of the shared runs-table view in the experiment's tags (``mlflow.sharedViewState.<key>``)
RUNS_VIEW_KEY = "tokenuni"


def stage_of(rule: str) -> str:
    """The study stage a rule belongs to (data, geometry, sts, finetune, figures), for the UI's "Group by"."""
    if rule in STAGES:
        return STAGES[rule]
    return "figures" if rule.startswith(("figure", "projection_figure")) else rule


def headline_metrics(rule: str, wildcards: dict, metrics: list[dict]) -> dict[str, float]:
    """The run-level headline metrics a job's logged ``metrics`` (record entries) imply, under stable names.

    * ``<row>_last_layer`` (:func:`headline_last_layer`): the value at the largest step of a per-layer key,
      also under a fine-tuning run's ``geometry/`` prefix (its fine-tuned model's dev-set geometry);
    * ``sts_spearman``: the mean over the job's STS datasets of Spearman × 100 (``spearman.<dataset>``; for
      STS12–16 the mean over subsets), the "mean" column of ``tables/sts_summary.md``;
    * ``dev_main``: a fine-tuning run's final dev value of its task's GLUE main metric (``final/<metric>``).

    Keys the job logged itself are not derived again.
    """
    last: dict[str, tuple[int, float]] = {}
    for entry in metrics:
        key = entry["key"].removeprefix("geometry/")
        if key in headline_last_layer() and (key not in last or entry["step"] >= last[key][0]):
            last[key] = (entry["step"], entry["value"])
    out = {headline_last_layer()[key]: value for key, (_, value) in last.items()}
    spearman: dict[str, float] = {}
    for entry in metrics:
        parts = entry["key"].split(".")
        if parts[0] == "spearman" and len(parts) == 2:
            spearman.setdefault(parts[1], entry["value"])
    for entry in metrics:  # a dataset of several subsets: the mean over subsets, as the tokenUni table
        parts = entry["key"].split(".")
        if parts[0] == "spearman" and len(parts) == 3 and parts[2] == "mean_over_subsets":
            spearman[parts[1]] = entry["value"]
    if spearman:
        out["sts_spearman"] = sum(spearman.values()) / len(spearman)
    if rule == "finetune" and wildcards.get("task"):
        from tokenuni.glue import GLUE_TASKS

        main = (GLUE_TASKS.get(wildcards["task"]) or {}).get("main_metric")
        finals = [entry for entry in metrics if entry["key"] == f"final/{main}"]
        if finals:
            out["dev_main"] = max(finals, key=lambda entry: entry["step"])["value"]
    logged = {entry["key"] for entry in metrics}
    return {key: float(value) for key, value in out.items() if key not in logged}


def runs_view(columns: list[str] = HEADLINE_COLUMNS) -> dict:
    """The runs-table view the study's experiment shares: the runs with headline values (tag
    ``tokenuni.headline``), the headline metrics as columns, grouped and sorted by stage (the UI loads 100 runs
    at first: a study's figure and data runs would push results off the first page, and sorted by stage every
    stage's columns are on it).

    MLflow's UI keeps a view as JSON in the experiment tag ``mlflow.sharedViewState.<key>`` and opens it from
    ``?viewStateShareKey=<key>`` (the state its "share" button stores; checked with MLflow 3.17). An MLflow
    that reads it differently shows its default runs table instead.
    """
    return {"selectedColumns": [f"metrics.`{name}`" for name in columns],
            "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag",
                                                                         "groupByData": "tokenuni.stage"}]},
            "groupsExpanded": {}, "searchFilter": "tags.`tokenuni.headline` = 'true'",
            "orderByKey": "tags.`tokenuni.stage`", "orderByAsc": True}


def runs_view_url(ui: str, experiment_id: str) -> str:
    """The address of the study's runs table with the headline columns, grouped by stage, in the MLflow UI at
    ``ui`` (``http://127.0.0.1:5000``). ``workflowType=machine_learning``: MLflow 3.17 opens experiments on
    its GenAI overview unless the UI's "Model training" switch (or this parameter) says otherwise."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={RUNS_VIEW_KEY}")


def experiment_tags(experiment_id: str) -> dict[str, str]:
    """The tags that make the UI open the study's experiment on its results (see the module docstring)."""
    link = runs_view_url("", experiment_id).lstrip("/")
    return {"mlflow.experimentKind": "custom_model_development",
            f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps(runs_view()),
            "mlflow.note.content": f"tokenuni study. Results: [the runs table with the headline metrics, grouped by "
                                   f"stage]({link}) (columns {', '.join(HEADLINE_COLUMNS)}; group by the tag "
                                   "tokenuni.stage)."}
