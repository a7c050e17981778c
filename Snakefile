"""tokenuni: corpus -> per-layer Arrow dumps -> geometry metrics -> figures; pooled sentence embeddings
-> post-hoc transforms -> unsupervised STS; GLUE fine-tuning with geometry repairs. Every job is an MLflow run.

    snakemake --cores 8 --resources gpu=2              # the default study (config/config.yaml)
    snakemake --cores 8 --configfile config/paper.yaml # the papers' study (needs the hub or local copies)
"""
import os
import sys

sys.path.insert(0, workflow.basedir)  # the tokenuni library of this checkout


# The default study, unless --configfile names another (Snakemake would otherwise merge the two).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"  # `snakemake --report report.html`: every figure with its caption


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/projection.smk"
include: "workflow/rules/sts.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/report.smk"


localrules:
    all,
    mlflow_sync,


rule all:
    input:
        all_targets(),
    default_target: True


onstart:
    check_sources_before_start()
