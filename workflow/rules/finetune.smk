# GLUE fine-tuning: one job per (model, task, variant, seed) — dev metrics, per-example dev predictions,
# training curves (in the job's MLflow run) and the geometry of the fine-tuned layers on the dev set; then
# one summary: every variant against the baseline and chance with 95 % intervals (tokenuni.finetune.summary).


rule finetune:
    input:
        finetune_mirror_files,
    output:
        summary=f"{RESULTS}/finetune/{{model}}/{{task}}/{{variant}}/seed{{seed}}/summary.json",
        geometry=f"{RESULTS}/finetune/{{model}}/{{task}}/{{variant}}/seed{{seed}}/geometry.parquet",
        predictions=f"{RESULTS}/finetune/{{model}}/{{task}}/{{variant}}/seed{{seed}}/predictions.parquet",
        record=record("finetune", "model", "task", "variant", "seed"),
    params:
        model=lambda wildcards: MODEL_JSON[wildcards.model],
        variant=lambda wildcards: json.dumps(FINETUNE["variants"][wildcards.variant]),
        settings=finetune_settings,
        mirror=MIRROR or "",
        job=job("finetune"),
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/finetune/{{model}}__{{task}}__{{variant}}__{{seed}}.log",
    shell:
        "python -m tokenuni finetune --model {params.model:q} --model-key {wildcards.model} --task {wildcards.task}"
        " --variant-name {wildcards.variant} --variant {params.variant:q} --seed {wildcards.seed}"
        " --settings {params.settings:q} --mirror {params.mirror:q} --summary {output.summary:q}"
        " --geometry {output.geometry:q} --predictions {output.predictions:q} --threads {threads}"
        " --record {output.record:q} --job {params.job:q}"
        " 2> {log:q}"


rule finetune_table:
    input:
        summaries=all_finetune_files("summary.json"),
        predictions=all_finetune_files("predictions.parquet"),
        geometry=all_finetune_files("geometry.parquet"),
    output:
        parquet=f"{RESULTS}/tables/finetune.parquet",
        tsv=f"{RESULTS}/tables/finetune.tsv",
        geometry=f"{RESULTS}/tables/finetune_geometry.tsv",
        summary=f"{RESULTS}/tables/finetune_summary.parquet",
        summary_tsv=f"{RESULTS}/tables/finetune_summary.tsv",
        isotropy=f"{RESULTS}/tables/finetune_isotropy.tsv",
        markdown=f"{RESULTS}/tables/finetune_summary.md",
        record=record("finetune_table"),
    params:
        baseline=FINETUNE["baseline"] if FINETUNE else "baseline",
        bootstrap=FINETUNE["bootstrap"] if FINETUNE else 1000,
        job=job("finetune_table"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/finetune_table.log",
    shell:
        "python -m tokenuni finetune-table --summaries {input.summaries:q} --predictions {input.predictions:q}"
        " --geometry {input.geometry:q} --out {output.parquet:q} --tsv {output.tsv:q}"
        " --geometry-out {output.geometry:q} --summary-table {output.summary:q} --summary-tsv {output.summary_tsv:q}"
        " --isotropy {output.isotropy:q} --markdown {output.markdown:q} --baseline {params.baseline:q}"
        " --bootstrap {params.bootstrap} --record {output.record:q} --job {params.job:q} 2> {log:q}"
