# One job per (model, corpus, metric): stream the dump once, every layer; then one tidy table.


rule metric:
    input:
        dump=dump_file("{model}", "{corpus}"),
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
        "python -m tokenuni metric {wildcards.metric} --dump {input.dump:q} --options {params.options:q}"
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
