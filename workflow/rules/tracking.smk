# The single MLflow writer: imports every job's run record into the store (SQLite under results/ by
# default, or an `mlflow server` via mlflow.tracking_uri / MLFLOW_TRACKING_URI).


rule mlflow_sync:
    input:
        all_records(),
    output:
        f"{RESULTS}/mlflow/sync.json",
    params:
        tracking_uri=resolve_tracking_uri(config["mlflow"]["tracking_uri"], RESULTS),
        experiment=config["mlflow"]["experiment"] or f"tokenuni-{config['study']}",
        artifacts=f"{RESULTS}/mlartifacts",
        failed=f"{RESULTS}/runs/failed",
    conda:
        CONDA_ENV
    log:
        f"{RESULTS}/logs/mlflow_sync.log",
    shell:
        "python -m tokenuni sync {input:q} --failed-dir {params.failed:q} --tracking-uri {params.tracking_uri:q}"
        " --experiment {params.experiment:q} --artifact-location {params.artifacts:q} --out {output:q} 2> {log:q}"
