"""The STS stages: pooled sentence embeddings, one transform evaluated over every STS dataset, and the
papers'-style summary. Each returns a :class:`tokenuni.results.StageResult` (see :mod:`tokenuni.stages`)."""
from __future__ import annotations

from pathlib import Path

from tokenuni.results import StageResult

#: the score rows that become run metrics: a dataset's whole release, and the two protocols over its subsets
_LOGGED_PROTOCOLS = ("all", "mean_over_subsets", "concatenated")


def sentences(corpus_path: Path, model: dict, poolings: dict, out: Path, *, corpus_name: str = "", device="auto",
              progress: bool = True) -> StageResult:
    """Pooled sentence embeddings of a corpus, every pooling from one forward pass (:func:`tokenuni.sentences.
    embed_sentences`)."""
    from tokenuni.sentences import embed_sentences

    summary = embed_sentences(corpus_path, model, poolings, out, corpus_name=corpus_name, device=device,
                              progress=progress)
    return StageResult(
        outputs={"sentences": out},
        metrics={k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        tags={"tokenuni.device": summary.get("device", "")}, inputs=[(out, "sentence_embeddings")],
        message=f"sentence embeddings {out}: {summary}", value=summary)


def sts(sentence_files: dict[str, Path], datasets: list[str], *, model: str, pooling: str, transform_name: str,
        transform: dict, geometry_metrics: list[str], scores_path: Path, geometry_path: Path,
        fitted_dir: Path | None = None, device="cpu", expected: dict | None = None) -> StageResult:
    """One transform fit, applied and scored on every STS dataset (:func:`tokenuni.sts.evaluation.
    evaluate_transform`); writes the score and geometry tables (and the fitted transforms to ``fitted_dir``)."""
    from tokenuni.sts.evaluation import evaluate_transform
    from tokenuni.tables import write_table

    scores, geometry = evaluate_transform(sentence_files, datasets, model=model, pooling=pooling,
                                          transform_name=transform_name, transform_spec=transform,
                                          geometry_metrics=geometry_metrics, fitted_dir=fitted_dir, device=device,
                                          expected=expected)
    write_table(scores, scores_path)
    write_table(geometry, geometry_path)
    result = StageResult(
        outputs={"scores": scores_path, "geometry": geometry_path},
        params={"fit_on": transform.get("fit_on", "pool"), "transform_type": transform["type"],
                "fitted_on": sorted(set(scores["fit_on"])),
                "fitted": dict(zip(scores["dataset"], scores["fitted"]))},  # the values used
        artifacts=[(scores_path, "sts"), (geometry_path, "sts")]
        + [(fitted, "fitted_transform") for fitted in (sorted(Path(fitted_dir).glob("*.npz"))
                                                       if fitted_dir and Path(fitted_dir).is_dir() else [])],
        value=(scores, geometry))
    for row in scores[scores["protocol"].isin(_LOGGED_PROTOCOLS)].itertuples():
        suffix = "" if row.protocol == "all" else f".{row.protocol}"
        result.metrics.update({f"spearman.{row.dataset}{suffix}": row.spearman,
                               f"pearson.{row.dataset}{suffix}": row.pearson})
    for row in geometry.itertuples():
        result.metrics[f"{row.metric}{'.' + row.variant if row.variant else ''}.{row.dataset}"] = row.value
    return result


def sts_table(scores_paths: list[Path], geometry_paths: list[Path] | None, out: Path, *, markdown: Path,
              tsv: Path | None = None, geometry_out: Path | None = None, html: Path | None = None) -> StageResult:
    """Every transform's scores in one table, and the papers'-style summary (:func:`tokenuni.sts.summary.
    write_summary`) as Markdown and HTML."""
    import pandas as pd

    from tokenuni.sts.summary import write_summary
    from tokenuni.tables import write_table

    scores = pd.concat([pd.read_parquet(p) for p in scores_paths], ignore_index=True)
    geometry = pd.concat([pd.read_parquet(p) for p in geometry_paths], ignore_index=True) if geometry_paths else None
    write_table(scores, out)
    if tsv:
        write_table(scores, tsv)
    if geometry_out is not None and geometry is not None:
        write_table(geometry, geometry_out)
    tables = write_summary(scores, geometry, markdown, html)
    paths = [path for path in (out, tsv, geometry_out, markdown, html) if path]
    return StageResult(outputs={Path(path).name: path for path in paths}, metrics={"rows": len(scores)},
                       artifacts=[(path, "tables") for path in paths],
                       message=f"STS table: {len(scores)} rows, {len(tables)} summary tables -> {markdown}",
                       value=tables)


__all__ = ["sentences", "sts", "sts_table"]
