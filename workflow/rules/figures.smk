# Figures read only the tidy tables (results/tables/*, or per-job metric tables for the per-layer ones);
# each figure job is an MLflow run with its PNG / SVG / PDF as artifacts. The PNGs are in the report
# (`snakemake --report report.html`), with the captions in workflow/report/; SVG and PDF are for papers.
# Layer convention: layer 0 = embedding output, layer L = output of block L.

FIGURES = f"{RESULTS}/figures"
# display name per model key (hub id; checkpoints "<id>@step<step>")
MODEL_LABELS = json.dumps(
    {
        key: spec["id"] + (f"@step{spec['training_step']}" if spec.get("training_step") is not None else "")
        for key, spec in MODEL_SPECS.items()
    }
)
# which metric jobs feed the multi-panel figures (a figure is made when at least one of them is enabled):
# the metrics whose rows the row catalogue's panel views show (tokenuni/metrics/rows.py)
GEOMETRY_PANEL_JOBS = metrics_of_view("geometry_panels")
OVERSMOOTHING_JOBS = metrics_of_view("oversmoothing_panels")
CHECKPOINT_MODELS = [key for key, spec in MODEL_SPECS.items() if spec.get("training_step") is not None]


# (PNG, run record) of every figure the study makes; sections that are off make none. all_targets() and
# all_records() in common.smk read it.
_RUNS = f"{RESULTS}/runs"
FIGURE_RUNS = [(f"{FIGURES}/{row}_by_layer.png", f"{_RUNS}/figure_by_layer/{row}.json") for row in BY_LAYER_FIGURES]
if "spectrum" in METRIC_NAMES:
    FIGURE_RUNS += [
        (f"{FIGURES}/{m}/{c}/singular_value_cdf.png", f"{_RUNS}/figure_singular_value_cdf/{m}__{c}.json")
        for m in MODELS
        for c in GEOMETRY_CORPORA
    ]
if GEOMETRY_PANEL_JOBS & set(METRIC_NAMES):
    FIGURE_RUNS.append((f"{FIGURES}/geometry_by_layer.png", f"{_RUNS}/figure_geometry_panels/figure_geometry_panels.json"))
if OVERSMOOTHING_JOBS & set(METRIC_NAMES):
    FIGURE_RUNS.append((f"{FIGURES}/oversmoothing_by_layer.png", f"{_RUNS}/figure_oversmoothing/figure_oversmoothing.json"))
if len(CHECKPOINT_MODELS) >= 2 and METRIC_NAMES:
    FIGURE_RUNS.append(
        (f"{FIGURES}/checkpoints/metrics_by_step.png", f"{_RUNS}/figure_checkpoints/figure_checkpoints.json")
    )
if STS:
    FIGURE_RUNS += [(f"{FIGURES}/sts/{p}/scores.png", f"{_RUNS}/figure_sts_scores/{p}.json") for p in STS_POOLINGS]
    FIGURE_RUNS += [(f"{FIGURES}/sts/{p}/geometry.png", f"{_RUNS}/figure_sts_geometry/{p}.json") for p in STS_POOLINGS]
    FIGURE_RUNS += [(f"{FIGURES}/sts/{m}/sts_table.png", f"{_RUNS}/figure_sts_table/{m}.json") for m in MODELS]
if FT_MODELS:
    FIGURE_RUNS.append((f"{FIGURES}/finetune/scores.png", f"{_RUNS}/figure_finetune_scores/figure_finetune_scores.json"))
    FIGURE_RUNS.append(
        (f"{FIGURES}/finetune/isotropy_vs_score.png", f"{_RUNS}/figure_finetune_isotropy/figure_finetune_isotropy.json")
    )


