# The study's static HTML report (tokenuni/report/): one offline file, figures embedded, with the
# config and the MLflow run id of every job. The last step: its inputs are every table and figure target
# and the MLflow sync's output. It is not an MLflow run itself (the sync, one of its inputs, would then
# depend on it).


localrules:
    html_report,


rule html_report:
    input:
        targets=all_targets(report=False),
        configfiles=[str(path) for path in workflow.configfiles],
    output:
        f"{RESULTS}/report/index.html",
    params:
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),  # <results>/report/index.html
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/html_report.log",
    shell:
        "python -m tokenuni report --results {params.results:q} --config {input.configfiles:q}"
        " --out {output:q} 2> {log:q}"
