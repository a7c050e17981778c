"""Post-hoc transforms of representation vectors (one module per transform, protocol in :mod:`.base`).

:data:`TRANSFORMS` maps a config name to its class; :func:`make_transform` builds one from the
config's ``params``; :func:`load_transform` reads a saved one back as the right class.

==================  ===========================================================================
config name         map (paper)
==================  ===========================================================================
``identity``        x (the baseline row)
``center_shift``    x − μ (Cai et al., ICLR 2021)
``whitening``       (x − μ) U Λ^{−1/2}, first k columns (Su et al. 2021; Huang et al. 2021)
``all_but_the_top`` (x − μ)(I − U_D U_Dᵀ) (Mu & Viswanath, ICLR 2018)
``softdecay``       V diag(f(s)/s) Vᵀ of the fit set's SVD (Yan et al., UAI 2022)
``cluster_removal`` per k-means cluster: x − μ_c minus its top PCs (Rajaee & Pilehvar, ACL 2021)
==================  ===========================================================================
"""
from __future__ import annotations

from tokenuni.transforms.all_but_the_top import AllButTheTop
from tokenuni.transforms.base import Transform, TransformError
from tokenuni.transforms.center_shift import CenterShift
from tokenuni.transforms.cluster_removal import ClusterRemoval
from tokenuni.transforms.identity import Identity
from tokenuni.transforms.softdecay import SoftDecay
from tokenuni.transforms.whitening import Whitening

TRANSFORMS: dict[str, type[Transform]] = {
    cls.name: cls for cls in (Identity, CenterShift, Whitening, AllButTheTop, SoftDecay, ClusterRemoval)
}


def make_transform(name: str | type[Transform], params: dict | None = None, device="cpu") -> Transform:
    """A transform ``name`` (a config name or a :class:`Transform` subclass) built with ``params``."""
    cls = name if isinstance(name, type) else TRANSFORMS.get(name)
    if cls is None:
        raise TransformError(f"unknown transform {name!r}; known transforms: {', '.join(TRANSFORMS)}")
    try:
        return cls(device=device, **dict(params or {}))
    except TypeError as error:
        raise TransformError(f"transform {cls.name}: bad params {sorted(params or {})}: {error}") from None


def load_transform(path, device="cpu") -> Transform:
    """Read a transform written by :meth:`Transform.save`, as the class named in the file."""
    return Transform.load(path, device=device)


__all__ = ["TRANSFORMS", "Transform", "TransformError", "make_transform", "load_transform", "Identity", "CenterShift",
           "Whitening", "AllButTheTop", "SoftDecay", "ClusterRemoval"]
