"""The STS stages: ``sentences`` (pooled sentence embeddings), ``sts`` (a transform over every STS dataset) and
``sts-table`` (the papers'-style summary)."""
from __future__ import annotations

import logging
from pathlib import Path

from tokenuni.cli.common import (add_device_arguments, add_job_arguments, add_reader_arguments,
                                 expected_inputs, job_run, json_argument, set_threads)

log = logging.getLogger("tokenuni")


def cmd_sentences(args) -> None:
    from tokenuni.sentences import embed_sentences

    set_threads(args.threads)
    with job_run(args, {"model": args.model, "poolings": args.poolings}) as run:
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

    set_threads(args.threads)
    device = select_device(args.device)
    files = {Path(p).stem: Path(p) for p in args.sentences}
    datasets = [d for d in args.datasets.split(",") if d]
    geometry_metrics = [m for m in args.geometry_metrics.split(",") if m]
    with job_run(args, {"transform": {args.transform_name: args.transform}, "pooling": args.pooling,
                         "datasets": datasets, "geometry_metrics": geometry_metrics}) as run:
        scores, geometry = evaluate_transform(files, datasets, model=args.model, pooling=args.pooling,
                                              transform_name=args.transform_name, transform_spec=args.transform,
                                              geometry_metrics=geometry_metrics, fitted_dir=args.fitted_dir,
                                              device=device, expected=expected_inputs(args))
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

    with job_run(args, {"inputs": len(args.scores)}) as run:
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


def add_parsers(sub) -> None:
    """Register this module's commands on the ``tokenuni`` subparsers."""
    p = sub.add_parser("sentences", help="pooled sentence embeddings of a corpus (one forward pass, every pooling)")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--corpus-name", default="")
    p.add_argument("--model", type=json_argument, required=True, help="the model's config entry")
    p.add_argument("--poolings", type=json_argument, required=True, help='{"name": {"pool": "mean", "layers": [-1]}, ...}')
    p.add_argument("--out", type=Path, required=True)
    add_device_arguments(p)
    add_job_arguments(p)
    p.set_defaults(func=cmd_sentences)

    p = sub.add_parser("sts", help="fit a post-hoc transform, apply it, evaluate unsupervised STS")
    p.add_argument("sentences", nargs="+", type=Path, help="sentence-embedding files, named <corpus key>.arrow")
    p.add_argument("--model", required=True, help="model key (for the table)")
    p.add_argument("--pooling", required=True)
    p.add_argument("--transform-name", required=True)
    p.add_argument("--transform", type=json_argument, required=True, help='{"type": ..., "fit_on": "pool", "params": {...}}')
    p.add_argument("--datasets", required=True, help="comma-separated corpus keys to evaluate")
    p.add_argument("--geometry-metrics", default="cosine_family,isoscore,partition_isotropy,spectrum")
    p.add_argument("--scores", type=Path, required=True)
    p.add_argument("--geometry", type=Path, required=True)
    p.add_argument("--fitted-dir", type=Path, default=None)
    add_reader_arguments(p)
    p.set_defaults(func=cmd_sts)

    p = sub.add_parser("sts-table", help="merge STS scores; write the papers'-style summary (Markdown, HTML)")
    p.add_argument("--scores", nargs="+", type=Path, required=True)
    p.add_argument("--geometry", nargs="*", type=Path, default=[])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tsv", type=Path, default=None)
    p.add_argument("--geometry-out", type=Path, default=None)
    p.add_argument("--markdown", type=Path, required=True)
    p.add_argument("--html", type=Path, required=True)
    add_job_arguments(p)
    p.set_defaults(func=cmd_sts_table)
