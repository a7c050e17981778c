"""``tokenuni check``: what the study's first jobs would find out, found before any job starts.

:func:`study_problems` gathers, as one list of messages (each naming the config key, the file or the
model, and the fix):

1. the sources (:func:`tokenuni.sources.check_sources`): every model and corpus resolvable, the hub
   reachable where something needs it;
2. every local model resolved as a job would load it, without loading a tensor: ``config.json``
   parsed and its depth (``num_hidden_layers``) and width known, tokenizer files present, weight files
   present (every shard of a sharded index), each ``*.safetensors`` header readable (the JSON header
   only, and every tensor's byte range inside the file), and the header's tensor shapes equal to those
   of the architecture the config describes (transformers builds it on the ``meta`` device: no
   memory, no weights) — a mismatch there would otherwise end the embed job with transformers'
   advice to set ``ignore_mismatched_sizes``;
3. the config's references against those facts: ``sts.poolings`` layers, the fine-tuning variants'
   layers (I-STAR, the cosine regulariser, fusion), ``projection.layers`` and ``components``, the STS
   transforms' parameters (whitening ``k`` and all-but-the-top ``d_removed`` against the width);
4. every corpus read through its reader as the import job reads it (every row checked, see
   :mod:`tokenuni.corpora`), with its counts: STS datasets paired and scored, cluster counts of
   ``cluster_removal`` against the sentences it is fit on; the GLUE tasks' mirror files likewise;
5. the model family of each local model first (:func:`tokenuni.families.model_family_problems`: an
   architecture the stages run, encoder or decoder as configured, a token to pad with); a model of a family
   tokenuni does not run is reported with that alone.

The workflow runs the same check when it starts (``workflow/rules/common.smk``).
"""
from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenuni.errors import TokenuniError
from tokenuni.families import model_family_problems

log = logging.getLogger(__name__)


class StudyCheckError(TokenuniError, RuntimeError):
    """The study cannot run as configured; the message lists every problem found before the first job."""


@dataclass
class ModelFacts:
    """What a job would learn about one model: its folder, config and weights."""

    key: str
    spec: dict
    folder: Path
    hf_config: dict
    #: transformer blocks (``num_hidden_layers``); the model returns ``depth + 1`` hidden states
    depth: int | None = None
    hidden_size: int | None = None
    #: tensor name -> shape, from the safetensors headers (empty when the weights are pickles)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def hidden_states(self) -> int | None:
        return None if self.depth is None else self.depth + 1


_DEPTH_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                    "tokenizer.model")
#: largest safetensors header read (the format allows 100 MB)
_MAX_HEADER = 100 << 20


# -- models ----------------------------------------------------------------------------------------
def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor entries (name -> {dtype, shape, data_offsets}) of a ``.safetensors`` file, from its JSON header
    only; a file that is truncated or not safetensors raises :class:`ValueError` saying why."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise ValueError(f"header length {length} does not fit in the file of {size} bytes")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"the header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    data = size - 8 - length
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    for name, entry in tensors.items():
        try:
            begin, end = entry["data_offsets"]
            shape = [int(d) for d in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"tensor {name!r} has no shape / data_offsets") from None
        if not 0 <= begin <= end <= data:
            raise ValueError(f"tensor {name!r} lies at bytes {begin}..{end} of the data, which holds {data} bytes "
                             "(the file is truncated)")
        entry["shape"] = shape
    return tensors


def _weight_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The safetensors files a load would read (every shard of an index), and problems with them."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as error:
            return [], [f"{index} is not a safetensors index ({type(error).__name__}: {error})"]
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            return [], [f"{index} lists shard(s) missing from the folder: {', '.join(missing)}"]
        return [folder / name for name in shards], []
    return sorted(folder.glob("*.safetensors")), []


