"""The metric suite from one read, against today's one job per metric (the code of --before, default the commit the
one-pass design started from), on the default study's real WikiText dump.

Before: each metric's own job (``compute_metric`` of the --before commit, run from a ``git archive`` of it in a
child process), timed one by one. After: the moments the embed stage accumulates (timed here as a moments-only pass
over the dump: an upper bound of what embed adds), the one read of the suite (``tokenuni stats``) and each
metric's derivation (``tokenuni metric --stats``). The floor is one read of the dump (every batch, every layer
converted to float64). Every table is compared with the before table (values and spreads to 1e-9 relative; a
singular value relative to its layer's largest, below which any computation's rounding shows).

The exact metrics are also timed as their own pass (the sampled ones disabled), as a study that runs only them
would: the figure the ≤ 2× target is about. Targets (issue 15): exact metrics (all but clusters, LID, alignment/uniformity) together ≤ 2× the costliest
exact job of before; every exact metric from ≤ 1 read; equal results; clusters ≥ 4× faster at equal results.

    python tests/benchmarks/metric_suite.py --sentences 2000 --threads 2 [--model-path DIR] [--json-out x.json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, Row, add_model_arguments, default_metric_options, machine, model_dump,  # noqa: E402,I001
                    model_from_arguments, parser, print_table, resolve_device, write_json)

TITLE = "metric suite: one read per dump"
#: the per-metric jobs compared with: main as last merged (8d47074: the per-metric code the one-pass design started
#: from, 49ad078, plus main's recorded caps -- the clusters_k_max row, the sample size used); move it when a later
#: merge of main changes what a metric's table holds
START_COMMIT = "8d47074"
SAMPLED = ("clusters", "lid", "alignment_uniformity")

BEFORE = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
threads = int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
from tokenuni.metrics import compute_metric
out = {}
options = json.load(open(f"{sys.argv[4]}/options.json"))
for name in sys.argv[3].split(","):
    clock = time.process_time if sys.argv[7] == "cpu" else time.perf_counter
    t = clock()
    table = compute_metric(sys.argv[2], name, options[name], model="m", corpus="c", device=sys.argv[6], progress=False)
    out[name] = clock() - t
    table.to_parquet(f"{sys.argv[4]}/{name}.parquet")
    print(name, round(out[name], 2), flush=True)
json.dump(out, open(f"{sys.argv[4]}/timings.json", "w"))
'''


def compare(before, after) -> float:
    """Largest deviation of ``after`` from ``before`` (relative; singular values relative to their layer's largest;
    spreads relative to their row's value); inf when the rows differ."""
    import numpy as np

    key = ["layer", "metric", "variant", "component"]
    a, b = before.copy(), after.copy()
    for t in (a, b):
        t["component"] = t["component"].fillna(-1)
    m = a.merge(b, on=key, how="outer", suffixes=("", "_b"), indicator=True)
    if not (m["_merge"] == "both").all() or not (m["n"] == m["n_b"]).all():
        return float("inf")
    scale = m["value"].abs()
    singular = m["metric"] == "singular_value"
    if singular.any():
        scale[singular] = m[singular].groupby(["layer", "variant"])["value"].transform("max")
    value = ((m["value"] - m["value_b"]).abs() / scale.where(scale > 0, 1.0)).max()
    spread = m["spread"].notna()
    if not spread.equals(m["spread_b"].notna()):
        return float("inf")
    # a spread against its row's value scale: a spread that is 0 before (identical repeats) and 1e-16 after is
    # rounding, not a result difference (relative to the spread itself it read as 1e+289)
    spreads = ((m["spread"][spread] - m["spread_b"][spread]).abs()
               / scale[spread].where(scale[spread] > 0, 1.0))
    return float(np.nanmax([value, spreads.max() if len(spreads) else 0.0]))


def main() -> None:
    p = parser(TITLE, sentences=2000, repeats=1)
    add_model_arguments(p)
    p.add_argument("--before", default=START_COMMIT, help="the commit whose per-metric jobs are 'before'")
    p.add_argument("--before-dir", type=Path, default=None,
                   help="the before code as a folder holding tokenuni/ (no git there, e.g. the GPU machine's copy)")
    p.add_argument("--skip-before", action="store_true", help="reuse the before tables and timings of --workdir")
    p.add_argument("--quick", action="store_true", help="small samples for the sampled metrics (dry runs)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the process's CPU time (all its threads) instead of the wall clock: with --threads 1 it "
                        "measures the work itself, and stays comparable on a machine other jobs share")
    args = p.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    device = resolve_device(args.device, args.threads)
    if device is None:
        return
    import pandas as pd

    from tokenuni.metrics import METRICS
    from tokenuni.metrics.suite import collect_statistics, derive_metric, pass_plan
    from tokenuni.statistics import LayerMoments, index_tensors, save_statistics
    from tokenuni.store import layer_column, open_dump, vector_tensor

    args.workdir.mkdir(parents=True, exist_ok=True)
    spec, label = model_from_arguments(args)
    dump = model_dump(args.workdir, args.sentences, spec, label, device)
    opened = open_dump(dump)
    tokens, n_layers = opened.num_rows, opened.n_layers
    options = default_metric_options()  # the defaults, as the study runs them
    if args.quick:
        options["clusters"].update(sample_size=300, k_max=4, n_init=2, repeats=2)
        options["lid"].update(sample_size=300, k=10)
        options["alignment_uniformity"].update(sample_size=300)
        options["isoscore"].update(sample_size=200)
    exact = [name for name in METRICS if name not in SAMPLED]

    # the floor: one read of the dump, every layer converted to float64 once
    started = clock()
    for batch in opened.batches():
        index_tensors(batch, device)
        for layer in range(n_layers):
            vector_tensor(batch.column(layer_column(layer)), device)
    read_seconds = clock() - started

    # before: one job per metric, the --before commit's code
    before_dir = args.workdir / f"before-{label}"
    before_dir.mkdir(exist_ok=True)
    if not args.skip_before or not (before_dir / "timings.json").exists():
        (before_dir / "options.json").write_text(json.dumps(options))
        with tempfile.TemporaryDirectory() as old:
            if args.before_dir is None:
                subprocess.run(f"git -C {REPO} archive {args.before} tokenuni | tar -x -C {old}", shell=True, check=True)
            code = str(args.before_dir or old)
            subprocess.run([sys.executable, "-c", BEFORE, code, str(dump), ",".join(METRICS), str(before_dir),
                            str(args.threads or 0), device, args.clock], check=True, env={**os.environ, "PYTHONPATH": code})
    before_seconds = json.loads((before_dir / "timings.json").read_text())
    before_tables = {name: pd.read_parquet(before_dir / f"{name}.parquet") for name in METRICS}

    # after: the moments (embed's share), one read, the derivations
    started = clock()
    moments = LayerMoments(n_layers, device)
    for batch in opened.batches():
        index = index_tensors(batch, device)
        moments.update(index, [vector_tensor(batch.column(layer_column(layer)), device) for layer in range(n_layers)])
    moments_seconds = clock() - started
    plan = pass_plan(options, {"sample_size": 300 if args.quick else 5000, "seed": 0, "special_tokens": False})
    started = clock()
    statistics = collect_statistics(dump, plan, device=device, progress=False)
    pass_seconds = clock() - started
    # the exact metrics' own pass: the study with the sampled ones disabled (IsoScore's sample included)
    exact_options = {name: ({**value, "enabled": False} if name in SAMPLED else value) for name, value in options.items()}
    started = clock()
    exact_statistics = collect_statistics(dump, pass_plan(exact_options), device=device, progress=False)
    exact_pass_seconds = clock() - started
    save_statistics(statistics, args.workdir / f"stats-{label}.npz")
    after_seconds, deviation = {}, {}
    for name in METRICS:
        started = clock()
        table = derive_metric(statistics, name, options[name], model="m", corpus="c", device=device)
        after_seconds[name] = clock() - started
        deviation[name] = compare(before_tables[name], table)

    exact_before = {name: before_seconds[name] for name in exact}
    costliest = max(exact_before, key=exact_before.get)
    exact_after = moments_seconds + exact_pass_seconds + sum(after_seconds[name] for name in exact)
    rows = [Row("one read of the dump (float64, every layer)", [read_seconds], "s",
                note=f"{tokens:,} tokens x {n_layers} layers, {dump.stat().st_size / 2**30:.2f} GiB")]
    rows += [Row(f"before: {name}", [before_seconds[name]], "s") for name in METRICS]
    rows.append(Row("before: exact metrics, sum", [sum(exact_before.values())], "s",
                    ratio=sum(exact_before.values()) / read_seconds, target=None, note="ratio = ÷ one read"))
    rows.append(Row("after: moments (accumulated by embed)", [moments_seconds], "s"))
    rows.append(Row("after: the suite's read (tokenuni stats), every metric", [pass_seconds], "s",
                    note=f"{int(statistics['reads'])} read(s) of the dump"))
    rows.append(Row("after: the read with the exact metrics only", [exact_pass_seconds], "s",
                    note=f"{int(exact_statistics['reads'])} read(s); sampled ones disabled"))
    rows += [Row(f"after: derive {name}", [after_seconds[name]], "s") for name in METRICS]
    rows.append(Row("after: exact metrics (moments + exact read + derivations) ÷ costliest exact job before",
                    [exact_after], "s",
                    ratio=exact_after / exact_before[costliest], target=2.0, higher_is_better=False,
                    note=f"costliest before: {costliest} {exact_before[costliest]:.1f} s"))
    rows.append(Row("after: exact metrics ÷ one read", [exact_after], "s", ratio=exact_after / read_seconds))
    rows.append(Row("reads of the dump per exact metric", [int(exact_statistics["reads"])], "reads",
                    ratio=int(exact_statistics["reads"]), target=1, higher_is_better=False))
    rows.append(Row("clusters: before ÷ after", [after_seconds["clusters"]], "s",
                    ratio=before_seconds["clusters"] / after_seconds["clusters"], target=4.0))
    worst = max(deviation.values())
    rows.append(Row("results: largest deviation from before", [worst], "rel", ratio=worst, target=1e-9,
                    higher_is_better=False, note=", ".join(f"{k} {v:.1e}" for k, v in deviation.items() if v > 0)))
    context = {**machine(), "device": device, "model": spec["id"], "tokens": tokens, "layers": n_layers,
               "threads": args.threads, "before": args.before, "clock": args.clock}
    print_table(TITLE, rows, context)
    write_json(args.json_out, TITLE, rows, {**context, "deviation": deviation})


if __name__ == "__main__":
    main()
