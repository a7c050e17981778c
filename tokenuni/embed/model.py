"""Loading a model (the one place that does), checking its hidden states, and its layer-norm scales."""
from __future__ import annotations

import logging

from tokenuni.errors import TokenuniError
from tokenuni.families import family_of, prepare_tokenizer
from tokenuni.sources import ModelSource, SourceError, how_to_provide, require_safe_weights, resolve_model

log = logging.getLogger("tokenuni.embed")
TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


class HiddenStateError(TokenuniError, RuntimeError):
    """A model produced NaN or Inf hidden states; the message names the model and the layer."""


def check_finite(hidden, attention_mask, model_name: str) -> None:
    """Raise :class:`HiddenStateError` at the first layer whose real tokens hold NaN or ±Inf.

    A float16 forward pass overflows beyond ±65504 (the largest float16); then the message says so and
    suggests bfloat16 (float32's range) or float32.
    """
    import torch

    real = attention_mask.bool()
    for layer, states in enumerate(hidden):
        bad = (~torch.isfinite(states)).any(dim=-1) & real
        if bool(bad.any()):
            what = "Inf" if bool(torch.isinf(states[bad]).any()) else "NaN"
            message = f"model {model_name} produced {what} hidden states at layer {layer} ({int(bad.sum())} token(s))"
            if states.dtype == torch.float16:
                message += ("; the float16 forward pass overflowed (|x| > 65504): set dtype: bfloat16 or "
                            "dtype: float32 for this model")
            raise HiddenStateError(message)


def load_model(spec: dict, device, source: ModelSource | None = None):
    """Tokenizer and model for a model config entry, on ``device``, in eval mode and ``spec['dtype']``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = source or resolve_model(spec)
    revision = spec.get("revision") if source.kind == "hub" else None
    trust = bool(spec.get("trust_remote_code", False))
    require_safe_weights(spec, source)
    log.info("loading %s from %s", spec["id"], source.describe())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, revision=revision, trust_remote_code=trust)
    except OSError as error:
        raise SourceError(f"model {spec['id']}: cannot load it from {source.describe()} ({error}); "
                          + how_to_provide(spec["id"])) from error
    try:
        config = AutoConfig.from_pretrained(source.location, revision=revision, trust_remote_code=trust)
    except OSError as error:
        raise SourceError(f"model {spec['id']}: cannot read its config from {source.describe()} ({error}); "
                          + how_to_provide(spec["id"])) from error
    family = family_of(config, f"model {spec['id']}")  # refuse T5 & co. before loading any weight
    prepare_tokenizer(tokenizer, family, f"model {spec['id']}")
    try:
        model = AutoModel.from_pretrained(
            source.location,
            config=config,
            revision=revision,
            trust_remote_code=trust,
            dtype=getattr(torch, TORCH_DTYPES[spec.get("dtype", "float32")]),
            use_safetensors=None if spec.get("allow_pickle_weights") else True,
        )
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise
        raise SourceError(f"model {spec['id']}: the weights in {source.describe()} do not have the shapes its "
                          "config.json implies (transformers' load report above lists them); the weights belong to "
                          "another configuration: put the config.json saved with these weights beside them "
                          "(`tokenuni check` names every tensor that differs)") from error
    except OSError as error:
        safetensors = "" if spec.get("allow_pickle_weights") else (
            " (only *.safetensors weights are loaded unless `allow_pickle_weights: true`)")
        raise SourceError(f"model {spec['id']}: cannot load its weights from {source.describe()}{safetensors} "
                          f"({error}); " + how_to_provide(spec["id"])) from error
    model.to(device).eval()
    return tokenizer, model


def _block_list(model, n_blocks: int):
    """The ModuleList of the model's transformer blocks (the first one with ``n_blocks`` entries), or None."""
    import torch

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_blocks:
            return name
    return None


def layernorm_scales(model) -> list[dict]:
    """Every LayerNorm/RMSNorm of ``model`` with the dump layer it shapes and the norms of γ and β.

    Over-smoothing (Shi et al., "Revisiting Over-smoothing in BERT from the Perspective of Graph",
    ICLR 2022) depends on the layer-norm scale: a norm inside transformer block i is attributed to
    layer i + 1 (the block's output, hidden_states[i + 1]); norms before the blocks (embeddings) to
    layer 0 and after them (a final norm, e.g. GPT-2's ``ln_f``) to the last layer. Where blocks share
    weights (ALBERT) the shared norms are attributed to every block layer (``layer`` = -1 → all).
    """
    n_blocks = int(model.config.num_hidden_layers)
    blocks = _block_list(model, n_blocks)
    seen_blocks = False
    rows = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or not ("norm" in type(module).__name__.lower() or name.lower().endswith(("layernorm", "ln_f", "ln_1", "ln_2"))):
            continue
        if weight.ndim != 1:
            continue
        if blocks is not None and name.startswith(blocks + "."):
            block = int(name[len(blocks) + 1:].split(".")[0])
            layer, part = block + 1, ".".join(name[len(blocks) + 1:].split(".")[1:])
            seen_blocks = True
        elif blocks is None:
            layer, part = (0 if "embed" in name.lower() else -1), name
        else:
            layer, part = (n_blocks if seen_blocks else 0), name
        bias = getattr(module, "bias", None)
        rows.append({
            "layer": layer, "module": part, "size": int(weight.numel()),
            "gamma_norm": float(weight.detach().float().norm()),
            "beta_norm": float(bias.detach().float().norm()) if bias is not None else 0.0,
        })
    return rows
