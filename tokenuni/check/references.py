"""The config's references against the models' facts: layers, widths and STS transform parameters
(item 3 of :mod:`tokenuni.check`)."""
from __future__ import annotations

from tokenuni.check.models import ModelFacts


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
