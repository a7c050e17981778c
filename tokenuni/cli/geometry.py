"""The geometry stages: ``corpus`` (import), ``embed`` (per-layer dumps), ``stats`` (one read of a dump),
``metric`` (one metric's table), ``projection`` and ``projection-figure`` (PCA views), ``table`` (merge) and
``figure`` (any figure kind of :mod:`tokenuni.figure_kinds`): each parses its arguments and calls its stage in
:mod:`tokenuni.stages.geometry`, whose result :func:`tokenuni.cli.common.run_stage` records."""
from __future__ import annotations

from pathlib import Path

from tokenuni.cli.common import (add_device_arguments, add_job_arguments, add_reader_arguments,
                                 expected_inputs, json_argument, run_stage, set_threads)
from tokenuni.figure_kinds import EXTRA_TABLES, FIGURE_KINDS
from tokenuni.stages import geometry as stages


def cmd_corpus(args) -> None:
    run_stage(args, {"corpus": args.spec}, stages.corpus, args.spec, args.mirror, args.out)


def cmd_embed(args) -> None:
    """With ``--out``: the dump and its moments (``<dump>.moments.npz``); with ``--stats`` (and ``--plan``) instead: no
    dump, the embed stage feeds the metrics suite and writes its statistics (corpora larger than the disk)."""
    from tokenuni.devices import select_device

    if (args.out is None) == (args.stats is None):
        raise SystemExit("tokenuni embed: give --out DUMP (a dump and its moments) or --stats FILE --plan JSON (no dump)")
    set_threads(args.threads)
    device = select_device(args.device)
    params = {"model": args.model} if args.stats is None else {"model": args.model, "plan": args.plan}
    run_stage(args, params, stages.embed, args.corpus, args.model, out=args.out, stats=args.stats, plan=args.plan,
              corpus_name=args.corpus_name, device=device, progress=not args.no_progress)


def cmd_stats(args) -> None:
    """The metrics suite's one read of a dump: every enabled metric's sufficient statistics (see metrics.suite)."""
    from tokenuni.devices import select_device

    set_threads(args.threads)
    device = select_device(args.device)
    run_stage(args, {"plan": args.plan}, stages.stats, args.dump, args.plan, args.out, model=args.model,
              corpus=args.corpus, device=device, progress=not args.no_progress,
              expected=expected_inputs(args, args.corpus))


def cmd_metric(args) -> None:
    from tokenuni.devices import select_device

    set_threads(args.threads)
    device = select_device(args.device)
    if (args.dump is None) == (args.stats is None):
        raise SystemExit("tokenuni metric: give --stats FILE (derive from the suite's statistics) or --dump FILE")
    run_stage(args, {"metric": {args.name: args.options}}, stages.metric, args.name, args.options, args.out,
              model=args.model, corpus=args.corpus, stats=args.stats, dump=args.dump, device=device,
              progress=not args.no_progress, expected=expected_inputs(args, args.corpus))


def cmd_projection(args) -> None:
    from tokenuni.devices import select_device

    set_threads(args.threads)
    device = select_device(args.device)
    run_stage(args, {"projection": args.options}, stages.projection, args.dump, args.options, args.out,
              model=args.model, corpus=args.corpus, clusters_table=args.clusters_table, device=device,
              progress=not args.no_progress, expected=expected_inputs(args, args.corpus))


def cmd_projection_figure(args) -> None:
    params = {"colour_by": args.colour_by, "dims": args.dims, "layers": args.layers}
    run_stage(args, params, stages.projection_figure, args.table, (args.png, args.svg, args.pdf),
              colour_by=args.colour_by, dims=args.dims, layers=args.layers, model_label=args.model_label)


def cmd_table(args) -> None:
    run_stage(args, {"inputs": [str(p) for p in args.inputs]}, stages.table, args.inputs, args.out, args.tsv)


