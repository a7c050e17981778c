"""Where a fine-tuning job's time goes: start-up, imports, data, model load, tokenisation, training, the epoch
hook (I-STAR's C0), evaluation, dev-set geometry — for a code tree *before* and *after* a change.

Each run is a fresh ``python`` process (as a Snakemake job is) that imports the library of one code tree
(``PYTHONPATH``), then times every stage with both the wall clock and the process's CPU time
(``time.process_time``: all threads; with ``--threads 1`` it is close to the wall time of an idle machine,
so it stays comparable on a busy one). The two trees run interleaved, ``--repeats`` times each; medians are
reported. The driver works with both the API before (``tokenuni.finetune.job.dev_geometry``: a second
forward pass over the dev set; the training loop's CPU time split in proportion to its wall time) and
after (``run_finetune`` timing its stages itself, wall and CPU; the geometry from the final evaluation's
forward pass, on ``geometry_max_sentences`` dev examples).

    git archive 4e800f9 | tar -x -C /tmp/before      # the code before
    python tests/benchmarks/finetune_split.py --before /tmp/before --repeats 2 --threads 1 \\
        [--settings '{"max_train_examples": 96, "batch_size": 16, ...}'] [--json-out split.json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, parser, print_table, write_json  # noqa: E402

TITLE = "fine-tuning job: time per stage"
STAGES = ["startup", "imports", "data", "model_load", "tokenise", "train", "epoch_hook", "evaluate", "geometry"]
#: the default study's fine-tuning job (config/config.yaml), SST-2
DEFAULT_SETTINGS = {"epochs": 1, "lr": 1.0e-4, "batch_size": 8, "max_length": 64, "weight_decay": 0.01,
                    "warmup_ratio": 0.1, "grad_accumulation": 1, "eval_every": None, "max_train_examples": 800,
                    "max_dev_examples": 1000, "geometry_max_sentences": 256,
                    "geometry_metrics": ["cosine_family", "isoscore", "spectrum"]}

DRIVER = r'''
import json, os, sys, time
clocks = {}
def mark(stage, wall, cpu):
    clocks[stage] = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
try:
    import psutil
    startup = max(0.0, time.time() - psutil.Process().create_time())
except ImportError:
    startup = float("nan")
clocks["startup"] = {"wall": startup, "cpu": time.process_time()}
args = json.loads(sys.argv[1])
settings, threads, task, model_spec = args["settings"], args["threads"], args["task"], args["model"]
w, c = time.perf_counter(), time.process_time()
import torch
torch.set_num_threads(threads)
from tokenuni.finetune import job as J
from tokenuni.finetune import train as T
from tokenuni.finetune.model import GlueModel
from tokenuni.embed import load_model
from tokenuni.glue import load_task, task_spec
from tokenuni.metrics import compute_metric
mark("imports", w, c)
if hasattr(J, "DevStates"):  # after: the job times its stages itself (wall and CPU)
    summary, _ = J.run_finetune(model_spec, model_key="minilm", task=task, variant_name="baseline", variant={},
                                seed=0, settings=settings, mirror_root=None, device="cpu", progress=False)
    walls, cpus = summary["timings"], summary["timings_cpu"]
    for name in ("imports", "data", "model_load", "tokenise", "train", "epoch_hook", "evaluate", "geometry"):
        clocks.setdefault(name, {"wall": 0.0, "cpu": 0.0})
        clocks[name] = {"wall": clocks[name]["wall"] + walls[name], "cpu": clocks[name]["cpu"] + cpus[name]}
    main = summary["main"]
else:  # before: the same steps, timed here
    w, c = time.perf_counter(), time.process_time()
    train = load_task(task, "train", None, max_examples=settings.get("max_train_examples"), seed=0)
    dev = load_task(task, "dev", None, max_examples=settings.get("max_dev_examples"), seed=0)
    mark("data", w, c)
    w, c = time.perf_counter(), time.process_time()
    T.set_seed(0)
    tokenizer, encoder = load_model(model_spec, "cpu")
    spec = task_spec(task)
    model = GlueModel(encoder, num_labels=spec["num_labels"], regression=spec["kind"] == "regression", variant={})
    mark("model_load", w, c)
    w, c = time.perf_counter(), time.process_time()
    summary = T.finetune(model, tokenizer, task, train, dev, epochs=settings["epochs"], lr=settings["lr"],
                         batch_size=settings["batch_size"], max_length=settings["max_length"],
                         weight_decay=settings["weight_decay"], warmup_ratio=settings["warmup_ratio"],
                         grad_accumulation=settings["grad_accumulation"], seed=0, device="cpu", progress=False)
    loop_wall, loop_cpu = time.perf_counter() - w, time.process_time() - c
    parts = {"train": summary["train_seconds"], "epoch_hook": summary["start_epoch_seconds"],
             "evaluate": summary["eval_seconds"]}
    parts["tokenise"] = max(0.0, loop_wall - sum(parts.values()))  # tokenisation and set-up inside finetune()
    for name, seconds in parts.items():
        clocks[name] = {"wall": seconds, "cpu": loop_cpu * seconds / loop_wall}
    w, c = time.perf_counter(), time.process_time()
    J.dev_geometry(model, tokenizer, dev[0], dev[1], metrics=settings["geometry_metrics"], model_key="minilm",
                   task=task, batch_size=settings["batch_size"], max_length=settings["max_length"], device="cpu")
    mark("geometry", w, c)
    main = summary["main"]
print("RESULT " + json.dumps({"clocks": clocks, "main": main}))
'''


def run_tree(tree: Path, task: str, settings: dict, threads: int) -> dict:
    """One fresh process on ``tree``'s library: {"clocks": {stage: {"wall", "cpu"}}, "main", "process_wall"}."""
    from conftest import MINILM

    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           **{name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    payload = json.dumps({"settings": settings, "threads": threads, "task": task, "model": MINILM})
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", DRIVER, payload], capture_output=True, text=True, env=env,
                            cwd=tree)
    wall = time.perf_counter() - started
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode or not lines:
        raise RuntimeError(f"the driver failed on {tree}:\n{result.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "process_wall": wall}


def main(argv=None) -> dict:
    p = parser(__doc__.split("\n")[0], sentences=0, repeats=1)
    p.add_argument("--before", type=Path, required=True, help="the code tree before (e.g. git archive <commit>)")
    p.add_argument("--after", type=Path, default=REPO, help="the code tree after (default: this checkout)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--settings", type=json.loads, default={}, help="overrides of the default study's job settings")
    args = p.parse_args(argv)
    threads = args.threads or 1
    settings = {**DEFAULT_SETTINGS, **args.settings}
    runs = {"before": [], "after": []}
    for _ in range(args.repeats):
        for side, tree in (("before", args.before), ("after", args.after)):
            runs[side].append(run_tree(tree.resolve(), args.task, settings, threads))
    rows = []
    for side in ("before", "after"):
        walls = {s: [r["clocks"][s]["wall"] for r in runs[side] if s in r["clocks"]] for s in STAGES}
        cpus = {s: [r["clocks"][s]["cpu"] for r in runs[side] if s in r["clocks"]] for s in STAGES}
        total = sorted(r["process_wall"] for r in runs[side])[len(runs[side]) // 2]
        rows.append(Row(f"{side}: process wall", [r["process_wall"] for r in runs[side]], "s",
                        note=f"dev {runs[side][0]['main']:.3f}"))
        for stage in STAGES:
            if walls[stage]:
                median = sorted(walls[stage])[len(walls[stage]) // 2]
                cpu = sorted(cpus[stage])[len(cpus[stage]) // 2]
                rows.append(Row(f"{side}:   {stage}", walls[stage], "s", ratio=median / total,
                                note=f"CPU {cpu:.1f} s", extra={"cpu": cpus[stage]}))
    context = {"task": args.task, "threads": threads, "repeats": args.repeats, "settings": json.dumps(settings),
               "before": str(args.before), "after": str(args.after)}
    print_table(TITLE + " (ratio: share of the process wall time)", rows, context)
    return write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
