"""Shared pieces of the on-demand benchmarks: arguments, the real corpus and dump, timing, the result table.

The benchmarks are scripts (``python tests/benchmarks/<name>.py``), not tests: no file here is named
``test_*.py``, so pytest never collects them (and there is deliberately no ``conftest.py`` here: it would
shadow ``tests/conftest.py`` for the test modules that ``from conftest import ...``). Every figure is a ratio of two timings measured interleaved in
one run on one machine (medians of ``--repeats``), so a shared or noisy machine moves both sides alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TOKENUNI_DATA", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import MINILM  # noqa: E402  (the tests' real-model spec: all-MiniLM-L6-v2)

DEFAULT_WORKDIR = Path(os.environ.get("TOKENUNI_BENCH_DIR", "/tmp/tokenuni-bench"))
#: WikiText-2 as config/config.yaml names it (the mirror's validation split), seeded sample of --sentences
WIKITEXT = {"name": "wikitext", "hub": None, "mirror": {"format": "wikitext", "files": ["wikitext-2/wiki.valid.tokens"]},
            "seed": 0, "drop_empty": True}


def parser(description: str, *, sentences: int, repeats: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sentences", type=int, default=sentences, help="WikiText-2 sentences in the benchmark corpus")
    p.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (medians are reported)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="cuda: the GPU variant (prints 'skipped: no CUDA' without one)")
    p.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="corpora and dumps are cached here")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch and BLAS on both sides (default: the libraries' own choice)")
    return p


def resolve_device(name: str, threads: int | None = None) -> str | None:
    """'cpu' or 'cuda'; None (after printing 'skipped: no CUDA') when CUDA is asked for and absent.
    ``threads`` caps torch's and the BLAS libraries' CPU threads (both sides of every comparison)."""
    import torch

    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        threadpool_limits(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # child processes

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA")
        return None
    return name


def wikitext_corpus(workdir: Path, sentences: int) -> Path:
    """The seeded WikiText-2 sample of ``sentences`` sentences as a normalised corpus (cached)."""
    from tokenuni.corpora import import_corpus

    out = Path(workdir) / f"wikitext-{sentences}.parquet"
    if not out.exists():
        import_corpus({**WIKITEXT, "max_sentences": sentences}, os.environ["TOKENUNI_DATA"], out)
    return out


def minilm_dump(workdir: Path, sentences: int, device: str = "cpu") -> Path:
    """Every layer of the real all-MiniLM-L6-v2 over that sample (cached; the study's batch size 64)."""
    from tokenuni.embed import embed_corpus

    out = Path(workdir) / f"minilm-wikitext-{sentences}.arrow"
    if not out.exists():
        embed_corpus(wikitext_corpus(workdir, sentences), {**MINILM, "batch_size": 64}, out, corpus_name="wikitext",
                     device=device, progress=True)
    return out


def model_dump(workdir: Path, sentences: int, spec: dict, label: str, device: str) -> Path:
    """The study's WikiText sample embedded by ``spec`` with its moments file (cached)."""
    from tokenuni.embed import embed_corpus
    from tokenuni.statistics import LayerMoments, moments_path

    out = workdir / f"{label}-wikitext-{sentences}.arrow"
    if out.exists() and moments_path(out).exists():
        return out
    made = {}

    def consumer(n_layers, hidden_size, metadata):
        made["moments"] = LayerMoments(n_layers, device)
        return made["moments"]

    summary = embed_corpus(wikitext_corpus(workdir, sentences), spec, out, corpus_name="wikitext", device=device,
                           progress=True, consumer=consumer)
    made["moments"].save(moments_path(out), {"rows": summary["tokens"]})
    return out


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", default=None, help="a local model folder (e.g. all-mpnet-base-v2) instead of MiniLM")
    p.add_argument("--model-id", default="sentence-transformers/all-mpnet-base-v2", help="the id of --model-path")


def model_from_arguments(args) -> tuple[dict, str]:
    """(model spec, label) of --model-path / --model-id, else the real MiniLM; the study's batch size 64."""
    if args.model_path:
        return {**MINILM, "id": args.model_id, "path": args.model_path, "batch_size": 64}, Path(args.model_path).name
    return {**MINILM, "batch_size": 64}, "minilm"


def default_metric_options() -> dict:
    """Every metric's options as the default study runs them (the schema's defaults)."""
    from tokenuni.config import validate_config
    from tokenuni.metrics import METRICS

    config = validate_config({"models": {"m": {"id": "m"}}, "corpora": {"c": {"mirror": {"format": "lines", "files": ["x"]}}}})
    return {name: config["metrics"][name] for name in METRICS}


def clock(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return time.perf_counter() - started, value


@dataclass
class Row:
    """One line of a benchmark table. ``ratio`` is the figure compared with ``target`` (``higher`` is better
    when ``higher_is_better``); ``samples`` are the raw timings or measurements."""

    name: str
    samples: list[float]
    unit: str = "s"
    ratio: float | None = None
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def minimum(self) -> float:
        return min(self.samples) if self.samples else float("nan")

    @property
    def met(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def print_table(title: str, rows: list[Row], context: dict | None = None) -> None:
    print(f"\n== {title} ==")
    if context:
        print("   " + ", ".join(f"{k}={v}" for k, v in context.items()))
    header = f"{'name':<44} {'median':>11} {'min':>11} {'unit':<6} {'ratio':>8} {'target':>9} {'met?':<5} note"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3g}"
        target = "" if row.target is None else ("≥ " if row.higher_is_better else "≤ ") + f"{row.target:g}"
        met = {None: "", True: "yes", False: "NO"}[row.met]
        print(f"{row.name:<44} {row.median:>11.4g} {row.minimum:>11.4g} {row.unit:<6} {ratio:>8} {target:>9} {met:<5} "
              f"{row.note}")


def write_json(path: Path | None, title: str, rows: list[Row], context: dict | None = None) -> dict:
    result = {"benchmark": title, "context": context or {},
              "rows": [{**asdict(r), "median": r.median, "min": r.minimum, "met": r.met} for r in rows]}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2, default=float))
        os.replace(tmp, path)
    return result


def machine() -> dict:
    import platform

    import torch

    info = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
