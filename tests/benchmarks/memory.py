"""Memory: peak RSS of a metrics job (``python -m tokenuni metric``) over dumps 1×, 2× and 4× its budget.

The budget (``--budget-gib``, default 1.5 GiB) sets the dump sizes: the
real MiniLM dump of ``--sentences`` WikiText-2 sentences is repeated (the corpus repeated: sentence ids
shifted per copy, frequencies multiplied, metadata updated) until it is ``m`` × the budget for m = 1, 2, 4.
Each job runs in a child process; its peak RSS is the kernel's high-water mark ``VmHWM`` of the job's
own address space (read from ``/proc/<pid>/status`` every 20 ms; it is monotonic, so the last reading
is the peak; file pages of the memory-mapped dump included; not ``wait4``'s ``ru_maxrss``, which
starts at the RSS of the forking parent — the model of an earlier benchmark under ``run_all``) and, sampled from ``/proc/<pid>/status`` every 20 ms, its peak anonymous
memory (``RssAnon``: what the job itself allocates) and peak mapped-file memory (``RssFile``).
Target: peak RSS < 1.5 GiB (``--rss-target-gib``) at every size and flat (4× ÷ 1× ≤ 1.1).

    python tests/benchmarks/memory.py --metrics spectrum,cosine_family [--budget-gib 1.5] [--json-out x.json]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, machine, minilm_dump, parser, print_table, resolve_device, write_json  # noqa: E402

TITLE = "metric job memory"
GIB = 2**30
MULTIPLES = (1, 2, 4)


def repeat_dump(source: Path, out: Path, min_bytes: int) -> Path:
    """``source`` repeated as often as needed to reach ``min_bytes``: the dump of the corpus repeated (cached)."""
    import numpy as np
    import pyarrow as pa

    from tokenuni.files import atomic_path
    from tokenuni.store import META_PREFIX, open_dump

    copies = max(1, -(-min_bytes // source.stat().st_size))
    if out.exists() and out.stat().st_size >= min_bytes:
        return out
    dump = open_dump(source)
    index = dump.read_index()
    shift = int(index["sentence_id"].to_numpy().max()) + 1
    meta = dict(dump.reader.schema.metadata)
    for key in ("tokens", "sentences"):
        if f"{META_PREFIX}{key}".encode() in meta:
            meta[f"{META_PREFIX}{key}".encode()] = str(int(meta[f"{META_PREFIX}{key}".encode()]) * copies).encode()
    schema = dump.reader.schema.with_metadata(meta)
    names = schema.names
    with atomic_path(out) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for copy in range(copies):
            for batch in dump.batches():
                columns = list(batch.columns)
                sid, freq = names.index("sentence_id"), names.index("frequency")
                columns[sid] = pa.array(batch.column(sid).to_numpy() + copy * shift, type=pa.int64())
                columns[freq] = pa.array(batch.column(freq).to_numpy() * np.int64(copies), type=pa.int64())
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    return out


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    values[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def run_job(command: list[str]) -> dict:
    """Run ``command``; its wall time, peak RSS (VmHWM), and sampled peaks of RssAnon / RssFile."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for key, value in _status(process.pid).items():
                if key in peaks:
                    peaks[key] = max(peaks[key], value)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    done.set()
    sampler.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-2000:]}")
    return {"seconds": time.perf_counter() - started, "max_rss": peaks["VmHWM"] or usage.ru_maxrss * 1024,
            "anon": peaks["RssAnon"], "file": peaks["RssFile"]}


def main(argv=None) -> dict | None:
    p = parser(__doc__.split("\n")[0], sentences=2000, repeats=1)
    p.add_argument("--budget-gib", type=float, default=1.5, help="the job's memory budget: dumps are 1, 2, 4 x this")
    p.add_argument("--rss-target-gib", type=float, default=1.5, help="target for the job's peak RSS")
    p.add_argument("--metrics", default="spectrum,cosine_family", help="comma-separated metric names")
    p.add_argument("--options", default="{}", help="JSON options passed to every metric job")
    args = p.parse_args(argv)
    device = resolve_device(args.device, args.threads)
    if device is None:
        return None
    source = minilm_dump(args.workdir, args.sentences)
    budget = int(args.budget_gib * GIB)
    dumps = {m: repeat_dump(source, args.workdir / f"minilm-wikitext-{args.sentences}-{m}x{args.budget_gib:g}GiB.arrow",
                            m * budget) for m in MULTIPLES}
    rows = []
    for name in args.metrics.split(","):
        results = {m: [] for m in MULTIPLES}
        for _ in range(args.repeats):
            for m, dump in dumps.items():
                out = args.workdir / f"memory-{name}-{m}x.parquet"
                results[m].append(run_job([sys.executable, "-m", "tokenuni", "metric", name, "--dump", str(dump),
                                           "--options", args.options, "--model", "minilm", "--corpus", "wikitext",
                                           "--out", str(out), "--device", device, "--no-progress",
                                           *(["--threads", str(args.threads)] if args.threads else [])]))
        first = min(r["max_rss"] for r in results[1])
        for m, dump in dumps.items():
            peak = [r["max_rss"] / GIB for r in results[m]]
            size = dump.stat().st_size
            rows.append(Row(f"{name}: {m}x budget ({size / GIB:.2f} GiB dump)", peak, "GiB", ratio=min(peak),
                            target=args.rss_target_gib, higher_is_better=False,
                            note=(f"anon {max(r['anon'] for r in results[m]) / GIB:.2f} GiB, "
                                  f"mapped file {max(r['file'] for r in results[m]) / GIB:.2f} GiB, "
                                  f"{min(r['seconds'] for r in results[m]):.0f} s, "
                                  f"{size / min(r['seconds'] for r in results[m]) / 1e9:.2f} GB/s")))
        growth = min(r["max_rss"] for r in results[MULTIPLES[-1]]) / first
        rows.append(Row(f"{name}: peak RSS 4x ÷ 1x (flat = 1)", [growth], "x", ratio=growth, target=1.1,
                        higher_is_better=False))
    context = {"device": device, "budget_gib": args.budget_gib, "source_sentences": args.sentences,
               "options": json.loads(args.options), **machine()}
    print_table(TITLE, rows, context)
    return write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
