"""``tokenuni <stage>``: the command line every Snakemake rule calls (usable without Snakemake).

Each stage takes its configuration as JSON (exactly the config subtree it depends on), writes its
outputs atomically, and, with ``--record``, records itself as one MLflow run (see
:mod:`tokenuni.tracking`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from tokenuni.figure_kinds import EXTRA_TABLES, FIGURE_KINDS, draw

log = logging.getLogger("tokenuni")


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text[:200]}") from None


def _add_device_arguments(p) -> None:
    """--device (auto: CUDA when present) and --threads (CPU threads of torch), shared by the model and metric stages."""
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", type=Path, help="write this job's MLflow run record here")
    parser.add_argument("--job", type=_json, default={}, help='{"rule": ..., "wildcards": {...}} for the record')
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _job_run(args, params: dict):
    if not args.record:
        return nullcontext(None)
    from tokenuni.tracking import JobRun

    # live logging when the workflow points at an MLflow server (set by workflow/rules/common.smk)
    run = JobRun(args.record, rule=args.job.get("rule", args.command), wildcards=args.job.get("wildcards", {}),
                 params=params, live_tracking_uri=os.environ.get("TOKENUNI_MLFLOW_LIVE_URI"),
                 experiment=os.environ.get("TOKENUNI_MLFLOW_EXPERIMENT"))
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # the GPU lease (or SLURM) chose the devices
        run.set_tags({"tokenuni.cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]})
    return run


def _gpu_lease(args):
    """Stages that take ``--device`` lease one GPU before torch touches CUDA (see gpu_lease), unless the
    device is ``cpu`` or names one explicitly (``cuda:1``: the caller chose it)."""
    if getattr(args, "device", "cpu") not in ("auto", "cuda"):
        return nullcontext([])
    from tokenuni.gpu_lease import lease_gpu

    return lease_gpu(1)


def _expected(args, corpus: str | None = None) -> dict | None:
    """What the dump or sentence files a stage reads must have been written for (``--expect-model``)."""
    if not getattr(args, "expect_model", None):
        return None
    from tokenuni.sources import expected_provenance

    return expected_provenance(args.expect_model, corpus)


def _add_expect_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expect-model", type=_json, default=None,
                        help="the model's config entry (as embed got it): stop unless the input was written for it")


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- stages ----------------------------------------------------------------------------------------
def cmd_check(args) -> None:
    from tokenuni.check import require_study
    from tokenuni.config import data_mirror, load_config

    config = load_config(args.configfile)
    require_study(config, data_mirror(config), probe_hub=not args.no_hub_probe)
    print(f"{args.configfile}: every model and corpus resolves; models, config references and corpora check out")


def cmd_corpus(args) -> None:
    from tokenuni.corpora import import_corpus

    with _job_run(args, {"corpus": args.spec}) as run:
        summary = import_corpus(args.spec, args.mirror, args.out)
        if run:
            run.log_params({"source": summary.get("source")})
            run.log_metrics({"rows": summary["rows_after"], "rows_before_sampling": summary["rows_before"],
                             "rows_dropped_empty": summary["rows_dropped_empty"],
                             **{f"rows_skipped.{reason}": n for reason, n in summary["rows_skipped"].items()}})
            run.set_tags({"tokenuni.corpus_source": summary.get("source")})
            for item in summary.get("files", []):
                run.log_input(item["path"], context="mirror")
            run.log_artifact(args.out, "corpus")
    log.info("corpus %s: %s", args.spec.get("name"), {k: v for k, v in summary.items() if k != "files"})


def cmd_embed(args) -> None:
    """With ``--out``: the dump and its moments (``<dump>.moments.npz``); with ``--stats`` (and ``--plan``) instead: no
    dump, the embed stage feeds the metrics suite and writes its statistics (corpora larger than the disk)."""
    from tokenuni.devices import select_device
    from tokenuni.embed import embed_corpus
    from tokenuni.metrics.suite import Suite
    from tokenuni.statistics import LayerMoments, moments_path, save_statistics
    from tokenuni.store import PROVENANCE_KEYS

    if (args.out is None) == (args.stats is None):
        raise SystemExit("tokenuni embed: give --out DUMP (a dump and its moments) or --stats FILE --plan JSON (no dump)")
    _set_threads(args.threads)
    device = select_device(args.device)
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["sink"] = (LayerMoments(n_layers, device) if args.stats is None
                        else Suite(args.plan, n_layers, metadata, device=device))
        made["metadata"] = metadata
        return made["sink"]

    params = {"model": args.model} if args.stats is None else {"model": args.model, "plan": args.plan}
    with _job_run(args, params) as run:
        summary = embed_corpus(args.corpus, args.model, args.out, corpus_name=args.corpus_name, device=str(device),
                               progress=not args.no_progress, consumer=consumer)
        if args.stats is None:
            provenance = {key: made["metadata"][key] for key in PROVENANCE_KEYS if key in made["metadata"]}
            made["sink"].save(moments_path(args.out), {"rows": summary["tokens"], "dump": str(args.out), **provenance})
        else:
            statistics = made["sink"].statistics()
            save_statistics(statistics, args.stats)
        if run:
            run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            run.set_tags({"tokenuni.device": summary["device"], "tokenuni.model_source": summary["model_source"],
                          "tokenuni.dump_precision": summary["precision"]})
            run.log_input(args.corpus, context="corpus")
            run.log_input(args.out if args.stats is None else args.stats, context="dump" if args.stats is None else "stats")


def cmd_stats(args) -> None:
    """The metrics suite's one read of a dump: every enabled metric's sufficient statistics (see metrics.suite)."""
    import time

    from tokenuni.devices import select_device
    from tokenuni.metrics.suite import collect_statistics
    from tokenuni.statistics import save_statistics, statistics_size

    _set_threads(args.threads)
    device = select_device(args.device)
    with _job_run(args, {"plan": args.plan}) as run:
        started = time.perf_counter()
        statistics = collect_statistics(args.dump, args.plan, device=device, progress=not args.no_progress,
                                        model=args.model, corpus=args.corpus, expected=_expected(args, args.corpus))
        save_statistics(statistics, args.out)
        seconds = time.perf_counter() - started
        if run:
            run.set_tags({"tokenuni.device": str(device)})
            run.log_input(args.dump, context="dump")
            run.log_metrics({"reads": int(statistics["reads"]), "seconds": round(seconds, 3),
                             "statistics_bytes": statistics_size(statistics)})
    log.info("statistics of %s/%s (%d read(s), %.1f s) -> %s", args.model, args.corpus, int(statistics["reads"]),
             seconds, args.out)


def cmd_metric(args) -> None:
    import pandas as pd

    from tokenuni.devices import select_device
    from tokenuni.metrics import compute_metric
    from tokenuni.tables import write_table

    _set_threads(args.threads)
    device = select_device(args.device)
    if (args.dump is None) == (args.stats is None):
        raise SystemExit("tokenuni metric: give --stats FILE (derive from the suite's statistics) or --dump FILE")
    with _job_run(args, {"metric": {args.name: args.options}}) as run:
        if args.stats is not None:  # the one-pass suite: derive from its statistics (no read of the dump)
            from tokenuni.metrics.suite import derive_metric
            from tokenuni.statistics import load_statistics

            table = derive_metric(load_statistics(args.stats), args.name, args.options, model=args.model,
                                  corpus=args.corpus, device=device, expected=_expected(args, args.corpus),
                                  path=args.stats)
        else:
            table = compute_metric(args.dump, args.name, args.options, model=args.model, corpus=args.corpus,
                                   device=device, progress=not args.no_progress, expected=_expected(args, args.corpus))
        write_table(table, args.out)
        if run:
            run.set_tags({"tokenuni.device": str(device)})
            run.log_input(args.stats or args.dump, context="stats" if args.stats else "dump")
            from tokenuni.tracking import log_tidy_metrics

            log_tidy_metrics(run, table)  # <row>[.<variant>] with step = layer: the headline metrics read these
            sampled = table[table["sample_size"].notna()].drop_duplicates("metric")
            run.log_params({f"sampling.{row.metric}": {"sample_size": int(row.sample_size),  # the size used
                                                       "seed": None if pd.isna(row.seed) else int(row.seed),
                                                       **({"requested": args.options["sample_size"]}
                                                          if args.options.get("sample_size")
                                                          not in (None, row.sample_size) else {})}
                            for row in sampled.itertuples()})
            run.log_artifact(args.out, "metrics")
    log.info("metric %s on %s/%s: %d rows -> %s", args.name, args.model, args.corpus, len(table), args.out)


def cmd_projection(args) -> None:
    import pandas as pd

    from tokenuni.devices import select_device
    from tokenuni.projection import projection_options, token_projection
    from tokenuni.tables import write_table

    _set_threads(args.threads)
    device = select_device(args.device)
    options = projection_options(args.options, args.clusters_table)
    with _job_run(args, {"projection": args.options}) as run:
        table = token_projection(args.dump, model=args.model, corpus=args.corpus, device=device,
                                 progress=not args.no_progress, expected=_expected(args, args.corpus), **options)
        write_table(table, args.out)
        if run:
            run.set_tags({"tokenuni.device": str(device)})
            run.log_input(args.dump, context="stats" if str(args.dump).endswith(".npz") else "dump")
            if args.clusters_table:
                run.log_input(args.clusters_table, context="clusters")
            per_layer = table.drop_duplicates("layer")
            for row in per_layer.itertuples():
                run.log_metrics({column: getattr(row, column) for column in per_layer.columns
                                 if column.startswith("explained_variance_ratio_pc")}, step=row.layer)
                if pd.notna(row.cluster_k):
                    run.log_metric("cluster_k", int(row.cluster_k), step=row.layer)
            run.log_params({"sampling.projection": {"sample_size": options["sample_size"], "seed": options["seed"]}})
            run.log_artifact(args.out, "projections")
    log.info("projection %s/%s: %d rows -> %s", args.model, args.corpus, len(table), args.out)


def cmd_projection_figure(args) -> None:
    from tokenuni.figures.projection import plot_token_projection
    from tokenuni.tables import read_table

    params = {"colour_by": args.colour_by, "dims": args.dims, "layers": args.layers}
    with _job_run(args, params) as run:
        table = read_table(args.table)
        if args.model_label:
            table["model_label"] = args.model_label
        plot_token_projection(table, args.png, args.svg, args.pdf, layers=args.layers, colour_by=args.colour_by,
                              dims=args.dims)
        if run:
            run.log_input(args.table, context="projection")
            for path in (args.png, args.svg, args.pdf):
                if path:
                    run.log_artifact(path, "figures")


def cmd_table(args) -> None:
    from tokenuni.tables import merge_tables, write_table

    with _job_run(args, {"inputs": [str(p) for p in args.inputs]}) as run:
        table = merge_tables(args.inputs)
        write_table(table, args.out)
        if args.tsv:
            write_table(table, args.tsv)
        if run:
            run.log_metrics({"rows": len(table)})
            run.log_artifact(args.out, "tables")
            if args.tsv:
                run.log_artifact(args.tsv, "tables")


def cmd_figure(args) -> None:
    from tokenuni.tables import read_table

    params = {"kind": args.kind, "metric": args.metric, "variant": args.variant, "pooling": args.pooling}
    with _job_run(args, params) as run:
        table = read_table(args.table)
        if args.model_label:
            table["model_label"] = args.model_label
        elif args.model_labels and "model" in table.columns:
            table["model_label"] = table["model"].astype(str).map(args.model_labels)
        out = (args.png, args.svg, args.pdf)
        options = {"metric": args.metric, "variant": args.variant, "pooling": args.pooling, "model": args.model}
        options.update({name: read_table(getattr(args, name)) for name in EXTRA_TABLES if getattr(args, name)})
        draw(args.kind, table, out, options)
        if run:
            run.log_input(args.table, context="table")
            for path in out:
                if path:
                    run.log_artifact(path, "figures")


def cmd_sentences(args) -> None:
    from tokenuni.sentences import embed_sentences

    _set_threads(args.threads)
    with _job_run(args, {"model": args.model, "poolings": args.poolings}) as run:
        summary = embed_sentences(args.corpus, args.model, args.poolings, args.out, corpus_name=args.corpus_name,
                                  device=args.device, progress=not args.no_progress)
        if run:
            run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            run.set_tags({"tokenuni.device": summary.get("device", "")})
            run.log_input(args.out, context="sentence_embeddings")
    log.info("sentence embeddings %s: %s", args.out, summary)


def cmd_sts(args) -> None:
    from tokenuni.devices import select_device
    from tokenuni.tables import write_table
    from tokenuni.sts.evaluation import evaluate_transform

    _set_threads(args.threads)
    device = select_device(args.device)
    files = {Path(p).stem: Path(p) for p in args.sentences}
    datasets = [d for d in args.datasets.split(",") if d]
    geometry_metrics = [m for m in args.geometry_metrics.split(",") if m]
    with _job_run(args, {"transform": {args.transform_name: args.transform}, "pooling": args.pooling,
                         "datasets": datasets, "geometry_metrics": geometry_metrics}) as run:
        scores, geometry = evaluate_transform(files, datasets, model=args.model, pooling=args.pooling,
                                              transform_name=args.transform_name, transform_spec=args.transform,
                                              geometry_metrics=geometry_metrics, fitted_dir=args.fitted_dir,
                                              device=device, expected=_expected(args))
        write_table(scores, args.scores)
        write_table(geometry, args.geometry)
        if run:
            run.log_params({"fit_on": args.transform.get("fit_on", "pool"), "transform_type": args.transform["type"],
                            "fitted_on": sorted(set(scores["fit_on"])),
                            "fitted": dict(zip(scores["dataset"], scores["fitted"]))})  # the values used
            for row in scores[scores["protocol"].isin(["all", "mean_over_subsets", "concatenated"])].itertuples():
                suffix = "" if row.protocol == "all" else f".{row.protocol}"
                run.log_metrics({f"spearman.{row.dataset}{suffix}": row.spearman,
                                 f"pearson.{row.dataset}{suffix}": row.pearson})
            for row in geometry.itertuples():
                key = f"{row.metric}{'.' + row.variant if row.variant else ''}.{row.dataset}"
                run.log_metric(key, row.value)
            run.log_artifact(args.scores, "sts")
            run.log_artifact(args.geometry, "sts")
            if args.fitted_dir and Path(args.fitted_dir).is_dir():
                for fitted in sorted(Path(args.fitted_dir).glob("*.npz")):
                    run.log_artifact(fitted, "fitted_transform")


def cmd_sts_table(args) -> None:
    import pandas as pd

    from tokenuni.tables import write_table
    from tokenuni.sts.summary import write_summary

    with _job_run(args, {"inputs": len(args.scores)}) as run:
        scores = pd.concat([pd.read_parquet(p) for p in args.scores], ignore_index=True)
        geometry = pd.concat([pd.read_parquet(p) for p in args.geometry], ignore_index=True) if args.geometry else None
        write_table(scores, args.out)
        if args.tsv:
            write_table(scores, args.tsv)
        if args.geometry_out is not None and geometry is not None:
            write_table(geometry, args.geometry_out)
        tables = write_summary(scores, geometry, args.markdown, args.html)
        print(Path(args.markdown).read_text(encoding="utf-8"))
        if run:
            run.log_metrics({"rows": len(scores)})
            for path in (args.out, args.tsv, args.geometry_out, args.markdown, args.html):
                if path:
                    run.log_artifact(path, "tables")
    log.info("STS table: %d rows, %d summary tables -> %s", len(scores), len(tables), args.markdown)


def _process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and the CLI's imports), if psutil is there."""
    try:
        import time

        import psutil
    except ImportError:
        return None
    return max(0.0, time.time() - psutil.Process().create_time())


