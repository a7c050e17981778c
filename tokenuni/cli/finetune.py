"""The fine-tuning stages: ``finetune`` (one model, task, variant and seed) and ``finetune-table`` (variants
against the baseline with intervals)."""
from __future__ import annotations

import logging
from pathlib import Path

from tokenuni.cli.common import (add_device_arguments, add_job_arguments, job_run,
                                 json_argument, set_threads)

log = logging.getLogger("tokenuni")


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

    set_threads(args.threads)
    device = select_device(args.device)
    with job_run(args, {"model": args.model, "task": args.task, "variant": {args.variant_name: args.variant},
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

    with job_run(args, {"inputs": len(args.summaries), "bootstrap": args.bootstrap, "baseline": args.baseline}) as run:
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


def add_parsers(sub) -> None:
    """Register this module's commands on the ``tokenuni`` subparsers."""
    p = sub.add_parser("finetune", help="fine-tune a model on a GLUE task with a variant and a seed")
    p.add_argument("--model", type=json_argument, required=True, help="the model's config entry")
    p.add_argument("--model-key", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--variant-name", required=True)
    p.add_argument("--variant", type=json_argument, default={})
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", type=json_argument, required=True, help="the config's finetune block (epochs, lr, ...)")
    p.add_argument("--mirror", default=None)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--geometry", type=Path, required=True)
    p.add_argument("--predictions", type=Path, required=True, help="per-example dev predictions (Parquet)")
    add_device_arguments(p)
    add_job_arguments(p)
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
    add_job_arguments(p)
    p.set_defaults(func=cmd_finetune_table)
