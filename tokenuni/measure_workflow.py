"""``tokenuni measure MODEL TEXTS``: one model on one text file through the study's own Snakemake workflow.

It writes a config for one model and one corpus (geometry only: the metrics suite on the corpus; STS,
fine-tuning and the token projections off), validated by the schema and shown, into a results folder of
its own (default ``results/measure/<model>--<texts>``), then runs the repository's ``Snakefile`` on it
with ``--directory`` that folder: the same jobs, reruns, MLflow runs (a store ``mlflow.db`` in the folder),
figures and report as any study. A second run of the same command has nothing to do.

The per-layer headline table (layers × average cosine, IsoScore, skewness of the normalised singular
values, …) is printed as soon as the run's merged metrics table is written (or at the end, when it was
up to date), followed by the figure, the report and the MLflow experiment with the address of its runs
table. Snakemake's own output goes to ``<folder>/logs/snakemake.log``; the terminal gets its progress.

TEXTS is a plain text file (one text per line; ``--format`` reads it as another mirror format, e.g.
``wikitext``), a YAML/JSON file holding one corpus entry of the config (``{mirror: {format, files},
max_sentences: ...}``, or ``{<key>: {...}}``), or the key of a corpus of the default config
(``wikitext``, ``stsb-test``, …).
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tokenuni.api import ApiError, as_key, headline_per_layer, metrics_section, model_entry
from tokenuni.errors import TokenuniError

#: where the repository's Snakefile is looked for, after $TOKENUNI_SNAKEFILE
SNAKEFILE_ENV = "TOKENUNI_SNAKEFILE"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
PROGRESS = re.compile(r"^(\d+) of (\d+) steps \((\d+)%\) done")


class MeasureError(TokenuniError, ValueError):
    """``tokenuni measure`` cannot run as asked; the message says what to change."""


def find_snakefile() -> Path:
    """The Snakefile of tokenuni's workflow: ``$TOKENUNI_SNAKEFILE``, else the checkout this library is in,
    else ``./Snakefile``; the folder must hold ``workflow/rules``. A clear error lists where it looked."""
    candidates = ([Path(os.environ[SNAKEFILE_ENV]).expanduser()] if os.environ.get(SNAKEFILE_ENV) else [])
    candidates += [REPO / "Snakefile", Path.cwd() / "Snakefile"]
    for path in candidates:
        if path.is_file() and (path.parent / "workflow" / "rules").is_dir():
            return path.resolve()
    looked = "; ".join(str(p) for p in candidates)
    raise MeasureError(f"tokenuni measure runs the tokenuni workflow, but found no Snakefile with workflow/rules "
                       f"beside it (looked at: {looked}). tokenuni runs from its checkout (pip install -e .): run "
                       f"from the checkout, or set {SNAKEFILE_ENV}=/path/to/tokenuni/Snakefile")


def corpus_for(texts: str, *, text_format: str = "lines", max_sentences: int | None = None,
               seed: int = 0) -> tuple[str, dict, str | None]:
    """(corpus key, corpus entry, data mirror) for TEXTS (see the module docstring); paths absolute."""
    from tokenuni.config import data_mirror, load_yaml

    path = Path(texts).expanduser()
    sampling = {"max_sentences": max_sentences, "seed": seed} if max_sentences is not None else {}
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        loaded = load_yaml(path)
        if isinstance(loaded, dict) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict) \
                and not {"hub", "mirror"} & set(loaded):
            key, entry = next(iter(loaded.items()))
        else:
            key, entry = path.stem, loaded
        if not isinstance(entry, dict) or not {"hub", "mirror"} & set(entry):
            raise MeasureError(f"{path}: expected one corpus entry of the config (a mapping with mirror and/or hub, "
                               "see workflow/schemas/config.schema.yaml), or {<key>: <entry>}")
        return as_key(key, "corpus"), {**entry, **sampling}, _mirror(data_mirror({}))
    if path.is_file():
        path = path.resolve()
        entry = {"mirror": {"format": text_format, "files": [path.name]}, **sampling}
        return as_key(path.stem, "texts"), entry, str(path.parent)
    known = load_yaml(DEFAULT_CONFIG).get("corpora", {}) if DEFAULT_CONFIG.is_file() else {}
    if texts in known:
        entry = {**known[texts], **sampling}
        return texts, entry, _mirror(data_mirror(load_yaml(DEFAULT_CONFIG)))
    raise MeasureError(f"TEXTS {texts!r} is not a file, and not a corpus of {DEFAULT_CONFIG} (known: "
                       f"{', '.join(known) or 'none'}); give a text file with one text per line, a YAML file with a "
                       "corpus entry, or one of those keys")


def _mirror(mirror: str | None) -> str | None:
    """A data mirror as an absolute path (relative ones are relative to the checkout, as in config.yaml)."""
    if not mirror:
        return None
    path = Path(mirror).expanduser()
    return str((path if path.is_absolute() else REPO / path).resolve())


def measure_config(model: str, texts: str, *, metrics=None, results: str | None = None,
                   text_format: str = "lines", max_sentences: int | None = None, seed: int = 0,
                   batch_size: int | None = None, max_length: int | None = None) -> tuple[dict, Path]:
    """(the study config of one model on one corpus, its results folder); checked against the schema."""
    from tokenuni.config import ConfigError, validate_config

    try:
        model_key, spec = model_entry(model, batch_size=batch_size, max_length=max_length)
        metrics = metrics_section(metrics)
    except ApiError as error:
        raise MeasureError(str(error)) from None
    corpus_key, corpus, mirror = corpus_for(texts, text_format=text_format, max_sentences=max_sentences, seed=seed)
    folder = Path(results or Path("results") / "measure" / f"{model_key}--{corpus_key}").expanduser().resolve()
    config = {
        "study": f"measure-{model_key}--{corpus_key}",
        "results": str(folder),
        "resources": str(folder / "resources"),
        "data_mirror": mirror,
        "models": {model_key: spec},
        "corpora": {corpus_key: corpus},
        "metrics": {name: options for name, options in metrics.items() if options != {"enabled": False}},
        "projection": {"enabled": False},
        "sts": {"enabled": False},
        "finetune": {"enabled": False},
    }
    config["metrics"].update({name: options for name, options in metrics.items() if options == {"enabled": False}})
    try:
        validate_config(copy.deepcopy(config))
    except ConfigError as error:
        raise MeasureError(f"the generated config is not valid: {error}") from None
    return config, folder


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds it (the config is an input of the report: an
    unchanged config must keep its mtime, or a rerun would redo the report)."""
    from tokenuni.files import atomic_path

    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return True


