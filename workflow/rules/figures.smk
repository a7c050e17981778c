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


rule figure_singular_value_cdf:
    input:
        table=metric_table("{model}", "{corpus}", "spectrum"),
    output:
        png=report(
            f"{FIGURES}/{{model}}/{{corpus}}/singular_value_cdf.png",
            caption="../report/singular_value_cdf.rst",
            category="2 Singular-value spectrum",
            subcategory="{model} · {corpus}",
        ),
        svg=f"{FIGURES}/{{model}}/{{corpus}}/singular_value_cdf.svg",
        pdf=f"{FIGURES}/{{model}}/{{corpus}}/singular_value_cdf.pdf",
        record=record("figure_singular_value_cdf", "model", "corpus"),
    params:
        model_label=lambda wildcards: MODEL_SPECS[wildcards.model]["id"],
        job=job("figure_singular_value_cdf"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_singular_value_cdf/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni figure singular-value-cdf --table {input.table:q} --model-label {params.model_label:q}"
        " --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


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


rule figure_geometry_panels:
    input:
        table=f"{RESULTS}/tables/metrics.parquet",
    output:
        png=report(
            f"{FIGURES}/geometry_by_layer.png",
            caption="../report/geometry_by_layer.rst",
            category="1 Geometry by layer",
            subcategory="all metrics",
        ),
        svg=f"{FIGURES}/geometry_by_layer.svg",
        pdf=f"{FIGURES}/geometry_by_layer.pdf",
        record=record("figure_geometry_panels"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_geometry_panels"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_geometry_panels.log",
    shell:
        "python -m tokenuni figure geometry-panels --table {input.table:q} --model-labels {params.model_labels:q}"
        " --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


rule figure_oversmoothing:
    input:
        table=f"{RESULTS}/tables/metrics.parquet",
    output:
        png=report(
            f"{FIGURES}/oversmoothing_by_layer.png",
            caption="../report/oversmoothing_by_layer.rst",
            category="1 Geometry by layer",
            subcategory="over-smoothing",
        ),
        svg=f"{FIGURES}/oversmoothing_by_layer.svg",
        pdf=f"{FIGURES}/oversmoothing_by_layer.pdf",
        record=record("figure_oversmoothing"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_oversmoothing"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_oversmoothing.log",
    shell:
        "python -m tokenuni figure oversmoothing --table {input.table:q} --model-labels {params.model_labels:q}"
        " --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


rule figure_checkpoints:
    input:
        table=f"{RESULTS}/tables/metrics.parquet",
    output:
        png=report(
            f"{FIGURES}/checkpoints/metrics_by_step.png",
            caption="../report/metrics_by_step.rst",
            category="4 Training checkpoints",
            subcategory="metrics by step",
        ),
        svg=f"{FIGURES}/checkpoints/metrics_by_step.svg",
        pdf=f"{FIGURES}/checkpoints/metrics_by_step.pdf",
        record=record("figure_checkpoints"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_checkpoints"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_checkpoints.log",
    shell:
        "python -m tokenuni figure checkpoints --table {input.table:q} --model-labels {params.model_labels:q}"
        " --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


rule figure_sts_scores:
    input:
        table=f"{RESULTS}/tables/sts.parquet",
    output:
        png=report(
            f"{FIGURES}/sts/{{pooling}}/scores.png",
            caption="../report/sts_scores.rst",
            category="5 Unsupervised STS",
            subcategory="{pooling}",
        ),
        svg=f"{FIGURES}/sts/{{pooling}}/scores.svg",
        pdf=f"{FIGURES}/sts/{{pooling}}/scores.pdf",
        record=record("figure_sts_scores", "pooling"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_sts_scores"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_sts_scores/{{pooling}}.log",
    shell:
        "python -m tokenuni figure sts-scores --table {input.table:q} --pooling {wildcards.pooling}"
        " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule figure_sts_geometry:
    input:
        table=f"{RESULTS}/tables/sts_geometry.tsv",
    output:
        png=report(
            f"{FIGURES}/sts/{{pooling}}/geometry.png",
            caption="../report/sts_geometry.rst",
            category="5 Unsupervised STS",
            subcategory="{pooling}",
        ),
        svg=f"{FIGURES}/sts/{{pooling}}/geometry.svg",
        pdf=f"{FIGURES}/sts/{{pooling}}/geometry.pdf",
        record=record("figure_sts_geometry", "pooling"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_sts_geometry"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_sts_geometry/{{pooling}}.log",
    shell:
        "python -m tokenuni figure sts-geometry --table {input.table:q} --pooling {wildcards.pooling}"
        " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule figure_sts_table:
    input:
        table=f"{RESULTS}/tables/sts.parquet",
    output:
        png=report(
            f"{FIGURES}/sts/{{model}}/sts_table.png",
            caption="../report/sts_table.rst",
            category="5 Unsupervised STS",
            subcategory="table",
        ),
        svg=f"{FIGURES}/sts/{{model}}/sts_table.svg",
        pdf=f"{FIGURES}/sts/{{model}}/sts_table.pdf",
        record=record("figure_sts_table", "model"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_sts_table"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_sts_table/{{model}}.log",
    shell:
        "python -m tokenuni figure sts-table --table {input.table:q} --model {wildcards.model:q}"
        " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule figure_finetune_scores:
    input:
        table=f"{RESULTS}/tables/finetune.parquet",
        summary=f"{RESULTS}/tables/finetune_summary.parquet",
    output:
        png=report(
            f"{FIGURES}/finetune/scores.png",
            caption="../report/finetune_scores.rst",
            category="6 GLUE fine-tuning",
            subcategory="scores",
        ),
        svg=f"{FIGURES}/finetune/scores.svg",
        pdf=f"{FIGURES}/finetune/scores.pdf",
        record=record("figure_finetune_scores"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_finetune_scores"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_finetune_scores.log",
    shell:
        "python -m tokenuni figure finetune-scores --table {input.table:q} --summary {input.summary:q}"
        " --model-labels {params.model_labels:q}"
        " --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


rule figure_finetune_isotropy:
    input:
        table=f"{RESULTS}/tables/finetune.parquet",
        geometry=f"{RESULTS}/tables/finetune_geometry.tsv",
    output:
        png=report(
            f"{FIGURES}/finetune/isotropy_vs_score.png",
            caption="../report/finetune_isotropy.rst",
            category="6 GLUE fine-tuning",
            subcategory="isotropy vs score",
        ),
        svg=f"{FIGURES}/finetune/isotropy_vs_score.svg",
        pdf=f"{FIGURES}/finetune/isotropy_vs_score.pdf",
        record=record("figure_finetune_isotropy"),
    params:
        model_labels=MODEL_LABELS,
        job=job("figure_finetune_isotropy"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_finetune_isotropy.log",
    shell:
        "python -m tokenuni figure finetune-isotropy --table {input.table:q} --geometry {input.geometry:q}"
        " --model-labels {params.model_labels:q} --png {output.png:q} --svg {output.svg:q} --pdf {output.pdf:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"
