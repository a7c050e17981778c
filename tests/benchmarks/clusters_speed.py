"""clusters: today's analysis against the per-metric code the one-pass design started from, on the same samples.

The seeded token sample of every layer of the default study's real WikiText dump (5,000 tokens, the clusters
defaults: k = 2..10, 5 restarts, 3 repeats) is drawn once; then the analysis of every layer (k-means, silhouettes,
within-cluster cosines) runs in child processes for the --before code (a ``git archive``) and for today's code, the two
sides alternating layer by layer, --repeats times, one thread, timed by the process's CPU clock. Sharing the
samples and alternating the sides layer by layer makes the ratio robust on a machine whose speed drifts. Every label, inertia and
silhouette of today is compared with before's. Target (issue 15): ≥ 4× faster at equal labels, silhouettes to 1e-9.

    python tests/benchmarks/clusters_speed.py --sentences 2000 --repeats 3 [--model-path DIR] [--json-out x.json]
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (REPO, Row, add_model_arguments, machine, model_dump, model_from_arguments, parser,  # noqa: E402,I001
                    print_table, resolve_device, write_json)

TITLE = "clusters: before ÷ after on the same samples"
START_COMMIT = "8d47074"  # as metric_suite.py: the per-metric code the one-pass design started from

ANALYSE = r'''
import pickle, sys, time, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from tokenuni.metrics.clusters import Clusters
samples = pickle.load(open(sys.argv[2], "rb"))
layer = int(sys.argv[5])
out, started = {}, time.process_time()
for layer, (x, token_id) in [(layer, samples[layer])]:
    out[layer] = [{"inertia": r["inertia"], "labels": {k: v.numpy() for k, v in r["labels"].items()},
                   "silhouette": r["silhouette"], "mms_k": r["mms_k"], "within": r["within"]}
                  for r in Clusters(device=sys.argv[4]).analyse(torch.as_tensor(x), torch.as_tensor(token_id))]
seconds = time.process_time() - started
pickle.dump({"seconds": seconds, "results": out}, open(sys.argv[3], "wb"))
'''


def layer_samples(dump_path: Path, device: str) -> dict:
    """{layer: (x, token_id)}: the clusters metric's seeded sample of every layer (today's code, the defaults)."""
    from dataclasses import replace

    from tokenuni.metrics import make_metric
    from tokenuni.metrics.base import TokenBatch
    from tokenuni.store import layer_column, open_dump, vector_tensor

    dump = open_dump(dump_path)
    layers = range(dump.n_layers)
    metrics = {layer: make_metric("clusters", {}, device).bind(layer, dump.metadata) for layer in layers}
    for metric in metrics.values():
        metric.begin_pass(0)
    for batch in dump.batches():
        tokens = TokenBatch.from_record_batch(batch, device, vector_column=layer_column(0))
        for layer in layers:
            if layer:
                tokens = replace(tokens, x=vector_tensor(batch.column(layer_column(layer)), device))
            metrics[layer].update(tokens)
    return {layer: (metric.sample.rows()["x"].cpu(), metric.sample.rows()["token_id"].cpu())
            for layer, metric in metrics.items()}


def deviation(before: dict, after: dict) -> tuple[int, float]:
    """(labels that differ, largest relative deviation of inertia, silhouettes and within-cluster cosines)."""
    labels, worst = 0, 0.0
    for layer, repeats in before.items():
        for old, new in zip(repeats, after[layer]):
            for k, old_labels in old["labels"].items():
                labels += int((old_labels != new["labels"][k]).sum())
                pairs = [(old["inertia"][k], new["inertia"][k])]
                if k in old["silhouette"]:
                    pairs.append((old["silhouette"][k], new["silhouette"][k]))
                worst = max([worst] + [abs(a - b) / max(abs(a), 1e-300) for a, b in pairs])
            labels += int(old["mms_k"] != new["mms_k"])
            for variant, values in old["within"].items():
                for name, value in values.items():
                    worst = max(worst, abs(value - new["within"][variant][name]) / max(abs(value), 1e-300))
    return labels, worst


def main() -> None:
    p = parser(TITLE, sentences=2000, repeats=3)
    add_model_arguments(p)
    p.add_argument("--before", default=START_COMMIT, help="the commit whose clusters code is 'before'")
    p.add_argument("--before-dir", type=Path, default=None, help="the before code as a folder holding tokenuni/")
    args = p.parse_args()
    device = resolve_device(args.device, 1)
    if device is None:
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec, label = model_from_arguments(args)
    dump = model_dump(args.workdir, args.sentences, spec, label, device)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        samples = layer_samples(dump, device)
        pickle.dump({layer: (x.numpy(), t.numpy()) for layer, (x, t) in samples.items()},
                    open(scratch / "samples.pkl", "wb"))
        before_code = args.before_dir
        if before_code is None:
            before_code = scratch / "before"
            before_code.mkdir()
            subprocess.run(f"git -C {REPO} archive {args.before} tokenuni | tar -x -C {before_code}", shell=True,
                           check=True)
        times: dict[str, list[float]] = {"before": [], "after": []}
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        results = {"before": {}, "after": {}}
        for repeat in range(args.repeats):
            seconds = {"before": 0.0, "after": 0.0}
            for layer in samples:  # the two sides alternate layer by layer: a drift of the machine's speed hits both
                for side, code in (("before", before_code), ("after", REPO)):
                    out = scratch / f"{side}.pkl"
                    subprocess.run([sys.executable, "-c", ANALYSE, str(code), str(scratch / "samples.pkl"), str(out),
                                    device, str(layer)], check=True, env={**env, "PYTHONPATH": str(code)})
                    run = pickle.load(open(out, "rb"))
                    seconds[side] += run["seconds"]
                    results[side].update(run["results"])
            for side in times:
                times[side].append(seconds[side])
            print(f"repeat {repeat + 1}/{args.repeats}: before {seconds['before']:.1f} s, after {seconds['after']:.1f} s",
                  flush=True)
    differing, worst = deviation(results["before"], results["after"])
    before = Row("before: every layer's analysis", times["before"], "s")
    after = Row("after: every layer's analysis", times["after"], "s")
    ratios = [b / a for b, a in zip(times["before"], times["after"])]
    n_layers = len(samples)
    rows = [before, after,
            Row("before ÷ after (median over the repeats)", ratios, "x",
                ratio=sorted(ratios)[len(ratios) // 2], target=4.0,
                note=f"{n_layers} layers x {len(samples[0][0]):,} tokens; CPU seconds, 1 thread"),
            Row("labels that differ (every k, repeat, layer; mms_k)", [differing], "labels", ratio=differing,
                target=0, higher_is_better=False),
            Row("largest deviation: inertia, silhouettes, within-cluster cosines", [worst], "rel", ratio=worst,
                target=1e-9, higher_is_better=False)]
    context = {**machine(), "device": device, "model": spec["id"], "layers": n_layers, "before": args.before,
               "clock": "cpu, 1 thread"}
    print_table(TITLE, rows, context)
    write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
