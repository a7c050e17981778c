"""The STS stages: ``sentences`` (pooled sentence embeddings), ``sts`` (a transform over every STS dataset) and
``sts-table`` (the papers'-style summary)."""
from __future__ import annotations

from pathlib import Path

from tokenuni.cli.common import (add_device_arguments, add_job_arguments, add_reader_arguments,
                                 expected_inputs, json_argument, run_stage, set_threads)
from tokenuni.stages import sts as stages


def cmd_sentences(args) -> None:
    set_threads(args.threads)
    run_stage(args, {"model": args.model, "poolings": args.poolings}, stages.sentences, args.corpus, args.model,
              args.poolings, args.out, corpus_name=args.corpus_name, device=args.device,
              progress=not args.no_progress)


def cmd_sts(args) -> None:
    from tokenuni.devices import select_device

    set_threads(args.threads)
    device = select_device(args.device)
    files = {Path(p).stem: Path(p) for p in args.sentences}
    datasets = [d for d in args.datasets.split(",") if d]
    geometry_metrics = [m for m in args.geometry_metrics.split(",") if m]
    params = {"transform": {args.transform_name: args.transform}, "pooling": args.pooling, "datasets": datasets,
              "geometry_metrics": geometry_metrics}
    run_stage(args, params, stages.sts, files, datasets, model=args.model, pooling=args.pooling,
              transform_name=args.transform_name, transform=args.transform, geometry_metrics=geometry_metrics,
              scores_path=args.scores, geometry_path=args.geometry, fitted_dir=args.fitted_dir, device=device,
              expected=expected_inputs(args))


def cmd_sts_table(args) -> None:
    run_stage(args, {"inputs": len(args.scores)}, stages.sts_table, args.scores, args.geometry, args.out,
              markdown=args.markdown, tsv=args.tsv, geometry_out=args.geometry_out, html=args.html)
    print(Path(args.markdown).read_text(encoding="utf-8"))


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