def cmd_figure(args) -> None:
    params = {"kind": args.kind, "metric": args.metric, "variant": args.variant, "pooling": args.pooling}
    options = {"metric": args.metric, "variant": args.variant, "pooling": args.pooling, "model": args.model}
    run_stage(args, params, stages.figure, args.kind, args.table, (args.png, args.svg, args.pdf), options=options,
              extra_tables={name: getattr(args, name) for name in EXTRA_TABLES},
              model_label=args.model_label, model_labels=args.model_labels)


def add_figure_outputs(parser) -> None:
    """--png (for the report), --svg and --pdf (for papers) of a figure command."""
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--svg", type=Path, default=None)
    parser.add_argument("--pdf", type=Path, default=None)


def add_parsers(sub) -> None:
    """Register this module's commands on the ``tokenuni`` subparsers."""
    p = sub.add_parser("corpus", help="import a corpus (mirror or hub) into normalised Parquet")
    p.add_argument("--spec", type=json_argument, required=True, help="the corpus's config entry, with its name")
    p.add_argument("--mirror", default=None, help="local data mirror folder")
    p.add_argument("--out", type=Path, required=True)
    add_job_arguments(p)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("embed", help="dump every layer's hidden states of a model over a corpus")
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--corpus-name", default="")
    p.add_argument("--model", type=json_argument, required=True, help="the model's config entry")
    p.add_argument("--out", type=Path, default=None, help="the dump (its moments go to <dump>.moments.npz)")
    p.add_argument("--stats", type=Path, default=None, help="no dump: write the metrics suite's statistics here")
    p.add_argument("--plan", type=json_argument, default=None, help="with --stats: the suite's plan (metrics.suite.pass_plan)")
    add_device_arguments(p)
    add_job_arguments(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("stats", help="one read of a dump: the statistics of every metric of the suite")
    p.add_argument("--dump", type=Path, required=True)
    p.add_argument("--plan", type=json_argument, required=True, help="the suite's plan (metrics.suite.pass_plan)")
    add_reader_arguments(p, "the log")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("metric", help="compute one metric for every layer (from the suite's statistics, or a dump)")
    p.add_argument("name")
    p.add_argument("--stats", type=Path, default=None, help="the statistics of `tokenuni stats` (or embed --stats)")
    p.add_argument("--dump", type=Path, default=None, help="or stream a dump for this one metric")
    p.add_argument("--options", type=json_argument, default={})
    add_reader_arguments(p, "the table")
    p.set_defaults(func=cmd_metric)

    p = sub.add_parser("projection", help="project a seeded token sample on each layer's principal components")
    p.add_argument("--dump", type=Path, required=True,
                   help="a dump (one read), or the metrics suite's statistics (.npz: no dump needed)")
    p.add_argument("--options", type=json_argument, default={},
                   help='{"layers": null, "sample_size": 5000, "seed": 0, "components": 3, "clusters": "mms"|k|null, ...}')
    p.add_argument("--clusters-table", type=Path, default=None,
                   help='the clusters metric table whose mms_k per layer "clusters": "mms" uses')
    add_reader_arguments(p, "the table")
    p.set_defaults(func=cmd_projection)

    p = sub.add_parser("projection-figure", help="PCA views of a layer's tokens from a projection table")
    p.add_argument("--table", type=Path, required=True)
    p.add_argument("--colour-by", choices=["frequency", "cluster"], default="frequency")
    p.add_argument("--dims", type=int, choices=[2, 3], default=2)
    p.add_argument("--layers", type=json_argument, default=None, help="JSON list of layers (default: all in the table)")
    p.add_argument("--model-label", default=None)
    add_figure_outputs(p)
    add_job_arguments(p)
    p.set_defaults(func=cmd_projection_figure)

    p = sub.add_parser("table", help="merge tidy metric tables into one")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tsv", type=Path, default=None)
    add_job_arguments(p)
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
    p.add_argument("--model-labels", type=json_argument, default=None, help='{"<model key>": "<display name>", ...}')
    add_figure_outputs(p)
    add_job_arguments(p)
    p.set_defaults(func=cmd_figure)
