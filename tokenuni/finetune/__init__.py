"""Fine-tuning with token-uniformity repairs: SoftDecay layer, I-STAR and cosine regularisers, layer fusion.

:class:`~tokenuni.finetune.model.GlueModel` is the model of every variant
(:mod:`tokenuni.finetune.model` documents the ``variant`` dict). Exports are resolved lazily so that
importing the package does not import torch.
"""
from __future__ import annotations

_EXPORTS = {
    "GlueModel": "tokenuni.finetune.model",
    "GlueOutput": "tokenuni.finetune.model",
    "SoftDecay": "tokenuni.finetune.softdecay_layer",
    "IStar": "tokenuni.finetune.regularisers",
    "CosineRegulariser": "tokenuni.finetune.regularisers",
    "LayerFusion": "tokenuni.finetune.fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
