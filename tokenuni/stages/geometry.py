"""The geometry stages: import a corpus, embed it (a dump, or the metrics' statistics without one), the one read of
a dump, one metric's table, the PCA projection and its figure, the merged table and any figure kind.

Each returns a :class:`tokenuni.results.StageResult` (see :mod:`tokenuni.stages`).
"""
from __future__ import annotations

from pathlib import Path

from tokenuni.results import StageResult


def corpus(spec: dict, mirror, out: Path) -> StageResult:
    """Import a corpus (mirror or hub) into normalised Parquet (:func:`tokenuni.corpora.import_corpus`)."""
    from tokenuni.corpora import import_corpus

    summary = import_corpus(spec, mirror, out)
    return StageResult(
        outputs={"corpus": out}, params={"source": summary.get("source")},
        metrics={"rows": summary["rows_after"], "rows_before_sampling": summary["rows_before"],
                 "rows_dropped_empty": summary["rows_dropped_empty"],
                 **{f"rows_skipped.{reason}": n for reason, n in summary["rows_skipped"].items()}},
        tags={"tokenuni.corpus_source": summary.get("source")},
        inputs=[(item["path"], "mirror") for item in summary.get("files", [])],
        artifacts=[(out, "corpus")],
        message=f"corpus {spec.get('name')}: {({k: v for k, v in summary.items() if k != 'files'})}", value=summary)


def embed(corpus_path: Path, model: dict, *, out: Path | None = None, stats: Path | None = None,
          plan: dict | None = None, corpus_name: str = "", device="cpu", progress: bool = True) -> StageResult:
    """With ``out``: the dump and its moments (``<dump>.moments.npz``); with ``stats`` (and ``plan``) instead: no dump,
    the embed stage feeds the metrics suite and writes its statistics (corpora larger than the disk)."""
    from tokenuni.embed import embed_corpus
    from tokenuni.metrics.suite import Suite
    from tokenuni.statistics import LayerMoments, moments_path, save_statistics
    from tokenuni.store import PROVENANCE_KEYS

    if (out is None) == (stats is None):
        raise ValueError("embed: give out (a dump and its moments) or stats and plan (no dump)")
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["sink"] = (LayerMoments(n_layers, device) if stats is None
                        else Suite(plan, n_layers, metadata, device=device))
        made["metadata"] = metadata
        return made["sink"]

    summary = embed_corpus(corpus_path, model, out, corpus_name=corpus_name, device=str(device), progress=progress,
                           consumer=consumer)
    if stats is None:
        provenance = {key: made["metadata"][key] for key in PROVENANCE_KEYS if key in made["metadata"]}
        made["sink"].save(moments_path(out), {"rows": summary["tokens"], "dump": str(out), **provenance})
    else:
        save_statistics(made["sink"].statistics(), stats)
    written = out if stats is None else stats
    return StageResult(
        outputs={"dump" if stats is None else "stats": written},
        metrics={k: v for k, v in summary.items() if isinstance(v, (int, float))},
        tags={"tokenuni.device": summary["device"], "tokenuni.model_source": summary["model_source"],
              "tokenuni.dump_precision": summary["precision"]},
        inputs=[(corpus_path, "corpus"), (written, "dump" if stats is None else "stats")],
        message=f"embedded {corpus_name or corpus_path}: {summary.get('tokens')} tokens -> {written}", value=summary)


def stats(dump: Path, plan: dict, out: Path, *, model: str, corpus: str, device="cpu", progress: bool = True,
          expected: dict | None = None) -> StageResult:
    """The metrics suite's one read of a dump: every enabled metric's sufficient statistics (see metrics.suite)."""
    import time

    from tokenuni.metrics.suite import collect_statistics
    from tokenuni.statistics import save_statistics, statistics_size

    started = time.perf_counter()
    statistics = collect_statistics(dump, plan, device=device, progress=progress, model=model, corpus=corpus,
                                    expected=expected)
    save_statistics(statistics, out)
    seconds = time.perf_counter() - started
    reads = int(statistics["reads"])
    return StageResult(
        outputs={"stats": out}, tags={"tokenuni.device": str(device)}, inputs=[(dump, "dump")],
        metrics={"reads": reads, "seconds": round(seconds, 3), "statistics_bytes": statistics_size(statistics)},
        message=f"statistics of {model}/{corpus} ({reads} read(s), {seconds:.1f} s) -> {out}")


