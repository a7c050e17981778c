"""IsoScore and IsoScore* of a layer's token representations.

IsoScore — Rudman, Gillman, Rayne, Eickhoff, "IsoScore: Measuring the Uniformity of Embedding Space
Utilization", Findings of ACL 2022. For N points in ℝⁿ (n = hidden size d):

1. reorient the points to their principal components (PCA);
2. variance vector λ = the variances along the principal components = the eigenvalues of the covariance Σ;
3. normalise it to the norm of the identity diagonal: λ̂ = √n λ / ‖λ‖;
4. distance to the identity diagonal 1 = (1, …, 1): ‖λ̂ − 1‖;
5. isotropy defect δ = ‖λ̂ − 1‖ / √(2(n − √n))  (0 ≤ δ ≤ 1);
6. dimensions used k = (n − δ²(n − √n))² / n, fraction used φ = k / n;
7. IsoScore ι = (n φ − 1) / (n − 1) = ((n − δ²(n − √n))² − n) / (n(n − 1)).

Algebraically k = (Σλ)² / Σλ² (the participation ratio), so ι = (PR − 1) / (n − 1): 1 when all n
directions carry equal variance, 0 when one does, (k − 1)/(n − 1) when k directions carry equal variance.
IsoScore is invariant to scaling Σ, so the population or sample covariance give the same value; we use
the sample covariance (ddof = 1) as the reference package ``isoscore`` (``torch.cov``) does, which
matters for IsoScore* below. The paper asks for N ≥ n points; with fewer the covariance has rank
≤ N − 1, so ι ≤ (N − 2)/(n − 1) — the row's ``n`` says how many tokens it used. The package computes
√n in float32 (``torch.sqrt`` of an integer tensor), so it agrees with this float64 code to ~1e-8
relative, not to the last bit.

Streaming and exact: the accumulator (:class:`tokenuni.numerics.MomentSums`) keeps N, the mean and the
centred scatter M = Σ (xᵢ − μ)(xᵢ − μ)ᵀ in float64 on the device, merged batch by batch without
cancellation, so Σ = M / (N − 1) for any number of tokens (row ``isoscore``, no sampling).

IsoScore* — Rudman & Eickhoff, "Stable Anisotropic Regularization", ICLR 2024: IsoScore computed from
a shrinkage covariance Σ_ζ = (1 − ζ) Σ_S + ζ Σ_D, where Σ_S is the covariance of a mini-batch S of
token states and Σ_D the covariance of a larger set D of token states (regularised discriminant
analysis; their code: ``(1 - zeta) * C + zeta * C0``, ζ = 0.2 in their experiments). Here S is a
seeded mini-batch of ``sample_size`` tokens of the layer drawn with :class:`~tokenuni.numerics.ReservoirSample` (the
same tokens in every layer), and D is *every* token of the layer (Σ_D exact from the streamed sums).
Deviation from their code: their C0 pools up to 250k token states of all layers and is rebuilt each
training epoch; a per-layer measurement has only its own layer, so Σ_D is that layer's covariance.
ζ = 1 gives the layer's IsoScore, ζ = 0 the IsoScore of the mini-batch alone.

Uncertainty of IsoScore* (``spread``): the standard deviation (ddof = 1) of IsoScore* over
``bootstrap`` resamples with replacement of the mini-batch (seeded by ``seed``; 0 disables). The
replicates use the participation-ratio identity (tr Σ_ζ)² / ‖Σ_ζ‖_F² (equal to the eigenvalue route to
rounding, without a d × d eigendecomposition per replicate).
"""
from __future__ import annotations

import math

import numpy as np

from tokenuni.metrics.base import MetricError, MetricValue, SampledMetric, TokenBatch
from tokenuni.metrics.rows import HIGH, Row
from tokenuni.numerics import MomentSums, sample_covariance


def isoscore_torch(variances):
    """IsoScore from principal-component variances λ (..., n) as a differentiable torch computation.

    The one implementation of the paper's steps 3-7 (the float and streaming functions below call it):
    negative λ (rounding in an eigendecomposition) are clamped at 0; n < 2 or Σλ = 0 give nan. The
    defect enters only squared (δ² = ‖λ̂ − 1‖² / (2(n − √n))), so the gradient stays finite at an
    isotropic λ, where ‖λ̂ − 1‖ = 0. Batched over leading dimensions; keeps the dtype of ``variances``
    (pass float64 for reference values). Used by I-STAR (:mod:`tokenuni.finetune.regularisers`).
    """
    import torch

    lam = torch.as_tensor(variances).clamp_min(0.0)
    n = lam.shape[-1]
    if n < 2:
        return torch.full(lam.shape[:-1], math.nan, dtype=lam.dtype, device=lam.device)
    root_n = math.sqrt(n)
    normalised = root_n * lam / torch.linalg.vector_norm(lam, dim=-1, keepdim=True)  # step 3
    distance_sq = ((normalised - 1.0) ** 2).sum(dim=-1)  # step 4, squared
    defect_sq = distance_sq / (2.0 * (n - root_n))  # step 5: δ², δ in [0, 1]
    dimensions_used = (n - defect_sq * (n - root_n)) ** 2 / n  # step 6
    fraction_used = dimensions_used / n
    return (n * fraction_used - 1.0) / (n - 1.0)  # step 7


def isoscore_from_covariance_torch(covariance):
    """Differentiable IsoScore of a covariance matrix (..., n, n): steps 1-2 are its eigenvalues.

    ``torch.linalg.eigvalsh`` of the symmetrised matrix; its backward, V diag(ḡ) Vᵀ, has no
    eigenvalue-gap denominators, so the gradient is finite even with repeated eigenvalues. With a
    shrinkage covariance Σ_ζ = (1 − ζ) C_batch + ζ C0 this is IsoScore* (Rudman & Eickhoff, ICLR 2024).
    """
    import torch

    covariance = (covariance + covariance.transpose(-1, -2)) / 2
    return isoscore_torch(torch.linalg.eigvalsh(covariance))


