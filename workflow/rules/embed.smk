# Per-layer hidden states of a model over a corpus -> one uncompressed Arrow IPC dump (GPU rule).


rule embed:
    input:
        corpus=corpus_table("{corpus}"),
    output:
        dump=dump_file("{model}", "{corpus}"),
        record=record("embed", "model", "corpus"),
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