def format_headline(table) -> str:
    """The per-layer headline table as text (layers × metrics, 4 significant digits), one block per model
    and corpus."""
    blocks = []
    for (model, corpus), part in table.groupby(["model", "corpus"], sort=False):
        wide = headline_per_layer(part)
        if wide.empty:
            blocks.append(f"{model} on {corpus}: none of the headline metrics was computed")
            continue
        text = wide.to_string(float_format=lambda v: f"{v:.4g}")
        blocks.append(f"{model} on {corpus} (layer 0 = embedding output, layer i = output of block i):\n{text}")
    return "\n\n".join(blocks)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def run_measure(model: str, texts: str, *, metrics=None, results: str | None = None, cores: int | None = None,
                text_format: str = "lines", max_sentences: int | None = None, seed: int = 0,
                batch_size: int | None = None, max_length: int | None = None, snakemake_args: list[str] = (),
                out=None) -> int:
    """Run the workflow on one model and one text file, printing the config, progress, the headline table
    and where the figure, the report and the MLflow runs are. Returns Snakemake's exit status."""
    from tokenuni.tables import read_table
    from tokenuni.tracking import runs_view_url

    out = out or sys.stdout
    started = time.monotonic()
    snakefile = find_snakefile()
    config, folder = measure_config(model, texts, metrics=metrics, results=results, text_format=text_format,
                                    max_sentences=max_sentences, seed=seed, batch_size=batch_size,
                                    max_length=max_length)
    config_file = folder / "config.yaml"
    text = ("# written by `tokenuni measure`: one model, one corpus, geometry only "
            "(workflow/schemas/config.schema.yaml)\n" + yaml.safe_dump(config, sort_keys=False))
    write_if_changed(config_file, text)
    print(f"config {config_file} (checked against the schema):\n" + "\n".join(
        "  " + line for line in yaml.safe_dump({k: config[k] for k in ("models", "corpora")}, sort_keys=False)
        .splitlines()) + f"\n  metrics: {', '.join(n for n, o in config['metrics'].items() if o.get('enabled', True))}",
          file=out, flush=True)
    log_file = folder / "logs" / "snakemake.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("TOKENUNI_DATA", None)  # the config names the mirror (absolute), so a rerun sees the same params
    env["PYTHONPATH"] = os.pathsep.join([str(snakefile.parent), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # the jobs' `python`
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--configfile", str(config_file),
               "--directory", str(folder), "--workflow-profile", str(snakefile.parent / "workflow" / "profiles" /
                                                                       "default"),
               "--cores", str(cores or os.cpu_count() or 1),
               "--prioritize", str(folder / "tables" / "metrics.parquet"),  # the table first, figures after
               *snakemake_args]
    print(f"running the workflow (log: {log_file}) ...", file=out, flush=True)
    table_file = folder / "tables" / "metrics.parquet"
    before = _mtime(table_file)
    printed = False

    def show_table(note: str) -> None:
        nonlocal printed
        printed = True
        print(f"\n{format_headline(read_table(table_file))}\n({note}; all rows: {table_file})\n", file=out, flush=True)

    with open(log_file, "w", encoding="utf-8") as log, subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env) as process:
        reader = open(log_file, encoding="utf-8")
        last_progress, partial = "", ""
        while True:
            code = process.poll()
            lines = (partial + reader.read()).split("\n")
            partial = lines.pop()  # a line Snakemake is still writing
            for line in lines:
                match = PROGRESS.match(line.strip())
                if match and line.strip() != last_progress:
                    last_progress = line.strip()
                    print(f"  {last_progress}", file=out, flush=True)
            if not printed and _mtime(table_file) not in (None, before):
                show_table(f"first table after {time.monotonic() - started:.0f} s")
            if code is not None:
                break
            time.sleep(0.5)
        reader.close()
    log_text = log_file.read_text(encoding="utf-8", errors="replace")
    if code != 0:
        tail = "\n".join(log_text.splitlines()[-40:])
        print(f"\nthe workflow failed (exit {code}); the end of {log_file}:\n{tail}", file=out, flush=True)
        return code
    if "Nothing to be done" in log_text:
        print("Snakemake: nothing to be done (every output is up to date)", file=out, flush=True)
    if not printed and table_file.is_file():
        show_table("up to date")
    _print_outputs(folder, out, runs_view_url)
    print(f"done in {time.monotonic() - started:.0f} s", file=out, flush=True)
    return 0


def _print_outputs(folder: Path, out, runs_view_url) -> None:
    import json

    figure = folder / "figures" / "geometry_by_layer.png"
    print(f"figure: {figure if figure.is_file() else '(none: no metric of the geometry panels)'}", file=out)
    print(f"report: {folder / 'report' / 'index.html'}", file=out)
    sync = folder / "mlflow" / "sync.json"
    if sync.is_file():
        result = json.loads(sync.read_text(encoding="utf-8"))
        uri = result["tracking_uri"]
        ui = uri if uri.startswith("http") else "http://127.0.0.1:5000"
        print(f"MLflow: experiment {result['experiment']} (id {result['experiment_id']}, "
              f"{len(result.get('runs', {}))} runs) in {uri}", file=out)
        if not uri.startswith("http"):
            print(f"  mlflow ui --backend-store-uri {uri}", file=out)
        print(f"  runs table with the headline metrics: {runs_view_url(ui, result['experiment_id'])}", file=out)
    out.flush()
