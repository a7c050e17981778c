"""Scheduling: a Snakemake dry run of the papers' study (``config/paper.yaml``, thousands of jobs).

Runs ``snakemake -n --configfile config/paper.yaml`` on this checkout's Snakefile in a fresh working
directory (nothing built yet, so every job is scheduled; the mirror comes from ``TOKENUNI_DATA``; a dry
run does not run the ``onstart`` source check, so the papers' models need not be present). Reports the
wall time (target < 10 s) and the child's CPU time (user + system, from ``wait4``: robust to a busy machine),
medians of ``--repeats``, and the number of jobs.

    python tests/benchmarks/scheduling.py --repeats 3 [--configfile config/paper.yaml] [--json-out x.json]
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, machine, parser, print_table, write_json  # noqa: E402

TITLE = "scheduling (dry run)"
TARGET_SECONDS = 10.0


def dry_run(configfile: Path, workdir: Path) -> dict:
    snakemake = shutil.which("snakemake") or str(Path(sys.executable).with_name("snakemake"))
    command = [snakemake, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(configfile), "--cores", "2"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=workdir)
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output.decode(errors='replace')[-3000:]}")
    text = output.decode(errors="replace")
    total = re.search(r"^total\s+(\d+)", text, re.MULTILINE)
    return {"wall": wall, "jobs": int(total.group(1)) if total else None}


def main(argv=None) -> dict | None:
    p = parser(__doc__.split("\n")[0], sentences=0, repeats=3)
    p.add_argument("--configfile", type=Path, default=REPO / "config" / "paper.yaml")
    args = p.parse_args(argv)
    walls, cpus, jobs = [], [], None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="dryrun-") as tmp:
            before = os.times()
            result = dry_run(args.configfile.resolve(), Path(tmp))
            after = os.times()
        walls.append(result["wall"])
        cpus.append((after.children_user - before.children_user) + (after.children_system - before.children_system))
        jobs = result["jobs"]
    rows = [Row(f"snakemake -n {args.configfile.name} ({jobs} jobs), wall", walls, "s",
                ratio=sorted(walls)[len(walls) // 2], target=TARGET_SECONDS, higher_is_better=False),
            Row("  the same, CPU time (user + sys)", cpus, "s", ratio=sorted(cpus)[len(cpus) // 2],
                target=TARGET_SECONDS, higher_is_better=False)]
    context = {"configfile": str(args.configfile), "jobs": jobs, "repeats": args.repeats, **machine()}
    print_table(TITLE, rows, context)
    return write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
