# PCA views of each layer's tokens (Cai et al., ICLR 2021, the "Swiss roll" view): one projection table per
# (model, geometry corpus), read by the figure jobs (figures read only tables); every job is an MLflow run.
import shlex

PROJECTION = config["projection"] if config["projection"]["enabled"] else None
# k-means options: the projection's own, else those of the clusters metric (same labels as it scored)
_KMEANS = {k: config["metrics"]["clusters"][k] for k in ("n_init", "max_iter", "tol") if k in config["metrics"]["clusters"]}
PROJECTION_OPTIONS = (
    {**{k: v for k, v in PROJECTION.items() if k != "enabled"}, "kmeans": {**_KMEANS, **PROJECTION["kmeans"]}}
    if PROJECTION
    else {}
)
PROJECTION_COLOURS = ["frequency"] + (["cluster"] if PROJECTION and PROJECTION["clusters"] is not None else [])
PROJECTION_DIMS = ["2d", "3d"]


PROJECTION_TABLE = f"{RESULTS}/projections/{{model}}/{{corpus}}.parquet"
_PROJECTION_VIEWS = [
    (m, c, d, colour) for m in MODELS for c in GEOMETRY_CORPORA for d in PROJECTION_DIMS for colour in PROJECTION_COLOURS
]
# targets and run records of this file (all_targets / all_records in common.smk add them)
PROJECTION_TARGETS = (
    [f"{RESULTS}/figures/{m}/{c}/token_pca_{d}_{colour}.{ext}" for m, c, d, colour in _PROJECTION_VIEWS for ext in ("png", "svg")]
    if PROJECTION
    else []
)
PROJECTION_RECORDS = (
    [f"{RESULTS}/runs/projection/{m}__{c}.json" for m in MODELS for c in GEOMETRY_CORPORA]
    + [f"{RESULTS}/runs/figure_token_projection/{m}__{c}__{d}__{colour}.json" for m, c, d, colour in _PROJECTION_VIEWS]
    if PROJECTION
    else []
)


rule projection:
    input:
        stats=stats_file("{model}", "{corpus}"),  # moments and the seeded sample of the metrics pass
        # the clusters metric table when k comes from its maximum mean silhouette
        clusters=lambda wildcards: (
            [metric_table(wildcards.model, wildcards.corpus, "clusters")] if PROJECTION["clusters"] == "mms" else []
        ),
    output:
        table=PROJECTION_TABLE,
        record=record("projection", "model", "corpus"),
    params:
        options=lambda wildcards: json.dumps(PROJECTION_OPTIONS),
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        clusters=lambda wildcards, input: " ".join(
            f"--clusters-table {shlex.quote(str(path))}" for path in ([input.clusters] if isinstance(input.clusters, str) else input.clusters)
        ),
        job=job("projection"),
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/projection/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni projection --dump {input.stats:q} --options {params.options:q} {params.clusters}"
        " --model {wildcards.model} --expect-model {params.model:q} --corpus {wildcards.corpus} --out {output.table:q}"
        " --threads {threads}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule figure_token_projection:
    input:
        table=PROJECTION_TABLE,
    output:
        png=report(
            f"{RESULTS}/figures/{{model}}/{{corpus}}/token_pca_{{dims}}_{{colour}}.png",
            caption="../report/token_projection.rst",
            category="Geometry",
            subcategory="PCA views of tokens",
            labels={"model": "{model}", "corpus": "{corpus}", "view": "{dims}, coloured by {colour}"},
        ),
        svg=f"{RESULTS}/figures/{{model}}/{{corpus}}/token_pca_{{dims}}_{{colour}}.svg",
        record=record("figure_token_projection", "model", "corpus", "dims", "colour"),
    wildcard_constraints:
        dims="2d|3d",
        colour="frequency|cluster",
    params:
        model_label=lambda wildcards: MODEL_SPECS[wildcards.model]["id"],
        dims=lambda wildcards: wildcards.dims[0],
        job=job("figure_token_projection"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_token_projection/{{model}}__{{corpus}}__{{dims}}__{{colour}}.log",
    shell:
        "python -m tokenuni projection-figure --table {input.table:q} --colour-by {wildcards.colour}"
        " --dims {params.dims} --model-label {params.model_label:q} --png {output.png:q} --svg {output.svg:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"
