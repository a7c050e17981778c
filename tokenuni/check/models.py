"""The local models of a study read as a job would load them, without loading a tensor: config.json's
depth and width, tokenizer and weight files, safetensors headers and their shapes against the
architecture (item 2 of :mod:`tokenuni.check`)."""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from tokenuni.families import model_family_problems


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
