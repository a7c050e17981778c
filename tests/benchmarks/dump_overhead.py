"""Dump overhead: embedding-dump throughput (tokens/s, Arrow writing included) against a bare forward pass.

Both sides run the same model (the real all-MiniLM-L6-v2, freshly loaded per run on both sides, loading
not timed) over the same length-sorted batches of the same WikiText-2 sample: *bare* iterates :func:`tokenuni.embed.forward_hidden_states` and drops the hidden states
(on CUDA it synchronises at the end); *dump* is :func:`tokenuni.embed.embed_corpus` end to end after the model
is loaded (forward, masking, copy to the host, token index, Arrow writing, atomic rename), timed by its own
``seconds``. Repeats alternate bare/dump; the figure is the median of the paired ratios
dump tokens/s ÷ bare tokens/s (target ≥ 0.95). On the CPU a second, contention-proof estimate comes from
the dump runs alone: the time spent inside the forward generator (tokenizer padding + model) as a share of
``embed_corpus``'s time, measured batch by batch, interleaved with the dump work it is compared with (on
CUDA the forward is asynchronous, so the split is not shown). With ``--dtypes float32,bfloat16`` (default on CUDA) the
bare forward is also timed per dtype (bf16 vs fp32 tokens/s; dumps are always written in float32).

    python tests/benchmarks/dump_overhead.py --sentences 1000 --repeats 5 [--device cuda] [--json-out x.json]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MINILM, Row, clock, machine, parser, print_table, resolve_device, wikitext_corpus, write_json  # noqa: E402

TITLE = "dump overhead"
TARGET = 0.95


def bare_forward(tokenizer, model, input_ids, batch_size: int, device: str) -> float:
    """Seconds for one bare forward pass over every batch (hidden states produced, then dropped)."""
    import torch

    from tokenuni.embed import forward_hidden_states

    def run():
        for _ in forward_hidden_states(tokenizer, model, input_ids, batch_size, device, progress=False):
            pass
        if device == "cuda":
            torch.cuda.synchronize()

    seconds, _ = clock(run)
    return seconds


def forward_timer(generator_function, spent: dict):
    """``generator_function`` wrapped so that the time spent producing each item adds to ``spent['forward']``."""
    def wrapper(*args, **kwargs):
        items = generator_function(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                spent["forward"] += time.perf_counter() - started
                return
            spent["forward"] += time.perf_counter() - started
            yield item
    return wrapper


def main(argv=None) -> dict | None:
    p = parser(__doc__.split("\n")[0], sentences=1000, repeats=5)
    p.add_argument("--batch-size", type=int, default=64, help="the study's batch size")
    p.add_argument("--dtypes", default=None, help="bare-forward dtypes to compare (default: float32 on the CPU, "
                                                  "float32,bfloat16 on CUDA)")
    args = p.parse_args(argv)
    device = resolve_device(args.device, args.threads)
    if device is None:
        return None
    import torch

    import tokenuni.embed
    from tokenuni.embed import effective_max_length, embed_corpus, load_model, tokenize
    from tokenuni.corpora import read_corpus

    corpus = wikitext_corpus(args.workdir, args.sentences)
    spec = {**MINILM, "batch_size": args.batch_size}
    tokenizer, model = load_model(spec, torch.device(device))
    input_ids, _, _ = tokenize(tokenizer, read_corpus(corpus)["text"].to_pylist(), effective_max_length(spec, model))
    tokens = sum(len(ids) for ids in input_ids)
    dtypes = (args.dtypes or ("float32,bfloat16" if device == "cuda" else "float32")).split(",")

    bare_forward(tokenizer, model, input_ids, args.batch_size, device)  # warm-up (allocator, kernels, page cache)
    bare, dumped, ratios, sizes, shares = [], [], [], [], []
    spent = {"forward": 0.0}
    # embed_corpus calls it from tokenuni.embed.corpus; bare_forward imports it from tokenuni.embed: time both
    tokenuni.embed.forward_hidden_states = tokenuni.embed.corpus.forward_hidden_states = forward_timer(
        tokenuni.embed.forward_hidden_states, spent)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        out = Path(tmp) / "dump.arrow"
        embed_corpus(corpus, spec, out, device=device, progress=False)  # warm-up
        for _ in range(args.repeats):
            # a freshly loaded model on both sides (embed_corpus loads its own), loading not timed
            _, fresh = load_model(spec, torch.device(device))
            b = bare_forward(tokenizer, fresh, input_ids, args.batch_size, device)
            del fresh
            spent["forward"] = 0.0
            summary = embed_corpus(corpus, spec, out, device=device, progress=False)
            d = float(summary["seconds"])
            shares.append(spent["forward"] / d)
            bare.append(tokens / b)
            dumped.append(tokens / d)
            ratios.append(b / d)
            sizes.append(out.stat().st_size / d / 1e9)
    rows = [
        Row("bare forward (float32)", bare, "tok/s"),
        Row("embed_corpus dump (forward + Arrow)", dumped, "tok/s"),
        Row("dump write rate", sizes, "GB/s"),
        Row("dump / bare throughput (paired)", ratios, "x", ratio=statistics.median(ratios), target=TARGET),
    ]
    if device == "cpu":
        rows.append(Row("forward share of embed_corpus (batch split)", shares, "x", ratio=statistics.median(shares),
                        target=TARGET, note="contention-proof estimate of the same ratio"))
    for dtype in dtypes:
        if dtype == "float32":
            continue
        _, low = load_model({**spec, "dtype": dtype}, torch.device(device))
        bare_forward(tokenizer, low, input_ids, args.batch_size, device)  # warm-up
        fp32, other = [], []
        for _ in range(args.repeats):
            fp32.append(tokens / bare_forward(tokenizer, model, input_ids, args.batch_size, device))
            other.append(tokens / bare_forward(tokenizer, low, input_ids, args.batch_size, device))
        speedups = [o / f for o, f in zip(other, fp32)]
        rows += [Row(f"bare forward ({dtype})", other, "tok/s"),
                 Row(f"{dtype} / float32 forward (paired)", speedups, "x", ratio=statistics.median(speedups))]
    context = {"device": device, "sentences": args.sentences, "tokens": tokens, "batch_size": args.batch_size,
               "repeats": args.repeats, **machine()}
    print_table(TITLE, rows, context)
    return write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
