# Figures read only the tidy metric tables; each figure job is an MLflow run with the figure as artifact.


rule figure_singular_value_cdf:
    input:
        table=metric_table("{model}", "{corpus}", "spectrum"),
    output:
        png=f"{RESULTS}/figures/{{model}}/{{corpus}}/singular_value_cdf.png",
        svg=f"{RESULTS}/figures/{{model}}/{{corpus}}/singular_value_cdf.svg",
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
        " --png {output.png:q} --svg {output.svg:q} --record {output.record:q} --job {params.job:q} 2> {log:q}"


rule figure_by_layer:
    input:
        tables=lambda wildcards: all_metric_tables([BY_LAYER_FIGURES[wildcards.row]]),
    output:
        png=f"{RESULTS}/figures/{{row}}_by_layer.png",
        svg=f"{RESULTS}/figures/{{row}}_by_layer.svg",
        table=f"{RESULTS}/figures/{{row}}_by_layer.tsv",
        record=record("figure_by_layer", "row"),
    params:
        job=job("figure_by_layer"),
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/figure_by_layer/{{row}}.log",
    shell:
        "(python -m tokenuni table {input.tables:q} --out {output.table:q}"
        " && python -m tokenuni figure by-layer --metric {wildcards.row} --table {output.table:q}"
        " --png {output.png:q} --svg {output.svg:q} --record {output.record:q} --job {params.job:q}) 2> {log:q}"
