"""Corpora larger than the disk: time, peak RSS and disk of the embed stage without a dump, against corpus size.

The corpus is WikiText-2 validation + test (the mirror has no train split), repeated with new sentence ids until
it holds the asked number of tokens (frequencies follow: a repeated corpus counts every type as often as it
occurs). Each size runs ``python -m tokenuni embed --stats ... --plan ...`` in a child process, the metrics plan
of the default config (every metric's pass, the projection's sample): MiniLM over the corpus, the metrics suite fed
batch by batch, no dump, only the statistics file. Peak RSS is the child's ``VmHWM`` (sampled every 50 ms);
disk is the statistics file (and, for comparison, what a float32 dump of the same tokens would take).
Targets: peak RSS and disk flat in the corpus size (largest ÷ smallest ≤ 1.25), and at least 10⁶ tokens.

    nice python tests/benchmarks/no_dump.py --tokens 100000,250000,500000,1000000 [--json-out x.json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MINILM, REPO, Row, machine, parser, print_table, resolve_device, write_json  # noqa: E402

TITLE = "no-dump mode: time, peak RSS and disk against corpus size"
WIKITEXT_ALL = {"name": "wikitext", "hub": None, "seed": 0, "drop_empty": True,
                "mirror": {"format": "wikitext", "files": ["wikitext-2/wiki.valid.tokens", "wikitext-2/wiki.test.tokens"]}}


def repeated_corpus(workdir: Path, tokens: int, tokens_per_sentence: float) -> Path:
    """WikiText-2 valid+test repeated to about ``tokens`` MiniLM tokens (cached)."""
    import pyarrow as pa

    from tokenuni.corpora import import_corpus, read_corpus, write_corpus

    base = workdir / "wikitext-valid-test.parquet"
    if not base.exists():
        import_corpus(WIKITEXT_ALL, os.environ["TOKENUNI_DATA"], base)
    out = workdir / f"wikitext-repeated-{tokens}.parquet"
    if out.exists():
        return out
    table = read_corpus(base)
    sentences = int(round(tokens / tokens_per_sentence))
    copies = -(-sentences // table.num_rows)
    shift = int(table["sentence_id"].to_numpy().max()) + 1
    parts = []
    for copy in range(copies):
        part = table.set_column(table.schema.get_field_index("sentence_id"), "sentence_id",
                                pa.array(table["sentence_id"].to_numpy() + copy * shift, type=pa.int64()))
        parts.append(part)
    repeated = pa.concat_tables(parts).slice(0, sentences)
    write_corpus(repeated, out)
    return out


def peak_rss(pid: int, stop) -> int:
    peak = 0
    while not stop():
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            break
        time.sleep(0.05)
    return peak


def main() -> None:
    p = parser(TITLE, sentences=0, repeats=1)
    p.add_argument("--tokens", default="100000,250000,500000,1000000", help="corpus sizes (MiniLM tokens)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--metrics-config", type=Path, default=REPO / "config" / "config.yaml",
                   help="the config whose metrics (and projection) make the plan")
    args = p.parse_args()
    device = resolve_device(args.device, args.threads)
    if device is None:
        return
    import threading

    import yaml

    from tokenuni.config import enabled_metrics, validate_config
    from tokenuni.metrics.suite import pass_plan

    config = validate_config(yaml.safe_load(args.metrics_config.read_text()))
    plan = pass_plan({name: config["metrics"][name] for name in enabled_metrics(config)},
                     config["projection"] if config["projection"]["enabled"] else None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(float(t)) for t in args.tokens.split(",")]
    rows, results = [], []
    for tokens in sizes:
        corpus = repeated_corpus(args.workdir, tokens, tokens_per_sentence=33.4)  # MiniLM tokens per WikiText-2 line
        stats = args.workdir / f"no-dump-{tokens}.npz"
        record = args.workdir / f"no-dump-{tokens}.json"
        command = [sys.executable, "-m", "tokenuni", "embed", "--corpus", str(corpus), "--corpus-name", "wikitext",
                   "--model", json.dumps({**MINILM, "batch_size": args.batch_size}), "--stats", str(stats),
                   "--plan", json.dumps(plan), "--device", device, "--no-progress", "--record", str(record),
                   "--job", json.dumps({"rule": "embed", "wildcards": {"corpus": f"repeated-{tokens}"}})]
        if args.threads:
            command += ["--threads", str(args.threads)]
        started = time.perf_counter()
        child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        done = []
        peak = {}
        watcher = threading.Thread(target=lambda peak=peak, child=child, done=done: peak.setdefault(
            "rss", peak_rss(child.pid, lambda: done)))
        watcher.start()
        _, stderr = child.communicate()
        done.append(True)
        watcher.join()
        seconds = time.perf_counter() - started
        if child.returncode:
            raise SystemExit(f"embed --stats failed for {tokens} tokens:\n{stderr[-3000:]}")
        logged = {entry["key"]: entry["value"] for entry in json.loads(record.read_text())["metrics"]}
        real, layers, hidden = int(logged["tokens"]), int(logged["layers"]), int(logged["hidden_size"])
        result = {"tokens": real, "seconds": seconds, "peak_rss_gib": peak["rss"] / 2**30,
                  "stats_mib": stats.stat().st_size / 2**20, "dump_float32_gib": real * layers * hidden * 4 / 2**30,
                  "forward_passes": int(logged.get("forward_passes", 0))}
        results.append(result)
        print(json.dumps(result), flush=True)
        rows.append(Row(f"{real:,} tokens: seconds", [seconds], "s",
                        note=f"{real / seconds:.0f} tok/s, {result['forward_passes']} forward passes"))
        rows.append(Row(f"{real:,} tokens: peak RSS", [result["peak_rss_gib"]], "GiB"))
        rows.append(Row(f"{real:,} tokens: disk (statistics)", [result["stats_mib"]], "MiB",
                        note=f"a float32 dump would be {result['dump_float32_gib']:.2f} GiB"))
    first, last = results[0], results[-1]
    rows.append(Row("peak RSS, largest ÷ smallest corpus", [last["peak_rss_gib"] / first["peak_rss_gib"]], "×",
                    ratio=last["peak_rss_gib"] / first["peak_rss_gib"], target=1.25, higher_is_better=False))
    rows.append(Row("disk, largest ÷ smallest corpus", [last["stats_mib"] / first["stats_mib"]], "×",
                    ratio=last["stats_mib"] / first["stats_mib"], target=1.25, higher_is_better=False))
    rows.append(Row("largest corpus (tokens)", [last["tokens"]], "tok", ratio=last["tokens"], target=1e6))
    context = {**machine(), "device": device, "sizes": sizes, "model": "all-MiniLM-L6-v2"}
    print_table(TITLE, rows, context)
    write_json(args.json_out, TITLE, rows, {**context, "results": results})


if __name__ == "__main__":
    main()
