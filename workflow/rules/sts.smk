# Unsupervised STS: pooled sentence embeddings -> a post-hoc transform (fit on the evaluation pool or on
# another corpus) -> cosine -> Spearman / Pearson, with the geometry of the transformed embeddings.
# One job per (model, pooling, transform): a new alpha or D reruns that transform only, never the model.


rule sentence_embed:
    input:
        corpus=corpus_table("{corpus}"),
    output:
        sentences=sentences_file("{model}", "{corpus}"),
        record=record("sentence_embed", "model", "corpus"),
    params:
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        poolings=json.dumps(STS["poolings"] if STS else {}),
        job=job("sentence_embed"),
    threads: 4
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/sentence_embed/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni sentences --corpus {input.corpus:q} --corpus-name {wildcards.corpus}"
        " --model {params.model:q} --poolings {params.poolings:q} --out {output.sentences:q} --threads {threads}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule sts:
    input:
        sts_inputs,
    output:
        scores=f"{RESULTS}/sts/{{model}}/{{pooling}}/{{transform}}/scores.parquet",
        geometry=f"{RESULTS}/sts/{{model}}/{{pooling}}/{{transform}}/geometry.parquet",
        fitted=directory(f"{RESULTS}/sts/{{model}}/{{pooling}}/{{transform}}/fitted"),
        record=record("sts", "model", "pooling", "transform"),
    params:
        transform=lambda wildcards: json.dumps(STS["transforms"][wildcards.transform]),
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        datasets=",".join(STS_DATASETS),
        geometry_metrics=",".join(STS["geometry_metrics"]) if STS else "",
        job=job("sts"),
    # One thread: an STS job is a few small (d x d) fits and is dominated by start-up, so two of them
    # side by side on two cores finish sooner than one job with two BLAS threads.
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/sts/{{model}}__{{pooling}}__{{transform}}.log",
    shell:
        "python -m tokenuni sts {input:q} --model {wildcards.model} --expect-model {params.model:q} --pooling {wildcards.pooling}"
        " --transform-name {wildcards.transform} --transform {params.transform:q} --datasets {params.datasets:q}"
        " --geometry-metrics {params.geometry_metrics:q} --scores {output.scores:q} --geometry {output.geometry:q}"
        " --fitted-dir {output.fitted:q} --threads {threads} --record {output.record:q} --job {params.job:q}"
        " 2> {log:q}"


rule sts_table:
    input:
        scores=all_sts_files("scores"),
        geometry=all_sts_files("geometry"),
    output:
        parquet=f"{RESULTS}/tables/sts.parquet",
        tsv=f"{RESULTS}/tables/sts.tsv",
        geometry=f"{RESULTS}/tables/sts_geometry.tsv",
        markdown=f"{RESULTS}/tables/sts_summary.md",
        html=f"{RESULTS}/tables/sts_summary.html",
        record=record("sts_table"),
    params:
        job=job("sts_table"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/sts_table.log",
    shell:
        "python -m tokenuni sts-table --scores {input.scores:q} --geometry {input.geometry:q}"
        " --out {output.parquet:q} --tsv {output.tsv:q} --geometry-out {output.geometry:q}"
        " --markdown {output.markdown:q} --html {output.html:q} --record {output.record:q} --job {params.job:q}"
        " 2> {log:q}"
