# Helpers shared by the rules: config validation, paths, target lists. No heavy imports here:
# every job re-reads this file.
import json
import os
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

from tokenuni.config import ConfigError, data_mirror, enabled_metrics, load_yaml, model_specs, validate_config
from tokenuni.gpu_lease import gpu_devices
from tokenuni.metrics import METRICS
from tokenuni.metrics.rows import metrics_of_view
from tokenuni.metrics.suite import pass_plan
from tokenuni.sources import mirror_files, corpus_uses_mirror, model_fingerprint
from tokenuni.tracking import resolve_tracking_uri, sqlite_store, store_problem

try:
    for _configfile in workflow.configfiles:  # Snakemake's loader keeps the last of two equal keys: refuse them
        load_yaml(_configfile)
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = config["results"]
RESOURCES = config["resources"]
# absolute and canonical: `../shared/data` and `$TOKENUNI_DATA=/abs/shared/data` are the same mirror (same
# params, no rerun); relative paths are relative to the working directory (--directory)
MIRROR = os.path.realpath(data_mirror(config)) if data_mirror(config) else None
MODEL_SPECS = model_specs(config)  # checkpoints expanded: "<key>@step<step>"
MODELS = list(MODEL_SPECS)
# The model is an input. Each model's config entry plus its fingerprint (weight package versions, the pinned
# revision, or the SHA-256 of a local `path:` folder's files: tokenuni.sources.model_fingerprint) is the
# `model` param of every rule that runs it (embed, embed_without_dump, sentence_embed, finetune) or reads what
# it wrote (stats reads the dump; metric and projection read the statistics, which carry the dump's metadata;
# sts reads sentence files: each checks the file's metadata against it), so new weights in the same folder rerun
# all of them. A param rather than a manifest file as input: a manifest would need a rule that runs at every
# invocation to notice a change, a param is evaluated while the DAG is built; the digest cache (keyed on
# path, size, mtime_ns) keeps that to one stat per file when nothing changed.
MODEL_JSON = {key: json.dumps({**spec, "fingerprint": model_fingerprint(spec)}) for key, spec in MODEL_SPECS.items()}
CORPORA = list(config["corpora"])
# corpora with per-layer token dumps and the metrics suite
GEOMETRY_CORPORA = [name for name, spec in config["corpora"].items() if spec["geometry"]]
# ... with a dump read once by the metrics pass, or (dump: false) with the metrics fed by the embed stage itself
DUMP_CORPORA = [name for name in GEOMETRY_CORPORA if config["corpora"][name]["dump"]]
STREAM_CORPORA = [name for name in GEOMETRY_CORPORA if not config["corpora"][name]["dump"]]
# unsupervised STS: datasets, poolings, transforms, and the corpora whose sentence embeddings they need
STS = config["sts"] if config["sts"]["enabled"] and config["sts"]["datasets"] else None
STS_DATASETS = STS["datasets"] if STS else []
STS_POOLINGS = list(STS["poolings"]) if STS else []
STS_TRANSFORMS = list(STS["transforms"]) if STS else []
STS_FIT_CORPORA = sorted({t["fit_on"] for t in STS["transforms"].values() if t["fit_on"] != "pool"}) if STS else []
SENTENCE_CORPORA = sorted(set(STS_DATASETS) | set(STS_FIT_CORPORA))
# GLUE fine-tuning: one job per (model, task, variant, seed)
FINETUNE = config["finetune"] if config["finetune"]["enabled"] and config["finetune"]["tasks"] else None
FT_TASKS = FINETUNE["tasks"] if FINETUNE else []
FT_VARIANTS = list(FINETUNE["variants"]) if FINETUNE else []
FT_SEEDS = [str(seed) for seed in FINETUNE["seeds"]] if FINETUNE else []
# finetune keys that are not a job's settings (the grid, and the summary's statistics): changing them reruns no job
FT_NOT_JOB_SETTINGS = ("tasks", "variants", "seeds", "enabled", "baseline", "bootstrap", "per_task", "models")
# finetune.models: config model keys (a key with checkpoints stands for all of them) or expanded keys; null = all
_FT_NAMES = FINETUNE["models"] if FINETUNE and FINETUNE["models"] is not None else None
FT_MODELS = (
    [m for m in MODELS if _FT_NAMES is None or m in _FT_NAMES or m.split("@step")[0] in _FT_NAMES] if FINETUNE else []
)
METRIC_NAMES = enabled_metrics(config)
# rows drawn as "<row>_by_layer" figures, each with the metric (job) that produces it
BY_LAYER_FIGURES = {
    row: name
    for name in METRIC_NAMES
    for row in METRICS[name].produces
    if row not in METRICS[name].vector_rows
}
# GPU rules ask for one GPU where there is one, and for none on a CPU-only machine (never deadlock);
# `--resources gpu=N` only counts: each GPU job leases its device itself (tokenuni.gpu_lease)
GPUS_PER_JOB = 1 if gpu_devices() else 0

