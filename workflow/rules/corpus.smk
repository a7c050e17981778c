# Import a corpus (local mirror first, else the hub) into normalised Parquet.


rule corpus:
    input:
        corpus_mirror_files,
    output:
        table=corpus_table("{corpus}"),
        record=record("corpus", "corpus"),
    params:
        spec=lambda wildcards: json.dumps(corpus_spec(wildcards.corpus)),
        mirror=MIRROR or "",
        job=job("corpus"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/corpus/{{corpus}}.log",
    shell:
        "python -m tokenuni corpus --spec {params.spec:q} --mirror {params.mirror:q} --out {output.table:q}"
        " --record {output.record:q} --job {params.job:q} 2> {log:q}"