def cmd_finetune(args) -> None:
    import json as json_module
    import time

    startup, startup_cpu = _process_seconds(), time.process_time()
    cli_started, cli_cpu = time.perf_counter(), time.process_time()
    from tokenuni.devices import select_device
    from tokenuni.files import atomic_path
    from tokenuni.finetune.job import run_finetune, write_predictions
    from tokenuni.tables import write_table

    _set_threads(args.threads)
    device = select_device(args.device)
    with _job_run(args, {"model": args.model, "task": args.task, "variant": {args.variant_name: args.variant},
                         "seed": args.seed, "settings": args.settings}) as run:
        # torch (threads, device), the tracking module
        cli_imports, cli_imports_cpu = time.perf_counter() - cli_started, time.process_time() - cli_cpu
        summary, geometry = run_finetune(
            args.model, model_key=args.model_key, task=args.task, variant_name=args.variant_name,
            variant=args.variant, seed=args.seed, settings=args.settings, mirror_root=args.mirror or None,
            device=device, log_metric=(run.log_metric if run else None), progress=not args.no_progress)
        started, started_cpu = time.perf_counter(), time.process_time()
        # the metric's own variant/seed columns keep their meaning under other names
        geometry = geometry.rename(columns={"variant": "metric_variant", "seed": "sample_seed"}).assign(
            task=args.task, variant=args.variant_name, seed=args.seed)
        write_table(geometry, args.geometry)
        summary.update(task=args.task, seed=args.seed)
        write_predictions(args.predictions, summary)
        timings, cpu = summary["timings"], summary["timings_cpu"]
        timings["imports"] += cli_imports
        cpu["imports"] += cli_imports_cpu
        if startup is not None:
            timings["startup"], cpu["startup"] = startup, startup_cpu
        # the run record's own write follows
        timings["write"], cpu["write"] = time.perf_counter() - started, time.process_time() - started_cpu
        summary["seconds_total"], summary["cpu_seconds_total"] = sum(timings.values()), sum(cpu.values())
        record = {k: v for k, v in summary.items() if k not in ("curves", "dev_logits", "dev_labels")}
        with atomic_path(args.summary) as tmp:
            Path(tmp).write_text(json_module.dumps(record, indent=1, default=float), encoding="utf-8")
        if run:
            run.set_tags({"tokenuni.device": str(device), "tokenuni.precision": summary.get("precision", "")})
            run.log_metrics({f"final/{k}": v for k, v in summary["dev"].items()}, step=summary["steps"])
            run.log_metrics({"seconds": summary["seconds"], "tokens_per_second": summary["tokens_per_second"],
                             **{f"seconds_per_epoch/{i}": t for i, t in enumerate(summary["seconds_per_epoch"])},
                             **{f"seconds/{stage}": t for stage, t in timings.items()}})
            for row in geometry[geometry["component"].isna()].itertuples():
                key = f"geometry/{row.metric}{'.' + row.metric_variant if row.metric_variant else ''}"
                run.log_metric(key, row.value, step=row.layer)
            for path in (args.summary, args.geometry, args.predictions):
                run.log_artifact(path, "finetune")