# Rules run `python -m tokenuni ...`: the python of the active environment (venv or the rule's conda
# env); run from the workflow directory, `-m` also finds this checkout's library.
CONDA_ENV = "../envs/tokenuni.yaml"  # a link to the top-level environment.yml (the user keeps that one)
os.environ.setdefault("TQDM_MININTERVAL", "10")  # progress lines in logs, not a flood
# With an MLflow server (http[s]) jobs also log live (curves while training); the sync stays the writer
# of record and skips runs already complete. The embedded SQLite store is written by the sync only.
_TRACKING_URI = resolve_tracking_uri(config["mlflow"]["tracking_uri"], RESULTS)
if _TRACKING_URI.startswith("http"):
    os.environ.update(
        TOKENUNI_MLFLOW_LIVE_URI=_TRACKING_URI,
        TOKENUNI_MLFLOW_EXPERIMENT=config["mlflow"]["experiment"] or f"tokenuni-{config['study']}",
    )


# The embedded store heals: when results/mlflow.db is unreadable (or gone) while the sync's output says it is up
# to date, that output goes, so that this run's mlflow_sync moves the broken file aside and rebuilds the store
# from results/runs/ (tokenuni.tracking.heal_store). Main process only (jobs re-read this file).
_STORE = sqlite_store(_TRACKING_URI)
_SYNC_OUTPUT = f"{RESULTS}/mlflow/sync.json"
if workflow.is_main_process and _STORE is not None and os.path.exists(_SYNC_OUTPUT):
    _store_state = "it is missing" if not _STORE.exists() else store_problem(_STORE)
    if _store_state:
        os.remove(_SYNC_OUTPUT)
        print(f"MLflow store {_STORE} cannot be read ({_store_state}): mlflow_sync will move it aside and rebuild "
              f"it from {RESULTS}/runs/", file=sys.stderr)