def isoscore_from_variances(variances) -> float:
    """IsoScore from the principal-component variances λ (the paper's steps 3-7); nan if Σλ = 0 or n < 2."""
    import torch

    lam = torch.as_tensor(np.asarray(variances, dtype=np.float64))
    if len(lam) < 2 or float(torch.linalg.vector_norm(lam.clamp_min(0.0))) == 0.0:
        return math.nan
    return float(isoscore_torch(lam))


def isoscore_from_covariance(covariance) -> float:
    """IsoScore of a covariance matrix (torch tensor or array): steps 1-2 are its eigenvalues."""
    import torch

    covariance = torch.as_tensor(covariance, dtype=torch.float64)
    covariance = (covariance + covariance.T) / 2
    return isoscore_from_variances(torch.linalg.eigvalsh(covariance).cpu().numpy())


def isoscore_from_moments(covariance) -> float:
    """IsoScore via the participation ratio, (tr(Σ)² / ‖Σ‖_F² − 1) / (n − 1): no eigendecomposition."""
    trace = float(covariance.diagonal().sum())
    frobenius_sq = float((covariance * covariance).sum())
    n = covariance.shape[0]
    if n < 2 or frobenius_sq <= 0:
        return math.nan
    return (trace * trace / frobenius_sq - 1.0) / (n - 1.0)


class IsoScoreMetric(SampledMetric):
    name = "isoscore"
    #: its config entry ``metrics.isoscore`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          IsoScore of the layer's tokens, exact from the streamed covariance (Rudman, Gillman, Rayne, Eickhoff,
          "IsoScore: Measuring the Uniformity of Embedding Space Utilization", Findings of ACL 2022), and IsoScore* of a
          seeded mini-batch whose covariance is shrunk toward the layer's, (1 - zeta) cov(S) + zeta cov(D) (Rudman &
          Eickhoff, "Stable Anisotropic Regularization", ICLR 2024). Rows isoscore and isoscore_star (sample_size, seed,
          spread = bootstrap std recorded).
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          zeta:
            type: number
            minimum: 0
            maximum: 1
            default: 0.2
            description: Shrinkage weight of the whole layer's covariance in IsoScore* (0 = mini-batch alone, 1 = IsoScore).
          sample_size:
            type: integer
            minimum: 2
            default: 1024
            description: Tokens in the IsoScore* mini-batch (seeded, batching-independent reservoir sample; same tokens in every layer).
          seed:
            type: integer
            default: 0
            description: Seed of the mini-batch draw and of the bootstrap.
          bootstrap:
            type: integer
            minimum: 0
            default: 20
            description: Bootstrap resamples of the mini-batch for the spread of IsoScore* (std, ddof 1); 0 or 1 = no spread.
    """
    rows = (
        Row("isoscore", "IsoScore", title="IsoScore (1 = isotropic)", isotropic=HIGH),
        Row("isoscore_star", "IsoScore* (shrinkage covariance)", isotropic=HIGH),
    )
    derived_options = ("zeta", "bootstrap")
    shared = ("moments", "sample")

    def __init__(self, device="cpu", zeta: float = 0.2, sample_size: int = 1024, seed: int = 0, bootstrap: int = 20,
                 **options):
        super().__init__(device, sample_size=sample_size, seed=seed, **options)
        if not 0.0 <= float(zeta) <= 1.0:
            raise MetricError(f"zeta must be in [0, 1], got {zeta}")
        self.zeta = float(zeta)
        self.bootstrap = int(bootstrap)
        self.sums = MomentSums(self.device)

    def _update(self, batch: TokenBatch) -> None:
        self.sums.update(batch.x)
        self.offer(batch)

    def covariance(self):
        """The layer's sample covariance Σ_D (ddof = 1), exact from the streamed sums."""
        return self.sums.covariance(ddof=1)

    def star(self, sample_x, data_covariance, score=isoscore_from_covariance) -> float:
        """IsoScore* of a mini-batch ``sample_x`` shrunk toward ``data_covariance``."""
        shrunk = (1.0 - self.zeta) * sample_covariance(sample_x) + self.zeta * data_covariance
        return score(shrunk)

    def compute(self) -> list[MetricValue]:
        import torch

        if self.sums.count < 2:
            return []
        data_covariance = self.covariance()
        rows = []
        score = isoscore_from_covariance(data_covariance)
        if not math.isnan(score):
            rows.append(MetricValue("isoscore", score, self.sums.count))
        sample_x = self.sample.rows().get("x")
        if sample_x is None or len(sample_x) < 2:
            return rows
        star = self.star(sample_x, data_covariance)
        if math.isnan(star):
            return rows
        spread = None
        if self.bootstrap > 1:
            generator = torch.Generator().manual_seed(self.seed)
            m = len(sample_x)
            replicates = []
            for _ in range(self.bootstrap):
                index = torch.randint(0, m, (m,), generator=generator).to(sample_x.device)
                replicates.append(self.star(sample_x[index], data_covariance, isoscore_from_moments))
            replicates = np.array([r for r in replicates if not math.isnan(r)])
            spread = float(np.std(replicates, ddof=1)) if len(replicates) > 1 else None
        rows.append(MetricValue("isoscore_star", star, self.sums.count, sample_size=len(sample_x), seed=self.seed,
                                spread=spread))
        return rows