def cmd_finetune_table(args) -> None:
    from tokenuni.files import atomic_path
    from tokenuni.finetune.summary import study_tables
    from tokenuni.tables import write_table

    with _job_run(args, {"inputs": len(args.summaries), "bootstrap": args.bootstrap, "baseline": args.baseline}) as run:
        tables = study_tables(args.summaries, args.predictions, args.geometry, baseline=args.baseline,
                              n_boot=args.bootstrap, seed=args.bootstrap_seed)
        outputs = [(tables["results"], args.out), (tables["results"], args.tsv),
                   (tables["summary"], args.summary_table), (tables["summary"], args.summary_tsv),
                   (tables["isotropy"], args.isotropy), (tables["geometry"], args.geometry_out)]
        for table, path in outputs:
            if path is not None and table is not None:
                write_table(table, path)
        with atomic_path(args.markdown) as tmp:
            Path(tmp).write_text(tables["markdown"], encoding="utf-8")
        print(tables["markdown"])
        if run:
            counts = tables["summary"]["verdict"].value_counts()
            run.log_metrics({"runs": len(tables["results"]), **{f"verdicts/{k}": int(v) for k, v in counts.items() if k}})
            for _, path in [*outputs, (None, args.markdown)]:
                if path:
                    run.log_artifact(path, "tables")


