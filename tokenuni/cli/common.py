"""What every ``tokenuni`` command shares: JSON arguments, the device and job options, the job's MLflow run
record, the GPU lease, the expected provenance of its inputs."""
from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

log = logging.getLogger("tokenuni")


def json_argument(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text[:200]}") from None


def add_device_arguments(p) -> None:
    """--device (auto: CUDA when present) and --threads (CPU threads of torch), shared by the model and metric stages."""
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", type=Path, help="write this job's MLflow run record here")
    parser.add_argument("--job", type=json_argument, default={}, help='{"rule": ..., "wildcards": {...}} for the record')
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def job_run(args, params: dict):
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


def run_stage(args, params: dict, stage, *stage_args, on_open=None, **stage_kwargs):
    """Open the job's run (with ``--record``), call ``stage`` (a function of :mod:`tokenuni.stages`), record the
    :class:`~tokenuni.results.StageResult` it returns (:func:`tokenuni.tracking.record`) and log its message.
    ``on_open(run)`` (``run``: the open :class:`~tokenuni.tracking.JobRun`, None without ``--record``) returns more
    keyword arguments of the stage, made once the run is open: its live hooks (``run.log_metric``), timings that
    include opening it. A stage that raises leaves a FAILED record (the run was opened before the work). Returns
    the result."""
    with job_run(args, params) as run:
        if on_open is not None:
            stage_kwargs.update(on_open(run))
        result = stage(*stage_args, **stage_kwargs)
        if run:
            from tokenuni.tracking import record

            record(result, run)
    if result.message:
        log.info("%s", result.message)
    return result


def lease_for(args):
    """Stages that take ``--device`` lease one GPU before torch touches CUDA (see gpu_lease), unless the
    device is ``cpu`` or names one explicitly (``cuda:1``: the caller chose it)."""
    if getattr(args, "device", "cpu") not in ("auto", "cuda"):
        return nullcontext([])
    from tokenuni.gpu_lease import lease_gpu

    return lease_gpu(1)


def expected_inputs(args, corpus: str | None = None) -> dict | None:
    """What the dump or sentence files a stage reads must have been written for (``--expect-model``)."""
    if not getattr(args, "expect_model", None):
        return None
    from tokenuni.sources import expected_provenance

    return expected_provenance(args.expect_model, corpus)


def add_expect_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expect-model", type=json_argument, default=None,
                        help="the model's config entry (as embed got it): stop unless the input was written for it")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_reader_arguments(parser: argparse.ArgumentParser, keys_for: str | None = None) -> None:
    """The options of a stage that reads a dump or sentence files a model wrote: ``--model``/``--corpus`` keys
    (``keys_for``: what they label, e.g. "the table"; None: the stage names them itself) and ``--out``, then
    the device, the model the input must have been written for, and the job's record."""
    if keys_for is not None:
        parser.add_argument("--model", required=True, help=f"model key (for {keys_for})")
        parser.add_argument("--corpus", required=True, help=f"corpus key (for {keys_for})")
        parser.add_argument("--out", type=Path, required=True)
    add_device_arguments(parser)
    add_expect_model(parser)
    add_job_arguments(parser)