def metric(name: str, options: dict, out: Path, *, model: str, corpus: str, stats: Path | None = None,
           dump: Path | None = None, device="cpu", progress: bool = True, expected: dict | None = None) -> StageResult:
    """One metric's tidy table for every layer: derived from the suite's statistics (``stats``: no read of the
    dump), or by streaming a dump for this one metric (``dump``)."""
    import pandas as pd

    from tokenuni.metrics import compute_metric
    from tokenuni.tables import write_table

    if (dump is None) == (stats is None):
        raise ValueError("metric: give stats (derive from the suite's statistics) or dump")
    if stats is not None:
        from tokenuni.metrics.suite import derive_metric
        from tokenuni.statistics import load_statistics

        table = derive_metric(load_statistics(stats), name, options, model=model, corpus=corpus, device=device,
                              expected=expected, path=stats)
    else:
        table = compute_metric(dump, name, options, model=model, corpus=corpus, device=device, progress=progress,
                               expected=expected)
    write_table(table, out)
    result = StageResult(outputs={"table": out}, tags={"tokenuni.device": str(device)},
                         inputs=[(stats or dump, "stats" if stats else "dump")], artifacts=[(out, "metrics")],
                         message=f"metric {name} on {model}/{corpus}: {len(table)} rows -> {out}", value=table)
    result.add_tidy(table)  # <row>[.<variant>] with step = layer: the headline metrics read these
    sampled = table[table["sample_size"].notna()].drop_duplicates("metric")
    result.params = {f"sampling.{row.metric}": {"sample_size": int(row.sample_size),  # the size used
                                                "seed": None if pd.isna(row.seed) else int(row.seed),
                                                **({"requested": options["sample_size"]}
                                                   if options.get("sample_size") not in (None, row.sample_size)
                                                   else {})}
                     for row in sampled.itertuples()}
    return result


def projection(dump: Path, options: dict, out: Path, *, model: str, corpus: str, clusters_table: Path | None = None,
               device="cpu", progress: bool = True, expected: dict | None = None) -> StageResult:
    """A seeded token sample projected on each layer's principal components (:mod:`tokenuni.projection`)."""
    import pandas as pd

    from tokenuni.projection import projection_options, token_projection
    from tokenuni.tables import write_table

    resolved = projection_options(options, clusters_table)
    table = token_projection(dump, model=model, corpus=corpus, device=device, progress=progress, expected=expected,
                             **resolved)
    write_table(table, out)
    result = StageResult(
        outputs={"table": out}, tags={"tokenuni.device": str(device)},
        inputs=[(dump, "stats" if str(dump).endswith(".npz") else "dump")]
        + ([(clusters_table, "clusters")] if clusters_table else []),
        params={"sampling.projection": {"sample_size": resolved["sample_size"], "seed": resolved["seed"]}},
        artifacts=[(out, "projections")], message=f"projection {model}/{corpus}: {len(table)} rows -> {out}",
        value=table)
    per_layer = table.drop_duplicates("layer")
    for row in per_layer.itertuples():
        result.steps += [(column, float(getattr(row, column)), int(row.layer)) for column in per_layer.columns
                         if column.startswith("explained_variance_ratio_pc")]
        if pd.notna(row.cluster_k):
            result.steps.append(("cluster_k", int(row.cluster_k), int(row.layer)))
    return result


def projection_figure(table_path: Path, outputs: tuple, *, colour_by: str = "frequency", dims: int = 2,
                      layers=None, model_label: str | None = None) -> StageResult:
    """PCA views of a layer's tokens from a projection table; ``outputs``: (png, svg or None, pdf or None)."""
    from tokenuni.figures.projection import plot_token_projection
    from tokenuni.tables import read_table

    table = read_table(table_path)
    if model_label:
        table["model_label"] = model_label
    png, svg, pdf = outputs
    plot_token_projection(table, png, svg, pdf, layers=layers, colour_by=colour_by, dims=dims)
    return _figure_result(table_path, "projection", outputs)


def table(inputs: list[Path], out: Path, tsv: Path | None = None) -> StageResult:
    """Tidy metric tables merged into one (Parquet, and TSV when asked)."""
    from tokenuni.tables import merge_tables, write_table

    merged = merge_tables(inputs)
    written = [out] + ([tsv] if tsv else [])
    for path in written:
        write_table(merged, path)
    return StageResult(outputs={"table": out}, metrics={"rows": len(merged)},
                       artifacts=[(path, "tables") for path in written],
                       message=f"{len(inputs)} tables merged: {len(merged)} rows -> {out}", value=merged)


def figure(kind: str, table_path: Path, outputs: tuple, *, options: dict, extra_tables: dict | None = None,
           model_label: str | None = None, model_labels: dict | None = None) -> StageResult:
    """Any figure kind of :mod:`tokenuni.figure_kinds` from a tidy table; ``outputs``: (png, svg or None, pdf or None);
    ``extra_tables``: name -> path of the further tables the kind needs."""
    from tokenuni.figure_kinds import draw
    from tokenuni.tables import read_table

    table = read_table(table_path)
    if model_label:
        table["model_label"] = model_label
    elif model_labels and "model" in table.columns:
        table["model_label"] = table["model"].astype(str).map(model_labels)
    options = {**options, **{name: read_table(path) for name, path in (extra_tables or {}).items() if path}}
    draw(kind, table, outputs, options)
    return _figure_result(table_path, "table", outputs)


def _figure_result(table_path: Path, context: str, outputs: tuple) -> StageResult:
    return StageResult(outputs={Path(path).suffix[1:]: path for path in outputs if path},
                       inputs=[(table_path, context)], artifacts=[(path, "figures") for path in outputs if path])


__all__ = ["corpus", "embed", "figure", "metric", "projection", "projection_figure", "stats", "table"]