def cmd_sync(args) -> None:
    from tokenuni.files import atomic_path
    from tokenuni.tracking import failed_records, sync_records

    records = list(args.records)
    if args.failed_dir:  # failed jobs, and killed ones (their started markers, runs/started/)
        records += failed_records(args.failed_dir, records)
    result = sync_records(records, tracking_uri=args.tracking_uri, experiment=args.experiment,
                          artifact_location=args.artifact_location)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"MLflow: {result['imported']} run(s) imported, {result['skipped']} already present "
          f"({result['tracking_uri']}, experiment {result['experiment']})")


def cmd_report(args) -> None:
    from tokenuni.report import build_report

    summary = build_report(args.results, args.config, args.out, run_records_dir=args.runs, sync_file=args.sync,
                           captions_dir=args.captions)
    print(f"report: {summary['path']} ({summary['bytes'] / 1e6:.1f} MB, {summary['figures']} figures, "
          f"{summary['runs']} of {summary['records']} jobs with an MLflow run)")


def cmd_tiny_models(args) -> None:
    from tokenuni.config import data_mirror
    from tokenuni.tiny_models import build_tiny_models, training_texts

    mirror = args.mirror or data_mirror({})  # training_texts says how to set it when there is none
    built = build_tiny_models(args.out, training_texts(mirror), args.families.split(","), seed=args.seed)
    for family, path in built.items():
        print(f"{family}: {path}")