rule figure_by_layer:
    input:
        tables=lambda wildcards: all_metric_tables([BY_LAYER_FIGURES[wildcards.row]]),
    output:
        png=report(
            f"{FIGURES}/{{row}}_by_layer.png",
            caption="../report/by_layer.rst",
            category="3 Each metric by layer",
            subcategory="{row}",
        ),
        svg=f"{FIGURES}/{{row}}_by_layer.svg",
        pdf=f"{FIGURES}/{{row}}_by_layer.pdf",
        table=f"{FIGURES}/{{row}}_by_layer.tsv",
        record=record("figure_by_layer", "row"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_by_layer"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_by_layer/{{row}}.log",
    shell:
        "(python -m tokenuni table {input.tables:q} --out {output.table:q}"
        " && python -m tokenuni figure by-layer --metric {wildcards.row} --table {output.table:q}"
        " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
        " --record {output.record:q} --job {params.job:q}) 2> {log:q}"


# Every figure but the one-metric ones is one rule made from this table: rule name -> the `tokenuni figure`
# kind (tokenuni/figure_kinds.py), its input tables (the drawn one first, as `table`; others are passed as
# --<name>), its file under figures/ (wildcards in braces; .png/.svg/.pdf), the report's caption, category and
# subcategory, and the command's options from the wildcards. Record and log paths follow from the name and
# the wildcards.
FIGURE_RULES = {
    "figure_singular_value_cdf": dict(
        kind="singular-value-cdf",
        inputs={"table": metric_table("{model}", "{corpus}", "spectrum")},
        figure="{model}/{corpus}/singular_value_cdf",
        caption="singular_value_cdf",
        category="2 Singular-value spectrum",
        subcategory="{model} · {corpus}",
        options=lambda wildcards: f"--model-label {shlex.quote(MODEL_SPECS[wildcards.model]['id'])}",
    ),
    "figure_geometry_panels": dict(
        kind="geometry-panels",
        inputs={"table": f"{RESULTS}/tables/metrics.parquet"},
        figure="geometry_by_layer",
        caption="geometry_by_layer",
        category="1 Geometry by layer",
        subcategory="all metrics",
    ),
    "figure_oversmoothing": dict(
        kind="oversmoothing",
        inputs={"table": f"{RESULTS}/tables/metrics.parquet"},
        figure="oversmoothing_by_layer",
        caption="oversmoothing_by_layer",
        category="1 Geometry by layer",
        subcategory="over-smoothing",
    ),
    "figure_checkpoints": dict(
        kind="checkpoints",
        inputs={"table": f"{RESULTS}/tables/metrics.parquet"},
        figure="checkpoints/metrics_by_step",
        caption="metrics_by_step",
        category="4 Training checkpoints",
        subcategory="metrics by step",
    ),
    "figure_sts_scores": dict(
        kind="sts-scores",
        inputs={"table": f"{RESULTS}/tables/sts.parquet"},
        figure="sts/{pooling}/scores",
        caption="sts_scores",
        category="5 Unsupervised STS",
        subcategory="{pooling}",
        options=lambda wildcards: f"--pooling {wildcards.pooling}",
    ),
    "figure_sts_geometry": dict(
        kind="sts-geometry",
        inputs={"table": f"{RESULTS}/tables/sts_geometry.tsv"},
        figure="sts/{pooling}/geometry",
        caption="sts_geometry",
        category="5 Unsupervised STS",
        subcategory="{pooling}",
        options=lambda wildcards: f"--pooling {wildcards.pooling}",
    ),
    "figure_sts_table": dict(
        kind="sts-table",
        inputs={"table": f"{RESULTS}/tables/sts.parquet"},
        figure="sts/{model}/sts_table",
        caption="sts_table",
        category="5 Unsupervised STS",
        subcategory="table",
        options=lambda wildcards: f"--model {shlex.quote(wildcards.model)}",
    ),
    "figure_finetune_scores": dict(
        kind="finetune-scores",
        inputs={
            "table": f"{RESULTS}/tables/finetune.parquet",
            "summary": f"{RESULTS}/tables/finetune_summary.parquet",
        },
        figure="finetune/scores",
        caption="finetune_scores",
        category="6 GLUE fine-tuning",
        subcategory="scores",
    ),
    "figure_finetune_isotropy": dict(
        kind="finetune-isotropy",
        inputs={
            "table": f"{RESULTS}/tables/finetune.parquet",
            "geometry": f"{RESULTS}/tables/finetune_geometry.tsv",
        },
        figure="finetune/isotropy_vs_score",
        caption="finetune_isotropy",
        category="6 GLUE fine-tuning",
        subcategory="isotropy vs score",
    ),
}


for _name, _figure in FIGURE_RULES.items():
    _wildcards = re.findall(r"{(\w+)}", _figure["figure"])
    _log = f"{RESULTS}/logs/{_name}/{'__'.join(f'{{{w}}}' for w in _wildcards)}.log"

    rule:
        name:
            _name
        input:
            **_figure["inputs"],
        output:
            png=report(
                f"{FIGURES}/{_figure['figure']}.png",
                caption=f"../report/{_figure['caption']}.rst",
                category=_figure["category"],
                subcategory=_figure["subcategory"],
            ),
            svg=f"{FIGURES}/{_figure['figure']}.svg",
            pdf=f"{FIGURES}/{_figure['figure']}.pdf",
            record=record(_name, *_wildcards),
        params:
            kind=_figure["kind"],
            options=_figure.get("options", ""),
            tables=extra_figure_tables,
            model_labels=MODEL_LABELS,
            job=job(_name),
        conda:
            CONDA_ENV
        log:
            _log if _wildcards else f"{RESULTS}/logs/{_name}.log",
        shell:
            "python -m tokenuni figure {params.kind} --table {input.table:q} {params.tables} {params.options}"
            " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
            " --record {output.record:q} --job {params.job:q} 2> {log:q}"
