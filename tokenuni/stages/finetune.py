"""The fine-tuning stages: one (model, task, variant, seed) run, and the study's tables (every variant against the
baseline with intervals). Each returns a :class:`tokenuni.results.StageResult` (see :mod:`tokenuni.stages`)."""
from __future__ import annotations

from pathlib import Path

from tokenuni.results import StageResult


def finetune(model: dict, *, model_key: str, task: str, variant_name: str, variant: dict, seed: int, settings: dict,
             summary_path: Path, geometry_path: Path, predictions_path: Path, mirror_root=None, device="cpu",
             log_metric=None, progress: bool = True, process_timings: dict | None = None) -> StageResult:
    """Fine-tune, evaluate and measure the dev-set geometry (:func:`tokenuni.finetune.job.run_finetune`); writes the
    summary (JSON), the geometry table and the per-example dev predictions.

    ``log_metric(key, value, step)``: where the training curves go while training runs (the job's live run);
    ``process_timings``: ``{stage: (wall, cpu)}`` spent before this call (interpreter start-up, the CLI's imports),
    added to the summary's time split."""
    import json
    import time

    from tokenuni.files import atomic_path
    from tokenuni.finetune.job import run_finetune, write_predictions
    from tokenuni.tables import write_table

    summary, geometry = run_finetune(
        model, model_key=model_key, task=task, variant_name=variant_name, variant=variant, seed=seed,
        settings=settings, mirror_root=mirror_root, device=device, log_metric=log_metric, progress=progress)
    started, started_cpu = time.perf_counter(), time.process_time()
    # the metric's own variant/seed columns keep their meaning under other names
    geometry = geometry.rename(columns={"variant": "metric_variant", "seed": "sample_seed"}).assign(
        task=task, variant=variant_name, seed=seed)
    write_table(geometry, geometry_path)
    summary.update(task=task, seed=seed)
    write_predictions(predictions_path, summary)
    timings, cpu = summary["timings"], summary["timings_cpu"]
    for stage, (wall, cpu_seconds) in (process_timings or {}).items():
        timings[stage] = timings.get(stage, 0.0) + wall
        cpu[stage] = cpu.get(stage, 0.0) + cpu_seconds
    # the run record's own write follows
    timings["write"], cpu["write"] = time.perf_counter() - started, time.process_time() - started_cpu
    summary["seconds_total"], summary["cpu_seconds_total"] = sum(timings.values()), sum(cpu.values())
    kept = {k: v for k, v in summary.items() if k not in ("curves", "dev_logits", "dev_labels")}
    with atomic_path(summary_path) as tmp:
        Path(tmp).write_text(json.dumps(kept, indent=1, default=float), encoding="utf-8")
    result = StageResult(
        outputs={"summary": summary_path, "geometry": geometry_path, "predictions": predictions_path},
        tags={"tokenuni.device": str(device), "tokenuni.precision": summary.get("precision", "")},
        metrics={"seconds": summary["seconds"], "tokens_per_second": summary["tokens_per_second"],
                 **{f"seconds_per_epoch/{i}": t for i, t in enumerate(summary["seconds_per_epoch"])},
                 **{f"seconds/{stage}": t for stage, t in timings.items()}},
        steps=[(f"final/{k}", v, summary["steps"]) for k, v in summary["dev"].items()],
        artifacts=[(path, "finetune") for path in (summary_path, geometry_path, predictions_path)],
        message=f"finetune {model_key}/{task}/{variant_name}/seed {seed}: dev {summary['dev']}", value=kept)
    for row in geometry[geometry["component"].isna()].itertuples():
        key = f"geometry/{row.metric}{'.' + row.metric_variant if row.metric_variant else ''}"
        result.steps.append((key, row.value, row.layer))
    return result


def finetune_table(summaries: list[Path], predictions: list[Path], geometry: list[Path] | None, *, outputs: dict,
                   markdown: Path, baseline: str, bootstrap: int, bootstrap_seed: int) -> StageResult:
    """Every variant against the baseline on the same seeds, with intervals (:func:`tokenuni.finetune.summary.
    study_tables`). ``outputs``: ``results``, ``results_tsv``, ``summary``, ``summary_tsv``, ``isotropy``,
    ``geometry`` -> path (or None); ``markdown``: the summary as a Markdown table."""
    from tokenuni.files import atomic_path
    from tokenuni.finetune.summary import study_tables
    from tokenuni.tables import write_table

    tables = study_tables(summaries, predictions, geometry, baseline=baseline, n_boot=bootstrap, seed=bootstrap_seed)
    written = [(tables["results"], outputs.get("results")), (tables["results"], outputs.get("results_tsv")),
               (tables["summary"], outputs.get("summary")), (tables["summary"], outputs.get("summary_tsv")),
               (tables["isotropy"], outputs.get("isotropy")), (tables["geometry"], outputs.get("geometry"))]
    for table, path in written:
        if path is not None and table is not None:
            write_table(table, path)
    with atomic_path(markdown) as tmp:
        Path(tmp).write_text(tables["markdown"], encoding="utf-8")
    counts = tables["summary"]["verdict"].value_counts()
    paths = [path for _, path in written if path] + [markdown]
    return StageResult(outputs={Path(path).name: path for path in paths},
                       metrics={"runs": len(tables["results"]),
                                **{f"verdicts/{k}": int(v) for k, v in counts.items() if k}},
                       artifacts=[(path, "tables") for path in paths], value=tables)


__all__ = ["finetune", "finetune_table"]