def cmd_measure(args) -> None:
    import shlex

    from tokenuni.measure_workflow import run_measure

    code = run_measure(args.model, args.texts, metrics=args.metrics, results=args.results, cores=args.cores,
                       text_format=args.format, max_sentences=args.max_sentences, seed=args.seed,
                       batch_size=args.batch_size, max_length=args.max_length,
                       snakemake_args=shlex.split(args.snakemake_args or ""))
    if code:
        sys.exit(code)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenuni", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check a study before its first job: sources, models (config, tokenizer, "
                                     "weight headers), config references, every corpus through its reader")
    p.add_argument("configfile", type=Path)
    p.add_argument("--no-hub-probe", action="store_true", help="treat the hub as reachable")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("measure", help="one model on one text file: the workflow's geometry, the per-layer table, "
                                       "figure, report and MLflow runs (tokenuni/measure_workflow.py)")
    p.add_argument("model", help="hub id (org/name, or org/name@revision) or a local model folder")
    p.add_argument("texts", help="a text file (one text per line), a YAML file with one corpus entry, or a corpus "
                                 "key of config/config.yaml (wikitext, stsb-test, ...)")
    p.add_argument("--metrics", default=None, help="comma-separated metric names (default: spectrum,cosine_family,"
                                                    "isoscore,token_uniformity; e.g. add clusters,lid)")
    p.add_argument("--results", default=None, help="the results folder (default: results/measure/<model>--<texts>)")
    p.add_argument("--cores", type=int, default=None, help="Snakemake cores (default: all)")
    p.add_argument("--format", default="lines", help="mirror format of a text file (lines, wikitext, ...)")
    p.add_argument("--max-sentences", type=int, default=None, help="a seeded sample of this many sentences")
    p.add_argument("--seed", type=int, default=0, help="seed of that sample")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None, help="tokens per text (longer ones are truncated)")
    p.add_argument("--snakemake-args", default=None, help='more Snakemake options, e.g. "--dry-run"')
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("corpus", help="import a corpus (mirror or hub) into normalised Parquet")
    p.add_argument("--spec", type=_json, required=True, help="the corpus's config entry, with its name")
    p.add_argument("--mirror", default=None, help="local data mirror folder")
    p.add_argument("--out", type=Path, required=True)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("embed", help="dump every layer's hidden states of a model over a corpus")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--corpus-name", default="")
    p.add_argument("--model", type=_json, required=True, help="the model's config entry")
    p.add_argument("--out", type=Path, default=None, help="the dump (its moments go to <dump>.moments.npz)")
    p.add_argument("--stats", type=Path, default=None, help="no dump: write the metrics suite's statistics here")
    p.add_argument("--plan", type=_json, default=None, help="with --stats: the suite's plan (metrics.suite.pass_plan)")
    _add_device_arguments(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("stats", help="one read of a dump: the statistics of every metric of the suite")
    p.add_argument("--dump", type=Path, required=True)
    p.add_argument("--plan", type=_json, required=True, help="the suite's plan (metrics.suite.pass_plan)")
    p.add_argument("--model", required=True, help="model key (for the log)")
    p.add_argument("--corpus", required=True, help="corpus key (for the log)")
    p.add_argument("--out", type=Path, required=True)
    _add_device_arguments(p)
    _add_expect_model(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("metric", help="compute one metric for every layer (from the suite's statistics, or a dump)")
    p.add_argument("name")
    p.add_argument("--stats", type=Path, default=None, help="the statistics of `tokenuni stats` (or embed --stats)")
    p.add_argument("--dump", type=Path, default=None, help="or stream a dump for this one metric")
    p.add_argument("--options", type=_json, default={})
    p.add_argument("--model", required=True, help="model key (for the table)")
    p.add_argument("--corpus", required=True, help="corpus key (for the table)")
    p.add_argument("--out", type=Path, required=True)
    _add_device_arguments(p)
    _add_expect_model(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_metric)

    p = sub.add_parser("projection", help="project a seeded token sample on each layer's principal components")
    p.add_argument("--dump", type=Path, required=True,
                   help="a dump (one read), or the metrics suite's statistics (.npz: no dump needed)")
    p.add_argument("--options", type=_json, default={},
                   help='{"layers": null, "sample_size": 5000, "seed": 0, "components": 3, "clusters": "mms"|k|null, ...}')
    p.add_argument("--clusters-table", type=Path, default=None,
                   help='the clusters metric table whose mms_k per layer "clusters": "mms" uses')
    p.add_argument("--model", required=True, help="model key (for the table)")
    p.add_argument("--corpus", required=True, help="corpus key (for the table)")
    p.add_argument("--out", type=Path, required=True)
    _add_device_arguments(p)
    _add_expect_model(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_projection)

    p = sub.add_parser("projection-figure", help="PCA views of a layer's tokens from a projection table")
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--colour-by", choices=["frequency", "cluster"], default="frequency")
    p.add_argument("--dims", type=int, choices=[2, 3], default=2)
    p.add_argument("--layers", type=_json, default=None, help="JSON list of layers (default: all in the table)")
    p.add_argument("--model-label", default=None)
    p.add_argument("--png", type=Path, required=True)
    p.add_argument("--svg", type=Path, default=None)
    p.add_argument("--pdf", type=Path, default=None)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_projection_figure)

    p = sub.add_parser("table", help="merge tidy metric tables into one")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tsv", type=Path, default=None)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("figure", help="draw a figure from a tidy table")
    p.add_argument("kind", choices=list(FIGURE_KINDS),
                   help="; ".join(f"{name} (the {kind.reads}" + "".join(f", with --{n}" for n in kind.needs) + ")"
                                  for name, kind in FIGURE_KINDS.items()))
    p.add_argument("--table", type=Path, required=True, help="the tidy table (.parquet or .tsv)")
    for name, what in EXTRA_TABLES.items():
        users = ", ".join(kind for kind, spec in FIGURE_KINDS.items() if name in spec.needs)
        p.add_argument(f"--{name}", type=Path, default=None, help=f"{users}: {what}")
    p.add_argument("--metric", default=None)
    p.add_argument("--variant", default="uncentred")
    p.add_argument("--pooling", default="mean_last", help="sts-scores, sts-geometry: the pooling drawn")
    p.add_argument("--model", default=None, help="sts-table: the model drawn (needed when the table holds several)")
    p.add_argument("--model-label", default=None, help="display name of the table's (single) model")
    p.add_argument("--model-labels", type=_json, default=None, help='{"<model key>": "<display name>", ...}')
    p.add_argument("--png", type=Path, required=True)
    p.add_argument("--svg", type=Path, default=None)
    p.add_argument("--pdf", type=Path, default=None)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_figure)

    p = sub.add_parser("sentences", help="pooled sentence embeddings of a corpus (one forward pass, every pooling)")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--corpus-name", default="")
    p.add_argument("--model", type=_json, required=True, help="the model's config entry")
    p.add_argument("--poolings", type=_json, required=True, help='{"name": {"pool": "mean", "layers": [-1]}, ...}')
    p.add_argument("--out", type=Path, required=True)
    _add_device_arguments(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_sentences)

    p = sub.add_parser("sts", help="fit a post-hoc transform, apply it, evaluate unsupervised STS")
    p.add_argument("sentences", nargs="+", type=Path, help="sentence-embedding files, named <corpus key>.arrow")
    p.add_argument("--model", required=True, help="model key (for the table)")
    p.add_argument("--pooling", required=True)
    p.add_argument("--transform-name", required=True)
    p.add_argument("--transform", type=_json, required=True, help='{"type": ..., "fit_on": "pool", "params": {...}}')
    p.add_argument("--datasets", required=True, help="comma-separated corpus keys to evaluate")
    p.add_argument("--geometry-metrics", default="cosine_family,isoscore,partition_isotropy,spectrum")
    p.add_argument("--scores", type=Path, required=True)
    p.add_argument("--geometry", type=Path, required=True)
    p.add_argument("--fitted-dir", type=Path, default=None)
    _add_device_arguments(p)
    _add_expect_model(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_sts)

    p = sub.add_parser("sts-table", help="merge STS scores; write the papers'-style summary (Markdown, HTML)")
    p.add_argument("--scores", nargs="+", type=Path, required=True)
    p.add_argument("--geometry", nargs="*", type=Path, default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tsv", type=Path, default=None)
    p.add_argument("--geometry-out", type=Path, default=None)
    p.add_argument("--markdown", type=Path, required=True)
    p.add_argument("--html", type=Path, required=True)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_sts_table)

    p = sub.add_parser("finetune", help="fine-tune a model on a GLUE task with a variant and a seed")
    p.add_argument("--model", type=_json, required=True, help="the model's config entry")
    p.add_argument("--model-key", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--variant-name", required=True)
    p.add_argument("--variant", type=_json, default={})
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", type=_json, required=True, help="the config's finetune block (epochs, lr, ...)")
    p.add_argument("--mirror", default=None)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--geometry", type=Path, required=True)
    p.add_argument("--predictions", type=Path, required=True, help="per-example dev predictions (Parquet)")
    _add_device_arguments(p)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("finetune-table", help="merge fine-tuning results; variants vs baseline and chance with 95%% "
                       "intervals, isotropy vs score, time split (Markdown, TSV, Parquet)")
    p.add_argument("--summaries", nargs="+", type=Path, required=True)
    p.add_argument("--predictions", nargs="+", type=Path, required=True, help="the jobs' predictions.parquet")
    p.add_argument("--geometry", nargs="*", type=Path, default=[])
    p.add_argument("--out", type=Path, required=True, help="one row per run (.parquet)")
    p.add_argument("--tsv", type=Path, default=None)
    p.add_argument("--geometry-out", type=Path, default=None)
    p.add_argument("--summary-table", type=Path, default=None, help="per (model, task, variant) with intervals")
    p.add_argument("--summary-tsv", type=Path, default=None)
    p.add_argument("--isotropy", type=Path, default=None, help="isotropy vs score rank correlations (.tsv)")
    p.add_argument("--markdown", type=Path, required=True)
    p.add_argument("--baseline", default="baseline", help="the variant the others are compared with")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the dev examples")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    _add_job_arguments(p)
    p.set_defaults(func=cmd_finetune_table)

    p = sub.add_parser("sync", help="import run records into MLflow (the single writer)")
    p.add_argument("records", nargs="*", type=Path)
    p.add_argument("--failed-dir", type=Path, default=None, help="also import the failed-job records found here, and KILLED records for the killed "
                   "jobs whose started markers are in its sibling started/")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--artifact-location", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("report", help="the study's static HTML report (one offline file, figures embedded)")
    p.add_argument("--results", type=Path, required=True, help="the study's results folder")
    p.add_argument("--config", type=Path, nargs="+", required=True, help="the config file(s) of the study")
    p.add_argument("--out", type=Path, required=True, help="e.g. results/report/index.html")
    p.add_argument("--runs", type=Path, default=None, help="run records (default: <results>/runs)")
    p.add_argument("--sync", type=Path, default=None, help="MLflow sync output (default: <results>/mlflow/sync.json)")
    p.add_argument("--captions", type=Path, default=None, help="figure captions (default: the package's, tokenuni/resources/captions)")
    p.set_defaults(func=cmd_report)

    from tokenuni.tiny_models import PAPER_FAMILIES, TINY_FAMILIES

    p = sub.add_parser("tiny-models", help="save small random-init models of each family (config/paper-tiny.yaml)")
    p.add_argument("--out", type=Path, required=True, help="folder; each model goes to <out>/<family>")
    p.add_argument("--families", default=",".join(PAPER_FAMILIES), help=f"comma-separated, of {', '.join(TINY_FAMILIES)}")
    p.add_argument("--mirror", default=None, help="data mirror with wikitext-2/ (default: $TOKENUNI_DATA)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_tiny_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "filelock", "httpx", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tokenuni.errors import TokenuniError

    try:
        with _gpu_lease(args):
            args.func(args)
    except TokenuniError as error:  # a user error: its message says what and how to fix it; anything else is a bug
        log.error("%s", error)
        if args.verbose:
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
