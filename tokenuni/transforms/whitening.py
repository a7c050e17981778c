"""Whitening: x ↦ (x − μ) U Λ^{−1/2}, optionally keeping the first k dimensions.

Su, Cao, Liu, Ou, "Whitening Sentence Representations for Better Semantics and Faster Retrieval",
arXiv:2103.15316, 2021 (BERT-whitening); Huang, Tang, Zhong, Lu, Shou, Gong, Jiang, Duan, "WhiteningBERT: An Easy
Unsupervised Sentence Embedding Approach", Findings of EMNLP 2021.

With μ the mean and Σ = UΛUᵀ the covariance of the fit vectors (eigenvalues λ₁ ≥ … ≥ λ_d, columns of
U the eigenvectors), the map is W = U Λ^{−1/2}, a d × d matrix whose output has zero mean and identity
covariance on the fit set; with option ``k`` only the first k columns of W are kept (the k
principal directions: dimension reduction, as Su et al.'s ``n_components``); ``k: null`` keeps all d.

* Σ is the sample covariance (divided by N − 1, ``ddof: 1``, as ``np.cov`` in Su et al.'s code) or the
  population covariance (``ddof: 0``); only the scale of the output depends on it. μ and Σ are exact
  from the streamed N, mean and centred scatter (:class:`tokenuni.numerics.MomentSums`), so the
  centring does not lose precision when ‖μ‖ dominates the spread.
* Tiny eigenvalues: an eigenvalue λ_i ≤ ``eps`` · λ₁ (default 1e-10) is treated as 0 — the fit set has
  (numerically) no extent there, e.g. when it holds fewer vectors than dimensions — and its column of
  W is set to 0 instead of λ_i^{−1/2} (which would amplify rounding noise without bound); the output
  keeps its dimension. Su et al.'s code has no guard (1/√λ of whatever ``np.linalg.svd`` returns).
  ``summary()['n_zeroed']`` counts these columns among the kept ones; with N fit vectors at most
  N − 1 directions can be whitened.
* The eigenvectors carry a canonical sign (largest-magnitude entry positive); Su et al. use the
  signs ``np.linalg.svd`` happens to return. Signs do not change cosines or the covariance.

What the transform is fit on is the caller's choice: Su et al. fit on the evaluation pool (all the
sentences of the STS test sets; SoftDecay's WhiteBERT row too), and a separate corpus works the same
way; record it in ``fitted_on``.
"""
from __future__ import annotations

from tokenuni.numerics import MomentSums, descending_eigh
from tokenuni.transforms.base import Transform, TransformError, float_option, integer_option


class Whitening(Transform):
    name = "whitening"
    _state_names = ("mean", "kernel", "eigenvalues")

    def __init__(self, device="cpu", k: int | None = None, ddof: int = 1, eps: float = 1e-10):
        k = integer_option(self.name, "k", k, minimum=1, allow_none=True)
        if isinstance(ddof, bool) or ddof not in (0, 1):
            raise TransformError(f"transform whitening: option ddof must be 0 (population) or 1 (sample covariance), got {ddof!r}")
        super().__init__(device, k=k, ddof=int(ddof), eps=float_option(self.name, "eps", eps, minimum=0.0))

    def _reset_statistics(self) -> None:
        self._moments = MomentSums(self.device)
        self.mean = self.kernel = self.eigenvalues = None

    def _accumulate(self, x) -> None:
        self._moments.update(x)

    def _finalize(self) -> None:
        import torch

        k, ddof, eps = self._params["k"], self._params["ddof"], self._params["eps"]
        if k is not None and k > self.dim:
            raise TransformError(f"transform whitening: option k = {k} exceeds the dimension {self.dim} of the fit vectors")
        n = self._moments.count
        if n <= ddof:
            raise TransformError(f"transform whitening: needs at least {ddof + 1} fit vectors for a covariance with ddof={ddof}, got {n}")
        covariance = self._moments.scatter() / (n - ddof)
        values, vectors = descending_eigh(covariance)
        if not float(values[0]) > 0:
            raise TransformError(f"transform whitening: the {n} fit vectors have zero covariance (all equal); nothing to whiten")
        kept = self.dim if k is None else k
        usable = values[:kept] > eps * values[0]
        scale = torch.where(usable, values[:kept].clamp_min(torch.finfo(values.dtype).tiny).rsqrt(), torch.zeros_like(values[:kept]))
        self.mean = self._moments.mean()
        self.kernel = vectors[:, :kept] * scale[None, :]
        self.eigenvalues = values

    def _apply(self, x):
        return (x - self.mean) @ self.kernel

    def summary(self) -> dict:
        values = self.eigenvalues
        kept = self.kernel.shape[1]
        zeroed = int((self.kernel.abs().sum(dim=0) == 0).sum())
        last = kept - zeroed
        total = float(values.clamp_min(0).sum())
        return {"n_fit": self.n_fit, "k": kept, "n_zeroed": zeroed,
                "retained_variance_fraction": float(values[:kept].clamp_min(0).sum()) / total if total > 0 else float("nan"),
                "condition_number": float(values[0] / values[last - 1]) if last > 0 else float("nan")}
