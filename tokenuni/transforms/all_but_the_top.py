"""All-but-the-top: subtract the mean, then remove the projections on the top D principal components.

Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word Representations",
ICLR 2018 (Algorithm 1): with μ the mean of the fit vectors and u₁ … u_D the top D eigenvectors of
their covariance (principal components),

    x ↦ x̃ − Σ_{i ≤ D} (u_iᵀ x̃) u_i,   x̃ = x − μ,

i.e. (x − μ)(I − U_D U_Dᵀ). The output is zero-mean on the fit set and orthogonal to u₁ … u_D for any
input. Option ``d_removed`` is D; ``null`` (default) gives the paper's rule of thumb D ≈ d/100, here
max(1, round(d / 100)) (Python's round: halves to even), e.g. 4 for d = 384, 8 for d = 768.

μ and the covariance are exact from the streamed N, mean and centred scatter (:class:`tokenuni.numerics.MomentSums`).
The components are eigenvectors of the centred scatter (``eigh``; the 1/N or 1/(N − 1) factor does
not change them). When λ_D = λ_{D+1} the removed subspace is not unique and rounding decides.

What the transform is fit on is the caller's choice: Mu & Viswanath fit on the word vectors
themselves; for sentence embeddings the evaluation pool (as in Rajaee & Pilehvar, ACL 2021) or a
separate corpus both work; record it in ``fitted_on``.
"""
from __future__ import annotations

from tokenuni.numerics import MomentSums, descending_eigh
from tokenuni.transforms.base import Transform, TransformError, integer_option


def default_removed(d: int) -> int:
    """Mu & Viswanath's D ≈ d/100: max(1, round(d / 100))."""
    return max(1, round(d / 100))


class AllButTheTop(Transform):
    name = "all_but_the_top"
    _state_names = ("mean", "components", "eigenvalues")

    def __init__(self, device="cpu", d_removed: int | None = None):
        super().__init__(device, d_removed=integer_option(self.name, "d_removed", d_removed, minimum=0, allow_none=True))

    def _reset_statistics(self) -> None:
        self._moments = MomentSums(self.device)
        self.mean = self.components = self.eigenvalues = None

    def _accumulate(self, x) -> None:
        self._moments.update(x)

    def _finalize(self) -> None:
        removed = self._params["d_removed"]
        removed = default_removed(self.dim) if removed is None else removed
        if removed >= self.dim:
            raise TransformError(f"transform all_but_the_top: option d_removed = {removed} must be below the dimension {self.dim}")
        values, vectors = descending_eigh(self._moments.scatter() / self._moments.count)
        self.mean = self._moments.mean()
        self.components = vectors[:, :removed].T.contiguous()  # (D, d), rows u_1 ... u_D
        self.eigenvalues = values

    def _apply(self, x):
        centred = x - self.mean
        return centred - (centred @ self.components.T) @ self.components

    def summary(self) -> dict:
        removed = int(self.components.shape[0])
        values = self.eigenvalues.clamp_min(0)
        total = float(values.sum())
        return {"n_fit": self.n_fit, "d_removed": removed,
                "removed_variance_fraction": float(values[:removed].sum()) / total if total > 0 else float("nan")}
