# All metrics of a (model, corpus) from one read of its dump: the `stats` job streams the dump once (the moments
# come from the embed job) and writes every metric's sufficient statistics; each `metric` job (one per model,
# corpus, metric; one MLflow run each, as before) derives one tidy table from them without reading the dump.
# The stats job's params are the pass options only (tokenuni.metrics.suite.pass_plan), so changing a derived
# option (token_uniformity.min_tokens, spectrum.explained_variance_k, clusters.k_max ...) reruns one metric job.
# Provenance is checked where a file is read (--expect-model, the model entry with its fingerprint): the stats job
# checks the dump, the metric (and projection) jobs the statistics, which carry the dump's metadata.


rule stats:
    input:
        dump=dump_file("{model}", "{corpus}"),
        moments=moments_file("{model}", "{corpus}"),
    output:
        stats=stats_file("{model}", "{corpus}"),
        record=record("stats", "model", "corpus"),
    wildcard_constraints:
        corpus=_choice(DUMP_CORPORA),
    params:
        plan=lambda wildcards: json.dumps(suite_plan()),
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        job=job("stats"),
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/stats/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni stats --dump {input.dump:q} --plan {params.plan:q} --model {wildcards.model}"
        " --expect-model {params.model:q} --corpus {wildcards.corpus} --out {output.stats:q} --threads {threads} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"


rule metric:
    input:
        stats=stats_file("{model}", "{corpus}"),
    output:
        table=metric_table("{model}", "{corpus}", "{metric}"),
        record=record("metric", "model", "corpus", "metric"),
    params:
        options=lambda wildcards: json.dumps(config["metrics"][wildcards.metric]),
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        job=job("metric"),
    threads: 2
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/metric/{{model}}__{{corpus}}__{{metric}}.log",
    shell:
        "python -m tokenuni metric {wildcards.metric} --stats {input.stats:q} --options {params.options:q}"
        " --model {wildcards.model} --expect-model {params.model:q} --corpus {wildcards.corpus} --out {output.table:q}"
        " --threads {threads}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule metrics_table:
    input:
        all_metric_tables(),
    output:
        parquet=f"{RESULTS}/tables/metrics.parquet",
        tsv=f"{RESULTS}/tables/metrics.tsv",
        record=record("metrics_table"),
    params:
        job=job("metrics_table"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/metrics_table.log",
    shell:
        "python -m tokenuni table {input:q} --out {output.parquet:q} --tsv {output.tsv:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"
