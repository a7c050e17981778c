"""The geometry stages: ``corpus`` (import), ``embed`` (per-layer dumps), ``stats`` (one read of a dump),
``metric`` (one metric's table), ``projection`` and ``projection-figure`` (PCA views), ``table`` (merge) and
``figure`` (any figure kind of :mod:`tokenuni.figure_kinds`)."""
from __future__ import annotations

import logging
from pathlib import Path

from tokenuni.cli.common import (add_device_arguments, add_job_arguments, add_reader_arguments,
                                 expected_inputs, job_run, json_argument, set_threads)
from tokenuni.figure_kinds import EXTRA_TABLES, FIGURE_KINDS, draw

log = logging.getLogger("tokenuni")


def cmd_corpus(args) -> None:
    from tokenuni.corpora import import_corpus

    with job_run(args, {"corpus": args.spec}) as run:
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
    set_threads(args.threads)
    device = select_device(args.device)
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["sink"] = (LayerMoments(n_layers, device) if args.stats is None
                        else Suite(args.plan, n_layers, metadata, device=device))
        made["metadata"] = metadata
        return made["sink"]

    params = {"model": args.model} if args.stats is None else {"model": args.model, "plan": args.plan}
    with job_run(args, params) as run:
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

    set_threads(args.threads)
    device = select_device(args.device)
    with job_run(args, {"plan": args.plan}) as run:
        started = time.perf_counter()
        statistics = collect_statistics(args.dump, args.plan, device=device, progress=not args.no_progress,
                                        model=args.model, corpus=args.corpus, expected=expected_inputs(args, args.corpus))
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

    set_threads(args.threads)
    device = select_device(args.device)
    if (args.dump is None) == (args.stats is None):
        raise SystemExit("tokenuni metric: give --stats FILE (derive from the suite's statistics) or --dump FILE")
    with job_run(args, {"metric": {args.name: args.options}}) as run:
        if args.stats is not None:  # the one-pass suite: derive from its statistics (no read of the dump)
            from tokenuni.metrics.suite import derive_metric
            from tokenuni.statistics import load_statistics

            table = derive_metric(load_statistics(args.stats), args.name, args.options, model=args.model,
                                  corpus=args.corpus, device=device, expected=expected_inputs(args, args.corpus),
                                  path=args.stats)
        else:
            table = compute_metric(args.dump, args.name, args.options, model=args.model, corpus=args.corpus,
                                   device=device, progress=not args.no_progress, expected=expected_inputs(args, args.corpus))
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

    set_threads(args.threads)
    device = select_device(args.device)
    options = projection_options(args.options, args.clusters_table)
    with job_run(args, {"projection": args.options}) as run:
        table = token_projection(args.dump, model=args.model, corpus=args.corpus, device=device,
                                 progress=not args.no_progress, expected=expected_inputs(args, args.corpus), **options)
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
    with job_run(args, params) as run:
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

    with job_run(args, {"inputs": [str(p) for p in args.inputs]}) as run:
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
    with job_run(args, params) as run:
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