def _expected_shapes(hf_config: dict) -> tuple[dict[str, tuple[int, ...]], set[str], str] | str:
    """Parameter shapes of the architecture ``config.json`` describes, built by transformers on the ``meta``
    device (no memory, no weights, no code from the model's folder): (state-dict shapes, parameter names,
    base_model_prefix), or a problem."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = hf_config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return (f"config.json's model_type {model_type!r} is not an architecture transformers "
                f"{transformers.__version__} knows, so the embed stage cannot build it")
    try:
        options = {k: v for k, v in hf_config.items() if k != "model_type"}
        config = AutoConfig.for_model(hf_config.get("model_type") or "", **options)
        with torch.device("meta"):
            model = AutoModel.from_config(config)
    except (ValueError, KeyError, OSError, ImportError, AttributeError, TypeError) as error:
        return (f"transformers {transformers.__version__} cannot build this architecture from config.json "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300]})")
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    return shapes, {name for name, _ in model.named_parameters()}, model.base_model_prefix or ""


def _block_zero(name: str) -> str:
    """The same tensor name in block 0 (``encoder.layer.5.x`` -> ``encoder.layer.0.x``)."""
    return re.sub(r"\.\d+\.", ".0.", name, count=1)


def _shape_problems(facts: ModelFacts, expected, where: str) -> list[str]:
    """Stored tensors against the architecture's: shapes that differ, blocks the config has and the weights lack
    (they would start from random values), blocks the weights have beyond the config (a load drops them). Names
    are matched as a load matches them (with or without the base model's prefix; old ``gamma``/``beta``);
    tensors of heads or of other naming schemes are left alone, so only what certainly differs is reported."""
    shapes, parameters, prefix = expected
    stored_names = {re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name)): name for name in facts.shapes}

    def stored(name):
        for candidate in (name, f"{prefix}.{name}" if prefix else None,
                          name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else None):
            if candidate and candidate in stored_names:
                return stored_names[candidate]
        return None

    mismatched, missing = [], []
    for name, shape in shapes.items():
        found = stored(name)
        if found is None:
            if name in parameters and _block_zero(name) != name and stored(_block_zero(name)) is not None:
                missing.append(name)  # block 0 has it: the weights have fewer blocks than the config
        elif tuple(facts.shapes[found]) != shape:
            mismatched.append(f"{found} {list(facts.shapes[found])} where the config implies {list(shape)}")
    known = {stored(name) for name in shapes} - {None}
    deeper = sorted(name for name in facts.shapes
                    if name not in known and _block_zero(name) != name and _block_zero(name) in known)
    problems = []
    if not known and shapes:
        problems.append(f"{where}: none of the architecture's {len(shapes)} tensors is in the weight files (e.g. "
                        f"{', '.join(list(shapes)[:2])}; the files hold {', '.join(list(facts.shapes)[:2])}); the "
                        "weights are of another architecture than its config.json says")
    if deeper:
        problems.append(f"{where}: the weight files hold blocks beyond the {facts.depth} of its config.json "
                        f"(e.g. {', '.join(deeper[:2])}), which a load would silently drop; put the config.json "
                        "saved with these weights beside them")
    if mismatched:
        problems.append(f"{where}: {len(mismatched)} weight tensor(s) do not have the shapes its config.json implies "
                        f"({'; '.join(mismatched[:3])}{'; ...' if len(mismatched) > 3 else ''}); the weights belong to "
                        "another configuration: put the config.json saved with these weights beside them, or point "
                        "the model's path at the folder that matches")
    if missing:
        problems.append(f"{where}: {len(missing)} of the architecture's {len(parameters)} weight tensors are not in "
                        f"the weight files (e.g. {', '.join(missing[:3])}): its config.json has more blocks than the "
                        "weights, whose missing blocks would start from random values; put the config.json saved "
                        "with these weights beside them")
    return problems


def model_facts(key: str, spec: dict, folder: Path) -> tuple[ModelFacts | None, list[str]]:
    """Read a local model folder as a job would load it (see the module docstring): its facts, or problems."""
    where = f"model '{key}' ({spec['id']} at {folder})"
    config_file = folder / "config.json"
    try:
        hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(hf_config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        return None, [f"{where}: {config_file} cannot be read as JSON ({error}); point models.{key}.path at a "
                      "folder saved by save_pretrained"]
    facts = ModelFacts(key, spec, folder, hf_config)
    family = model_family_problems(hf_config, spec, where)
    if family:  # an architecture tokenuni does not run: that is what to fix first, whatever else the folder holds
        return None, family
    problems: list[str] = []
    facts.depth = next((int(hf_config[k]) for k in _DEPTH_KEYS if isinstance(hf_config.get(k), int)), None)
    facts.hidden_size = next((int(hf_config[k]) for k in _WIDTH_KEYS if isinstance(hf_config.get(k), int)), None)
    if facts.depth is None:
        problems.append(f"{where}: config.json gives no depth (none of {', '.join(_DEPTH_KEYS)}), so its layers "
                        "cannot be dumped or checked; use the config.json saved with the model")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        problems.append(f"{where}: no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}); save the tokenizer "
                        "into the same folder (tokenizer.save_pretrained)")
    files, weight_problems = _weight_files(folder)
    problems += [f"{where}: {p}" for p in weight_problems]
    if not files and not weight_problems:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")
                         and p.name != "training_args.bin")
        if not pickled:
            problems.append(f"{where}: config.json but no weight files (no *.safetensors, no "
                            "model.safetensors.index.json); copy the weights into the folder (save_pretrained "
                            "writes model.safetensors)")
        elif not spec.get("allow_pickle_weights"):
            pass  # tokenuni.sources.require_safe_weights says it (checked with the sources)
        return facts, problems
    for path in files:
        try:
            header = safetensors_header(path)
        except (OSError, ValueError) as error:
            problems.append(f"{where}: {path.name} is not a readable safetensors file ({error}); download or "
                            "save the weights again")
            continue
        facts.shapes.update({name: tuple(entry["shape"]) for name, entry in header.items()})
    if facts.shapes and not problems and not spec.get("trust_remote_code"):  # a check never runs a model's code
        expected = _expected_shapes(hf_config)
        if isinstance(expected, str):
            problems.append(f"{where}: {expected}; use a model of an architecture the installed transformers knows, "
                            "or upgrade transformers")
        else:
            problems += _shape_problems(facts, expected, where)
    return facts, problems


# -- references of the config against the models -----------------------------------------------------
def reference_problems(facts: ModelFacts, config: dict) -> list[str]:
    """Config keys that name layers, widths or parameters a model cannot give."""
    from tokenuni.sentences import SentenceEmbeddingError, validate_pooling

    problems = []
    n, width, key = facts.hidden_states, facts.hidden_size, facts.key
    sts = config.get("sts", {})
    if n is not None and sts.get("enabled", True) and sts.get("datasets"):
        for name, pooling in (sts.get("poolings") or {}).items():
            try:
                validate_pooling(name, pooling, n)
            except SentenceEmbeddingError as error:
                problems.append(f"config key sts.poolings.{name}.layers: {error} (model '{key}', "
                                f"{facts.depth} blocks); use layers in -{n}..{n - 1}")
    finetune = config.get("finetune", {})
    if n is not None and finetune.get("enabled", True) and finetune.get("tasks"):
        from tokenuni.finetune.regularisers import resolve_layers

        for variant, parts in (finetune.get("variants") or {}).items():
            for part, default in (("istar", [-1]), ("cosine_regulariser", [-1]), ("fusion", "all")):
                if not parts.get(part):
                    continue
                layers = parts[part].get("layers", default)
                try:
                    resolve_layers(layers, n)
                except ValueError as error:
                    problems.append(f"config key finetune.variants.{variant}.{part}.layers: {error} (model '{key}' "
                                    f"has {n} hidden states); use layers in -{n}..{n - 1} or 'all'")
    projection = config.get("projection", {})
    if projection.get("enabled", True) and any(c.get("geometry", True) for c in config.get("corpora", {}).values()):
        if n is not None:
            bad = [layer for layer in projection.get("layers") or [] if not -n <= layer < n]
            if bad:
                problems.append(f"config key projection.layers: layer(s) {bad} out of range for model '{key}' "
                                f"({n} hidden states: 0..{n - 1}, or -{n}..-1 from the end)")
        if width is not None and projection.get("components", 3) > width:
            problems.append(f"config key projection.components: {projection['components']} exceeds the hidden size "
                            f"{width} of model '{key}'")
    if width is not None and sts.get("enabled", True) and sts.get("datasets"):
        for name, transform in (sts.get("transforms") or {}).items():
            params = transform.get("params") or {}
            if transform["type"] == "whitening" and params.get("k") is not None and params["k"] > width:
                problems.append(f"config key sts.transforms.{name}.params.k: {params['k']} exceeds the hidden size "
                                f"{width} of model '{key}' (the pooled embeddings have {width} dimensions); lower k "
                                "or set it to null")
            if transform["type"] == "all_but_the_top" and params.get("d_removed") is not None \
                    and params["d_removed"] >= width:
                problems.append(f"config key sts.transforms.{name}.params.d_removed: {params['d_removed']} must be "
                                f"below the hidden size {width} of model '{key}'")
    return problems


def transform_problems(config: dict) -> list[str]:
    """STS transforms whose parameters their constructor refuses (what the sts job would fail on first)."""
    from tokenuni.transforms import TransformError, make_transform

    sts = config.get("sts", {})
    if not (sts.get("enabled", True) and sts.get("datasets")):
        return []
    problems = []
    for name, transform in (sts.get("transforms") or {}).items():
        try:
            make_transform(transform["type"], transform.get("params") or {})
        except TransformError as error:
            problems.append(f"config key sts.transforms.{name}.params: {error}")
    return problems


# -- corpora ---------------------------------------------------------------------------------------
def corpus_problems(config: dict, mirror: str | None) -> tuple[dict[str, dict], list[str]]:
    """Every mirror corpus read as its import job reads it: summaries by corpus key, and the problems."""
    from tokenuni.corpora import CorpusError, load_examples
    from tokenuni.sources import corpus_uses_mirror

    summaries, problems = {}, []
    for key, spec in config["corpora"].items():
        if not corpus_uses_mirror(spec, mirror):
            continue  # the hub (or nothing: the sources check says so)
        try:
            summaries[key] = load_examples({"name": key, **spec}, mirror)[1]
        except CorpusError as error:
            problems.append(f"corpus '{key}': {error}" if not str(error).startswith(f"corpus '{key}'") else str(error))
    sts = config.get("sts", {})
    if sts.get("enabled", True) and sts.get("datasets"):
        for dataset in sts["datasets"]:
            summary = summaries.get(dataset)
            if summary is not None and not (summary["pairs"] and summary["scored"]):
                problems.append(f"config key sts.datasets: corpus '{dataset}' read from {summary['source']} holds "
                                f"{summary['pairs']} pairs{'' if summary['scored'] else ' and no gold scores'}; STS "
                                "evaluates paired, scored corpora: remove it from sts.datasets")
        for name, transform in (sts.get("transforms") or {}).items():
            clusters = (transform.get("params") or {}).get("clusters", 27) if transform["type"] == "cluster_removal" \
                else None
            if clusters is None:
                continue
            fit_on = transform.get("fit_on", "pool")
            fit_sets = sts["datasets"] if fit_on == "pool" else [fit_on]
            for fit_set in fit_sets:
                rows = summaries.get(fit_set, {}).get("rows_after")
                if rows is not None and rows < clusters:
                    problems.append(f"config key sts.transforms.{name}.params.clusters: {clusters} clusters need at "
                                    f"least {clusters} sentences to fit on, and corpus '{fit_set}' has {rows}; lower "
                                    "clusters or fit on a larger corpus (fit_on)")
    return summaries, problems


def glue_problems(config: dict, mirror: str | None) -> list[str]:
    """The fine-tuning tasks' mirror files, read (every row checked) as the fine-tuning job reads them."""
    from tokenuni.glue import SPLITS, GlueDataError, load_task

    finetune = config.get("finetune", {})
    if not (finetune.get("enabled", True) and finetune.get("tasks")):
        return []
    problems = []
    for task in finetune["tasks"]:
        for split in SPLITS:
            try:
                load_task(task, split, mirror)
            except GlueDataError as error:
                problems.append(f"config key finetune.tasks: {task}: {error}")
    return problems


class _Quiet:
    """Readers log one INFO line per file; a check of a whole study keeps only their warnings."""

    NAMES = ("tokenuni.corpora", "tokenuni.glue")

    def __enter__(self):
        self.levels = [logging.getLogger(name).level for name in self.NAMES]
        for name in self.NAMES:
            logging.getLogger(name).setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for name, level in zip(self.NAMES, self.levels):
            logging.getLogger(name).setLevel(level)


# -- the whole study -------------------------------------------------------------------------------
def study_problems(config: dict, mirror: str | None, probe_hub: bool = True) -> list[str]:
    """Everything that would stop the study's jobs, found before the first one (see the module docstring).

    ``config`` is validated (:func:`tokenuni.config.validate_config`) already.
    """
    sources, others = _problems(config, mirror, probe_hub)
    return sources + others


def _problems(config: dict, mirror: str | None, probe_hub: bool) -> tuple[list[str], list[str]]:
    from tokenuni.config import model_specs
    from tokenuni.sources import SourceError, check_sources, resolve_model

    sources = check_sources(config, mirror, probe_hub=probe_hub)
    problems: list[str] = []
    seen: dict[tuple, ModelFacts | None] = {}
    for key, spec in model_specs(config).items():
        try:
            source = resolve_model(spec)
        except SourceError:
            continue  # reported by check_sources
        if not source.local:
            continue  # from the hub: its files are only known once downloaded
        folder = Path(source.location)
        if (folder, spec.get("trust_remote_code")) not in seen:
            facts, found = model_facts(key, spec, folder)
            seen[folder, spec.get("trust_remote_code")] = facts
            problems += found
        facts = seen[folder, spec.get("trust_remote_code")]
        if facts is not None:
            facts = ModelFacts(key, spec, facts.folder, facts.hf_config, facts.depth, facts.hidden_size, facts.shapes)
            problems += reference_problems(facts, config)
    problems += transform_problems(config)
    with _Quiet():
        problems += corpus_problems(config, mirror)[1]
        problems += glue_problems(config, mirror)
    return sources, list(dict.fromkeys(problems))


def require_study(config: dict, mirror: str | None, probe_hub: bool = True) -> None:
    """Raise one :class:`StudyCheckError` listing everything :func:`study_problems` finds."""
    sources, others = _problems(config, mirror, probe_hub)
    problems = sources + others
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        hint = ("\nProvide a local data mirror (TOKENUNI_DATA=/path/to/mirror or data_mirror in the config), local "
                "model folders (models.<key>.path), or network access to the Hugging Face hub." if sources else "")
        raise StudyCheckError(f"this study cannot run as configured: {len(problems)} problem(s) found before the "
                              f"first job:\n{lines}{hint}")
