"""The fine-tuning stages: ``finetune`` (one model, task, variant and seed) and ``finetune-table`` (variants
against the baseline with intervals)."""
from __future__ import annotations

from pathlib import Path

from tokenuni.cli.common import add_device_arguments, add_job_arguments, json_argument, run_stage, set_threads


def _process_seconds() -> float | None:
    """Seconds since this process started (interpreter start-up and the CLI's imports), if psutil is there."""
    try:
        import time

        import psutil
    except ImportError:
        return None
    return max(0.0, time.time() - psutil.Process().create_time())


def cmd_finetune(args) -> None:
    import time

    startup, startup_cpu = _process_seconds(), time.process_time()
    cli_started, cli_cpu = time.perf_counter(), time.process_time()
    from tokenuni.devices import select_device
    from tokenuni.stages.finetune import finetune

    set_threads(args.threads)
    device = select_device(args.device)
    params = {"model": args.model, "task": args.task, "variant": {args.variant_name: args.variant},
              "seed": args.seed, "settings": args.settings}

    def once_open(run) -> dict:
        """The live run's training curves, and the time to here: torch (threads, device), the tracking module."""
        timings = {"imports": (time.perf_counter() - cli_started, time.process_time() - cli_cpu)}
        if startup is not None:
            timings["startup"] = (startup, startup_cpu)
        return {"log_metric": run.log_metric if run else None, "process_timings": timings}

    run_stage(args, params, finetune, args.model, model_key=args.model_key, task=args.task,
              variant_name=args.variant_name, variant=args.variant, seed=args.seed, settings=args.settings,
              summary_path=args.summary, geometry_path=args.geometry, predictions_path=args.predictions,
              mirror_root=args.mirror or None, device=device, progress=not args.no_progress, on_open=once_open)


def cmd_finetune_table(args) -> None:
    from tokenuni.stages.finetune import finetune_table

    outputs = {"results": args.out, "results_tsv": args.tsv, "summary": args.summary_table,
               "summary_tsv": args.summary_tsv, "isotropy": args.isotropy, "geometry": args.geometry_out}
    result = run_stage(args, {"inputs": len(args.summaries), "bootstrap": args.bootstrap, "baseline": args.baseline},
                       finetune_table, args.summaries, args.predictions, args.geometry, outputs=outputs,
                       markdown=args.markdown, baseline=args.baseline, bootstrap=args.bootstrap,
                       bootstrap_seed=args.bootstrap_seed)
    print(result.value["markdown"])


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
