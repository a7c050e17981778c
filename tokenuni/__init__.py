"""tokenuni: measure and repair the geometry of transformer representations, layer by layer.

In a notebook (imports are lazy: ``import tokenuni`` loads nothing heavy)::

    import tokenuni
    table = tokenuni.measure("sentence-transformers/all-MiniLM-L6-v2", ["A first text.", "A second one."])
    tokenuni.headline_per_layer(table)            # layers x avg_cosine, isoscore, sv_skewness, ...
    tokenuni.sts(model, pairs, scores, pooling="mean", transform=["none", "whitening"])
    x = tokenuni.sentence_vectors(model, texts)  # (n, d) pooled embeddings
    tokenuni.make_transform("whitening").fit(x).transform(x)

See :mod:`tokenuni.api`; the workflow's stages are the modules (``tokenuni.embed``, ``tokenuni.metrics``, ...).
"""

__version__ = "0.1.0"

#: public name -> (module, attribute), imported on first use (PEP 562)
_LAZY = {
    "measure": ("tokenuni.api", "measure"),
    "sentence_vectors": ("tokenuni.api", "sentence_vectors"),
    "headline_per_layer": ("tokenuni.api", "headline_per_layer"),
    "DEFAULT_METRICS": ("tokenuni.api", "DEFAULT_METRICS"),
    "make_transform": ("tokenuni.transforms", "make_transform"),
    "load_transform": ("tokenuni.transforms", "load_transform"),
    "TRANSFORMS": ("tokenuni.transforms", "TRANSFORMS"),
    "METRICS": ("tokenuni.metrics", "METRICS"),
}
__all__ = sorted([*_LAZY, "sts"])


def __getattr__(name: str):
    if name == "sts":  # the module tokenuni.sts, which called is tokenuni.api.sts (see its end)
        import importlib

        return importlib.import_module("tokenuni.sts")
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tokenuni' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
