# Per-layer hidden states of a model over a corpus -> one uncompressed Arrow IPC dump and its per-layer moments
# (GPU rule). Corpora with `dump: false` write no dump: the same job feeds the metrics suite and writes its
# statistics (memory and disk bounded in the corpus size).


rule embed:
    input:
        corpus=corpus_table("{corpus}"),
    output:
        dump=dump_file("{model}", "{corpus}"),
        moments=moments_file("{model}", "{corpus}"),
        record=record("embed", "model", "corpus"),
    wildcard_constraints:
        corpus=_choice(DUMP_CORPORA),
    params:
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        job=job("embed"),
    threads: 4
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/embed/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni embed --corpus {input.corpus:q} --corpus-name {wildcards.corpus} --model {params.model:q}"
        " --out {output.dump:q} --threads {threads} --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule embed_without_dump:
    input:
        corpus=corpus_table("{corpus}"),
    output:
        stats=stats_file("{model}", "{corpus}"),
        record=f"{RESULTS}/runs/embed/{{model}}__{{corpus}}.json",
    wildcard_constraints:
        corpus=_choice(STREAM_CORPORA),
    params:
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        plan=lambda wildcards: json.dumps(suite_plan()),
        job=job("embed"),
    threads: 4
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/embed/{{model}}__{{corpus}}.log",
    shell:
        "python -m tokenuni embed --corpus {input.corpus:q} --corpus-name {wildcards.corpus} --model {params.model:q}"
        " --stats {output.stats:q} --plan {params.plan:q} --threads {threads} --record {output.record:q}"
        " --job {params.job:q} 2> {log:q}"
