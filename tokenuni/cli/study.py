"""The study as a whole: ``check`` (before the first job), ``measure`` (one model on one text file, through the
workflow), ``sync`` (run records into MLflow), ``report`` (the offline HTML report), ``tiny-models``."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path


log = logging.getLogger("tokenuni")


# -- stages ----------------------------------------------------------------------------------------
def cmd_check(args) -> None:
    from tokenuni.check import require_study
    from tokenuni.config import data_mirror, load_config

    config = load_config(args.configfile)
    require_study(config, data_mirror(config), probe_hub=not args.no_hub_probe)
    print(f"{args.configfile}: every model and corpus resolves; models, config references and corpora check out")


def cmd_schema(args) -> None:
    """The whole config schema as YAML: the file, with every metric's entry from its module."""
    import yaml

    from tokenuni.config import load_schema

    print(yaml.safe_dump(load_schema(), sort_keys=False, allow_unicode=True, width=120), end="")


def cmd_measure(args) -> None:
    import shlex

    from tokenuni.measure_workflow import run_measure

    code = run_measure(args.model, args.texts, metrics=args.metrics, results=args.results, cores=args.cores,
                       text_format=args.format, max_sentences=args.max_sentences, seed=args.seed,
                       batch_size=args.batch_size, max_length=args.max_length,
                       snakemake_args=shlex.split(args.snakemake_args or ""))
    if code:
        sys.exit(code)


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


def add_parsers(sub) -> None:
    """Register this module's commands on the ``tokenuni`` subparsers."""
    p = sub.add_parser("check", help="check a study before its first job: sources, models (config, tokenizer, "
                                     "weight headers), config references, every corpus through its reader")
    p.add_argument("configfile", type=Path)
    p.add_argument("--no-hub-probe", action="store_true", help="treat the hub as reachable")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("schema", help="print the whole config schema (YAML): the schema file plus each metric's "
                                      "options, which its module declares (options_schema)")
    p.set_defaults(func=cmd_schema)

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
