"""SoftDecay: a concave, increasing map of the singular values of the fit set, as a linear operator.

Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via Singular Value Transformation",
UAI 2022 (SCIENCE.md §1). For the fit set X = U diag(s) Vᵀ (N × d, rows = vectors, **not centred**, as
the paper's STS code) and α < 0 (option ``alpha``, default −0.6 as that code),

    f(s) = −ln(1 − α(s + α)) / α,     s'_i = f(s_i) · s_max / f(s_max)

(rescaled so that the largest singular value is unchanged), and the paper rebuilds X' = U diag(s') Vᵀ.
Here the map is fitted once and applied to any vectors as the linear operator

    W = V diag(s' / s) Vᵀ,   x ↦ W x  (rows: X ↦ X W),

which gives exactly X W = U diag(s') Vᵀ on the fit set and extends the same spectral reshaping to
other vectors (the paper's code recomputes the SVD of each matrix it transforms, so it cannot map a
vector it was not fit on).

The streamed statistic is the Gram matrix G = XᵀX (from :class:`tokenuni.numerics.MomentSums`): its
eigenvalues are s², its eigenvectors V. Directions where the fit set has (numerically) no extent,
s² ≤ d · ε_machine · s²_max (e.g. all but N directions when N < d), have s = 0 and f(s)/s undefined:
they map to **0** (the limit of the clamped f(s)/s as s → 0, and the fit set has no component there
anyway).

Domain and sign. f is concave and increasing where it is defined, 1 − α(s + α) > 0, i.e.
s > (α² − 1)/(−α): for −1 < α < 0 that holds for every s ≥ 0; for α ≤ −1 small singular values fall
outside it. f(s) < 0 for s < −α. With ``clamp_negative: true`` (default) f is clamped at 0 there and
where it is undefined (those directions are removed); with ``false`` negative f(s) are kept (a sign
flip: singular value |f(s)|, as the paper's code does) and an undefined f is an error. The paper's
code adds ε = 1e-7 inside the logarithm; this code does not (it checks the domain instead). The
rescaling needs f(s_max) > 0, i.e. s_max > −α; otherwise the fit is refused with an error (the
transform is not scale invariant: SoftDecay acts on raw singular values, which grow with √N).

What the transform is fit on is the caller's choice: the paper fits on the evaluation pool (the
matrix of all pooled sentence embeddings to be scored); a separate corpus works the same way, but
the singular values — and so the shape of the map — scale with the number of fit vectors. Record
the choice in ``fitted_on``.
"""
from __future__ import annotations

from tokenuni.numerics import MomentSums, descending_eigh, skewness
from tokenuni.transforms.base import Transform, TransformError, float_option


def softdecay(s, alpha: float):
    """f(s) = −ln(1 − α(s + α)) / α elementwise (NaN where 1 − α(s + α) ≤ 0)."""
    import torch

    argument = 1.0 - alpha * (s + alpha)
    safe = torch.where(argument > 0, argument, torch.ones_like(argument))
    return torch.where(argument > 0, -torch.log(safe) / alpha, torch.full_like(argument, float("nan")))


class SoftDecay(Transform):
    name = "softdecay"
    _state_names = ("operator", "singular_values", "decayed_singular_values")

    def __init__(self, device="cpu", alpha: float = -0.6, clamp_negative: bool = True):
        alpha = float_option(self.name, "alpha", alpha, below=0.0)
        if not isinstance(clamp_negative, bool):
            raise TransformError(f"transform softdecay: option clamp_negative must be true or false, got {clamp_negative!r}")
        super().__init__(device, alpha=alpha, clamp_negative=clamp_negative)

    def _reset_statistics(self) -> None:
        self._moments = MomentSums(self.device)
        self.operator = self.singular_values = self.decayed_singular_values = None

    def _accumulate(self, x) -> None:
        self._moments.update(x)

    def _finalize(self) -> None:
        import torch

        alpha, clamp = self._params["alpha"], self._params["clamp_negative"]
        values, vectors = descending_eigh(self._moments.uncentred_gram())
        values = values.clamp_min(0)
        if not float(values[0]) > 0:
            raise TransformError(f"transform softdecay: the {self.n_fit} fit vectors are all zero")
        null = values <= self.dim * torch.finfo(values.dtype).eps * values[0]
        s = torch.where(null, torch.zeros_like(values), values.sqrt())
        s_max = float(s[0])
        f_max = float(softdecay(s[:1], alpha)[0])
        if not f_max > 0:
            raise TransformError(f"transform softdecay: the largest singular value of the fit set, {s_max:.6g}, is not above "
                                 f"-alpha = {-alpha:.6g}, so f(s_max) = {f_max:.6g} <= 0 cannot be rescaled to s_max; "
                                 "choose alpha closer to 0 or fit on more (or larger) vectors")
        f = softdecay(s, alpha)
        undefined = ~null & torch.isnan(f)
        if clamp:
            f = torch.where(torch.isnan(f) | (f < 0), torch.zeros_like(f), f)
        elif bool(undefined.any()):
            smallest = float(s[undefined].max())
            raise TransformError(f"transform softdecay: f(s) = -ln(1 - alpha (s + alpha)) / alpha is undefined for singular values "
                                 f"up to {smallest:.6g} with alpha = {alpha}; set clamp_negative: true or choose alpha > -1")
        decayed = torch.where(null, torch.zeros_like(f), f * (s_max / f_max))
        ratio = torch.where(null, torch.zeros_like(s), decayed / torch.where(null, torch.ones_like(s), s))
        operator = (vectors * ratio[None, :]) @ vectors.T
        self.operator = (operator + operator.T) / 2
        self.singular_values, self.decayed_singular_values = s, decayed

    def _apply(self, x):
        return x @ self.operator

    def summary(self) -> dict:
        m = min(self.n_fit, self.dim)
        s = self.singular_values[:m].cpu().numpy()
        decayed = self.decayed_singular_values[:m].cpu().numpy()
        rank = int((s > 0).sum())
        s_max = float(s[0])
        return {"n_fit": self.n_fit, "alpha": self._params["alpha"], "s_max": s_max, "rank": rank,
                "n_clamped": int(((decayed == 0) & (s > 0)).sum()),
                "skewness_before": skewness(s / s_max),
                "skewness_after": skewness(decayed / abs(decayed).max())}
