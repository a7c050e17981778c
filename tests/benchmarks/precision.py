"""Half-size dumps: how far every metric moves when the dump stores bfloat16 or float16 instead of float32.

The float32 dump of the study's WikiText sample (MiniLM, or --model-path, e.g. all-mpnet-base-v2) is rewritten at
each precision (the values the embed stage would store: the same float32 states rounded to nearest even), its
moments recomputed from the rounded values, and the whole metric suite (default options) derived from one read of
each. Per metric row (metric, variant): the largest absolute deviation from float32 over layers and components,
and that deviation ÷ the row's range across layers (the layer-to-layer signal the study plots). Disk per precision.

Tolerance for the default: every headline row (below) moves by less than 1 % of its range across layers and by
less than 1e-3 absolute; half precision is the default only if that holds on both real models.

    python tests/benchmarks/precision.py --sentences 2000 [--model-path /path/all-mpnet-base-v2] [--json-out x.json]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Row, add_model_arguments, default_metric_options, machine, model_dump,  # noqa: E402,I001
                    model_from_arguments, parser, print_table, resolve_device, write_json)

TITLE = "dump precision: metric deviation and disk"
PRECISIONS = ("bfloat16", "float16")
#: the rows the figures and the report lead with (variant "" = the row has none)
HEADLINE = {("avg_cosine", "uncentred"), ("s_intra", "uncentred"), ("s_inter", "uncentred"), ("isoscore", ""),
            ("isoscore_star", ""), ("partition_isotropy", "uncentred"), ("singular_value_skewness", "uncentred"),
            ("effective_rank", "uncentred"), ("token_uniformity", ""), ("token_mean_cosine", ""),
            ("cls_uniformity", ""), ("lid_mean", ""), ("wang_isola_uniformity", ""), ("mms_silhouette", ""),
            ("pc_frequency_correlation", "absolute"), ("norm_frequency_correlation", "")}
RELATIVE_TOLERANCE, ABSOLUTE_TOLERANCE = 0.01, 1e-3


def rewrite(source: Path, out: Path, precision: str, device: str) -> Path:
    """``source`` stored at ``precision`` (cached), with the moments of the rounded values beside it."""
    import torch

    from tokenuni.statistics import LayerMoments, index_tensors, moments_path
    from tokenuni.store import INDEX_COLUMNS, DumpWriter, layer_column, open_dump, vectors

    if out.exists() and moments_path(out).exists():
        return out
    dump = open_dump(source)
    meta = {k: v for k, v in dump.metadata.items() if k not in ("n_layers", "hidden_size", "dtype", "layer_convention")}
    moments = LayerMoments(dump.n_layers, device)
    with DumpWriter(out, n_layers=dump.n_layers, hidden_size=dump.hidden_size, dtype=precision, metadata=meta) as w:
        for batch in dump.batches():
            index = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in INDEX_COLUMNS}
            index["token"] = list(index["token"])
            rounded = [torch.from_numpy(vectors(batch.column(layer_column(layer)))).to(getattr(torch, precision))
                       for layer in range(dump.n_layers)]
            w.write(index, [r.view(torch.int16).numpy().view("uint16") if precision == "bfloat16" else r.numpy()
                            for r in rounded])
            moments.update(index_tensors(batch, device), [r.to(device, torch.float64) for r in rounded])
    moments.save(moments_path(out), {"rows": dump.num_rows})
    return out


def suite_tables(dump: Path, options: dict, device: str) -> dict:
    from tokenuni.metrics.suite import collect_statistics, derive_metric, pass_plan

    statistics = collect_statistics(dump, pass_plan(options), device=device, progress=False)
    return {name: derive_metric(statistics, name, opts, model="m", corpus="c", device=device)
            for name, opts in options.items()}


def deviations(reference: dict, other: dict):
    """Per (metric, variant): largest |Δ| over layers/components, its ratio to the row's range across layers."""
    import pandas as pd

    key = ["layer", "metric", "variant", "component"]
    out = []
    for name, table in reference.items():
        a, b = table.copy(), other[name].copy()
        for t in (a, b):
            t["component"] = t["component"].fillna(-1)
        m = a.merge(b, on=key, suffixes=("", "_half"))
        m["delta"] = (m["value_half"] - m["value"]).abs()
        for (metric, variant), rows in m.groupby(["metric", "variant"]):
            per_component = rows.groupby("component")["value"]
            span = float((per_component.max() - per_component.min()).max())
            out.append({"config": name, "metric": metric, "variant": variant, "max_abs": float(rows["delta"].max()),
                        "range": span, "of_range": float(rows["delta"].max()) / span if span > 0 else float("nan"),
                        "headline": (metric, variant) in HEADLINE})
    return pd.DataFrame(out)


def main() -> None:
    p = parser(TITLE, sentences=2000, repeats=1)
    add_model_arguments(p)
    p.add_argument("--quick", action="store_true", help="small samples for the sampled metrics (a quick look)")
    args = p.parse_args()
    device = resolve_device(args.device, args.threads)
    if device is None:
        return
    import numpy as np


    args.workdir.mkdir(parents=True, exist_ok=True)
    spec, label = model_from_arguments(args)
    reference_dump = model_dump(args.workdir, args.sentences, spec, label, device)
    options = default_metric_options()
    if args.quick:
        options["clusters"].update(sample_size=1000, n_init=2, repeats=2)
        options["lid"].update(sample_size=1000)
        options["alignment_uniformity"].update(sample_size=1000)
    reference = suite_tables(reference_dump, options, device)
    rows, results = [Row("disk: float32", [reference_dump.stat().st_size / 2**20], "MiB")], {}
    for precision in PRECISIONS:
        half = rewrite(reference_dump, args.workdir / f"{label}-wikitext-{args.sentences}-{precision}.arrow", precision,
                       device)
        table = deviations(reference, suite_tables(half, options, device))
        results[precision] = table.to_dict("records")
        size = half.stat().st_size / 2**20
        rows.append(Row(f"disk: {precision}", [size], "MiB", ratio=size / rows[0].median, target=0.55,
                        higher_is_better=False, note="÷ float32"))
        print(f"\n-- {precision}: every row (largest |Δ| from float32; ÷ its range across layers) --")
        print(table.sort_values(["headline", "of_range"], ascending=False).to_string(index=False,
                                                                                      float_format=lambda v: f"{v:.3g}"))
        headline = table[table["headline"]]
        worst = headline.loc[headline["of_range"].idxmax()]
        rows.append(Row(f"{precision}: worst headline row ÷ its layer range", [worst["of_range"]], "",
                        ratio=float(worst["of_range"]), target=RELATIVE_TOLERANCE, higher_is_better=False,
                        note=f"{worst['metric']} {worst['variant']}: |Δ| {worst['max_abs']:.2g}"))
        worst_abs = headline.loc[headline["max_abs"].idxmax()]
        rows.append(Row(f"{precision}: worst headline |Δ|", [worst_abs["max_abs"]], "",
                        ratio=float(worst_abs["max_abs"]), target=ABSOLUTE_TOLERANCE, higher_is_better=False,
                        note=f"{worst_abs['metric']} {worst_abs['variant']}"))
        finite = table["of_range"].replace([np.inf], np.nan).dropna()
        rows.append(Row(f"{precision}: every row, median ÷ layer range", [float(finite.median())], ""))
    context = {**machine(), "device": device, "model": spec["id"], "sentences": args.sentences}
    print_table(TITLE, rows, context)
    write_json(args.json_out, TITLE, rows, {**context, "rows_by_precision": results})


if __name__ == "__main__":
    main()