def _choice(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    model=_choice(MODELS),
    corpus=_choice(CORPORA),
    metric=_choice(METRIC_NAMES),
    row=_choice(BY_LAYER_FIGURES),
    pooling=_choice(STS_POOLINGS),
    transform=_choice(STS_TRANSFORMS),
    task=_choice(FT_TASKS),
    variant=_choice(FT_VARIANTS),
    seed=r"\d+",


def job(rule_name):
    """The --job argument of a stage: its rule and wildcards, for the MLflow run record."""
    return lambda wildcards: json.dumps({"rule": rule_name, "wildcards": dict(wildcards.items())})


def record(rule_name, *wildcard_names):
    parts = "__".join(f"{{{name}}}" for name in wildcard_names) or rule_name
    return f"{RESULTS}/runs/{rule_name}/{parts}.json"


def corpus_table(corpus):
    return f"{RESOURCES}/corpora/{corpus}.parquet"


def dump_file(model, corpus):
    return f"{RESULTS}/dumps/{model}/{corpus}.arrow"


def moments_file(model, corpus):
    """The dump's per-layer moments, written by the embed job beside it (the metrics pass then reads the dump once)."""
    return f"{RESULTS}/dumps/{model}/{corpus}.arrow.moments.npz"


def stats_file(model, corpus):
    """The metrics suite's statistics of a (model, corpus): what every metric job derives its table from."""
    return f"{RESULTS}/stats/{model}/{corpus}.npz"


def suite_plan():
    """What the metrics pass computes (tokenuni.metrics.suite.pass_plan): the pass options of every enabled metric
    and the sizes of the shared samples (the projection's included). Its only params: a derived option (min_tokens,
    k_max, explained_variance_k ...) reruns one metric job, not the pass."""
    projection = config["projection"] if config["projection"]["enabled"] else None
    return pass_plan({name: config["metrics"][name] for name in METRIC_NAMES}, projection)


def metric_table(model, corpus, metric):
    return f"{RESULTS}/metrics/{model}/{corpus}/{metric}.parquet"


def all_metric_tables(metrics=None):
    return [metric_table(m, c, name) for m in MODELS for c in GEOMETRY_CORPORA for name in (metrics or METRIC_NAMES)]


def sentences_file(model, corpus):
    return f"{RESULTS}/sentences/{model}/{corpus}.arrow"


def sts_scores_file(model, pooling, transform):
    return f"{RESULTS}/sts/{model}/{pooling}/{transform}/scores.parquet"


def sts_inputs(wildcards):
    """Sentence embeddings of every STS dataset, and of the transform's fit corpus when it has one."""
    fit_on = STS["transforms"][wildcards.transform]["fit_on"]
    corpora = list(STS_DATASETS) + ([fit_on] if fit_on != "pool" and fit_on not in STS_DATASETS else [])
    return [sentences_file(wildcards.model, corpus) for corpus in corpora]


def finetune_settings(wildcards):
    """A fine-tuning job's settings: the finetune block's, with the task's per_task entries replacing them."""
    base = {k: v for k, v in FINETUNE.items() if k not in FT_NOT_JOB_SETTINGS}
    return json.dumps({**base, **FINETUNE["per_task"].get(wildcards.task, {})})


def finetune_mirror_files(wildcards):
    """The mirror files of a GLUE task (inputs, so that a changed file reruns its fine-tuning jobs)."""
    from tokenuni.glue import GLUE_TASKS

    spec = GLUE_TASKS[wildcards.task]
    paths = [f"{MIRROR}/{spec[split]}" for split in ("train", "dev")] if MIRROR else []
    return [path for path in paths if os.path.exists(path)]


def all_finetune_files(kind="summary.json"):
    return [
        f"{RESULTS}/finetune/{m}/{t}/{v}/seed{s}/{kind}"
        for m in FT_MODELS
        for t in FT_TASKS
        for v in FT_VARIANTS
        for s in FT_SEEDS
    ]


def all_sts_files(kind="scores"):
    return [
        f"{RESULTS}/sts/{m}/{p}/{t}/{kind}.parquet" for m in MODELS for p in STS_POOLINGS for t in STS_TRANSFORMS
    ]


def extra_figure_tables(wildcards, input):
    """``--<name> <path>`` for every input table of a figure rule but the drawn one (``table``)."""
    return " ".join(f"--{name} {shlex.quote(str(input[name]))}" for name in input.keys() if name != "table")


def all_targets(report=True):
    """Every final output of the study; ``report=False``: all but the HTML report (the report's inputs)."""
    targets = [f"{RESULTS}/mlflow/sync.json"]
    if METRIC_NAMES and GEOMETRY_CORPORA:  # a fine-tuning-only study (config/finetune-cpu.yaml) has none
        targets += [f"{RESULTS}/tables/metrics.parquet", f"{RESULTS}/tables/metrics.tsv"]
    targets += [png for png, _ in FIGURE_RUNS]  # workflow/rules/figures.smk
    if STS:
        targets += [f"{RESULTS}/tables/sts.parquet", f"{RESULTS}/tables/sts_summary.md"]
    if FT_MODELS:
        targets += [f"{RESULTS}/tables/finetune.parquet", f"{RESULTS}/tables/finetune_summary.md"]
    targets += PROJECTION_TARGETS  # workflow/rules/projection.smk
    if report:
        targets.append(f"{RESULTS}/report/index.html")
    return targets


def all_records():
    """Every run record the study produces (inputs of the MLflow sync): each rule's ``record`` output
    (``rules.<name>.output.record``) over the wildcard values the study uses, then the figure and projection
    records (FIGURE_RUNS, PROJECTION_RECORDS). Called once every rule is defined (tracking.smk)."""
    used = set(GEOMETRY_CORPORA) | set(SENTENCE_CORPORA)
    records = expand(rules.corpus.output.record, corpus=[c for c in CORPORA if c in used])
    # embed and embed_without_dump (no-dump corpora) write the same record
    records += expand(rules.embed.output.record, model=MODELS, corpus=GEOMETRY_CORPORA)
    records += expand(rules.stats.output.record, model=MODELS, corpus=DUMP_CORPORA)
    records += expand(rules.metric.output.record, model=MODELS, corpus=GEOMETRY_CORPORA, metric=METRIC_NAMES)
    records += expand(rules.sentence_embed.output.record, model=MODELS, corpus=SENTENCE_CORPORA)
    records += expand(rules.sts.output.record, model=MODELS, pooling=STS_POOLINGS, transform=STS_TRANSFORMS)
    if STS:
        records.append(rules.sts_table.output.record)
    records += expand(rules.finetune.output.record, model=FT_MODELS, task=FT_TASKS, variant=FT_VARIANTS, seed=FT_SEEDS)
    if FT_MODELS:
        records.append(rules.finetune_table.output.record)
    if METRIC_NAMES and GEOMETRY_CORPORA:
        records.append(rules.metrics_table.output.record)
    records += [run for _, run in FIGURE_RUNS]  # workflow/rules/figures.smk
    records += PROJECTION_RECORDS  # workflow/rules/projection.smk
    return records


def corpus_spec(name):
    return {"name": name, **config["corpora"][name]}


def corpus_mirror_files(wildcards):
    """The mirror files a corpus is read from (inputs, so that a changed file reruns the import)."""
    spec = config["corpora"][wildcards.corpus]
    return [str(path) for path in mirror_files(spec, MIRROR)] if corpus_uses_mirror(spec, MIRROR) else []


def check_sources_before_start():
    """Fail before any job starts, with one message listing everything `tokenuni check` finds: unresolvable
    models or corpora, model folders a job could not load, unsupported model families, config references out
    of range, corpus rows their reader refuses (tokenuni.check)."""
    from tokenuni.check import StudyCheckError, require_study

    try:
        require_study(config, MIRROR, probe_hub=True)
    except StudyCheckError as error:
        raise WorkflowError(str(error)) from None
