"""Run every benchmark (dump overhead, metrics vs references, memory, scheduling) and print one summary.

    python tests/benchmarks/run_all.py [--device cpu|cuda|auto] [--quick] [--threads N] [--json-out DIR]

``--quick`` uses small sizes (minutes on a laptop); without it, each benchmark's own defaults. With
``--device cuda`` and no CUDA, the device benchmarks print "skipped: no CUDA".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dump_overhead  # noqa: E402
import memory  # noqa: E402
import metrics_speed  # noqa: E402
import scheduling  # noqa: E402
from common import DEFAULT_WORKDIR  # noqa: E402

QUICK = {
    "dump_overhead": ["--sentences", "300", "--repeats", "5"],
    "metrics_speed": ["--sentences", "200", "--repeats", "3"],
    "memory": ["--sentences", "300", "--budget-gib", "0.5", "--metrics", "cosine_family,spectrum"],
    "scheduling": ["--repeats", "3"],
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json-out", type=Path, default=None, help="folder for one JSON file per benchmark")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = p.parse_args(argv)
    results = {}
    for name, module in (("dump_overhead", dump_overhead), ("metrics_speed", metrics_speed), ("memory", memory),
                         ("scheduling", scheduling)):
        argv = list(QUICK[name]) if args.quick else []
        argv += ["--workdir", str(args.workdir)]
        if name != "scheduling":
            argv += ["--device", args.device]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if args.json_out:
            argv += ["--json-out", str(args.json_out / f"{name}.json")]
        results[name] = module.main(argv)

    print("\n== summary ==")
    print(f"{'benchmark':<16} {'figure':<50} {'value':>9} {'target':>9} met?")
    for name, result in results.items():
        if result is None:
            print(f"{name:<16} skipped: no CUDA")
            continue
        for row in result["rows"]:
            if row["target"] is None:
                continue
            sign = "≥ " if row["higher_is_better"] else "≤ "
            print(f"{name:<16} {row['name']:<50} {row['ratio']:>9.3g} {sign + format(row['target'], 'g'):>9} "
                  f"{'yes' if row['met'] else 'NO'}")


if __name__ == "__main__":
    main()
