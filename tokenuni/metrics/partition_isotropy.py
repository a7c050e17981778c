"""Partition-function isotropy I(V) of a layer's token representations.

Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word Representations",
ICLR 2018; used for contextual representations by Cai, Huang, Bian, Church, "Isotropy in the
Contextual Embedding Space: Clusters and Manifolds", ICLR 2021, and Rajaee & Pilehvar, "A
Cluster-based Approach for Improving Isotropy in Contextual Embedding Space", ACL 2021:

    I(V) = min_{u ∈ U} Z(u) / max_{u ∈ U} Z(u),   Z(u) = Σ_i exp(uᵀ v_i),

with U the eigenvectors of VᵀV (a tractable stand-in for the unit sphere, over which I would be
exact). 1 = isotropic (Z constant), → 0 when some direction dominates. Variants: ``uncentred`` (the
vectors as they are, as Rajaee & Pilehvar) and ``centred`` (v − μ, eigenvectors of the centred scatter
(V − 1μᵀ)ᵀ(V − 1μᵀ)).

Eigenvector signs: ``eigh`` returns each eigenvector up to sign, and Z(u) ≠ Z(−u), so the published
code's value depends on the LAPACK build. With ``signs="both"`` (default) U holds u and −u for every
eigenvector (2d directions): sign-free, the same on CPU and GPU, and closer to the min/max over the
sphere that U stands in for. ``signs="canonical"`` uses each eigenvector once, signed so that its
largest-magnitude entry is positive (reproducible, but an arbitrary choice like the original's).

Streaming, two passes (``passes = 2``): pass 0 accumulates N, the mean and the centred scatter
(:class:`tokenuni.numerics.MomentSums`, float64; VᵀV = scatter + N μμᵀ) and fixes U
(:func:`tokenuni.numerics.descending_eigh`); pass 1 accumulates log Z(u) for every u with a running
log-sum-exp (per direction a running maximum m and Σ exp(uᵀv − m)), so it never overflows; one product
x·U serves both signs, since (−u)ᵀv = −uᵀv exactly — the raw
exp of BERT-scale projections (‖v‖ in the tens to thousands) overflows float64. I = exp(min log Z − max log Z) (it may underflow to 0 for extremely
anisotropic layers, which is its value in float64).
"""
from __future__ import annotations

import math

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch
from tokenuni.metrics.rows import HIGH, Row
from tokenuni.numerics import MomentSums, descending_eigh

VARIANTS = ("uncentred", "centred")
SIGNS = ("both", "canonical")


class PartitionIsotropy(Metric):
    name = "partition_isotropy"
    #: its config entry ``metrics.partition_isotropy`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          Partition-function isotropy I(V) = min_u Z(u) / max_u Z(u), Z(u) = sum_i exp(u^T v_i), u over the eigenvectors
          of V^T V (Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word Representations",
          ICLR 2018; Cai et al., ICLR 2021; Rajaee & Pilehvar, ACL 2021). Overflow-free (log-sum-exp); two passes over
          the dump. Row partition_isotropy per variant.
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          variants:
            $ref: "#/$defs/centring_variants"
            default: [uncentred, centred]
            description: Uncentred (as Rajaee & Pilehvar) and centred (v minus the layer's mean, eigenvectors of the centred scatter).
          signs:
            enum: [both, canonical]
            default: both
            description: >-
              Eigenvectors are defined up to sign and Z(u) != Z(-u): "both" uses u and -u (sign-free, same on CPU and GPU);
              "canonical" uses each eigenvector once, its largest-magnitude entry positive.
    """
    rows = (
        Row("partition_isotropy", "partition-function isotropy I(V)", title="I(V) partition isotropy (1 = isotropic)",
            headline_variant="uncentred", isotropic=HIGH),
    )
    passes = 2
    derived_options = ("variants", "signs")
    shared = ("moments",)

    def __init__(self, device="cpu", variants=VARIANTS, signs: str = "both", **options):
        super().__init__(device, **options)
        self.variants = tuple(variants)
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise MetricError(f"unknown variants {sorted(unknown)}; known: {VARIANTS}")
        if signs not in SIGNS:
            raise MetricError(f"signs must be one of {SIGNS}, got {signs!r}")
        self.signs = signs
        self.sums = MomentSums(self.device)
        self.directions = {}  # variant -> (d, d) matrix of the eigenvectors u as columns (signs: descending_eigh's)
        self.mean = None
        self.running_max = {}  # variant -> (m,) running max of uᵀv, m = 2d directions (u, then −u) or d
        self.running_sum = {}  # variant -> (m,) Σ exp(uᵀv − running max)
        self.pass1_count = 0
        self.loaded_log_z = None  # variant -> log Z of the 2d directions (u, then −u), from :meth:`load_state_dict`

    def begin_pass(self, index: int) -> None:
        super().begin_pass(index)
        if index == 1 and self.sums.count > 0:
            self._fix_directions()

    def _fix_directions(self) -> None:

        self.mean = self.sums.mean()
        scatter = {"uncentred": self.sums.uncentred_gram, "centred": self.sums.scatter}
        for variant in self.variants:
            _, vectors = descending_eigh(scatter[variant]())
            self.directions[variant] = vectors  # u; with signs="both" also −u, whose uᵀv are the negated columns
            m = vectors.shape[1] * (2 if self.signs == "both" else 1)
            self.running_max[variant] = vectors.new_full((m,), -math.inf)
            self.running_sum[variant] = vectors.new_zeros(m)

    def _update(self, batch: TokenBatch) -> None:
        import torch

        if self.pass_index == 0:
            self.sums.update(batch.x)
            return
        if not self.directions:
            raise RuntimeError("partition_isotropy: pass 1 before the directions were fixed (call begin_pass(1))")
        self.pass1_count += len(batch)
        for variant, directions in self.directions.items():
            x = batch.x - self.mean if variant == "centred" else batch.x
            projections = x @ directions  # (n, d): uᵀv for every token and eigenvector u
            d = projections.shape[1]
            if self.signs == "both":  # (−u)ᵀv = −uᵀv exactly: one product serves both signs
                low, high = torch.aminmax(projections, dim=0)
                batch_max = torch.cat([high, -low])
            else:
                batch_max = projections.max(dim=0).values
            new_max = torch.maximum(self.running_max[variant], batch_max)
            batch_sum = torch.exp(projections - new_max[:d]).sum(dim=0)
            if self.signs == "both":
                batch_sum = torch.cat([batch_sum, torch.exp(-projections - new_max[d:]).sum(dim=0)])
            self.running_sum[variant] = (self.running_sum[variant] * torch.exp(self.running_max[variant] - new_max)
                                         + batch_sum)
            self.running_max[variant] = new_max

    # -- the one-pass suite: U from moments known before the read, so Z(u) in the same read -----------
    def needs_moments_first(self) -> bool:
        return True

    def prime(self, moments) -> None:
        self.sums = moments
        if moments.count > 0:
            self._fix_directions()

    def stream(self, batch: TokenBatch, stage: str) -> None:
        if stage == "moments":
            self.pass_index = 1
            self._update(batch)

    def state_dict(self) -> dict:
        """log Z(u) of every direction of both variants, u then −u (the pass runs ``signs="both"`` and every
        variant; ``signs="canonical"`` is the first half: :func:`descending_eigh`'s signs)."""
        import numpy as np

        if self.signs != "both" or set(self.variants) != set(VARIANTS):
            raise ValueError("partition_isotropy: the suite's pass runs every variant with signs='both'")
        state = {f"log_z_{variant}": log_z for variant, log_z in self.log_partition().items()}
        return {**state, "tokens": np.asarray(self.pass1_count)}

    def load_state_dict(self, state: dict) -> None:
        self.loaded_log_z = {variant: state[f"log_z_{variant}"] for variant in VARIANTS if f"log_z_{variant}" in state}
        self.pass1_count = int(state["tokens"])

    def log_partition(self) -> dict:
        """log Z(u) for every direction, per variant (numpy arrays)."""
        import torch

        return {variant: (self.running_max[variant] + torch.log(self.running_sum[variant])).cpu().numpy()
                for variant in self.directions}

    def compute(self) -> list[MetricValue]:
        if self.loaded_log_z is not None:
            log_zs = {variant: self.loaded_log_z[variant] for variant in self.variants if variant in self.loaded_log_z}
            if self.signs == "canonical":
                log_zs = {variant: log_z[:len(log_z) // 2] for variant, log_z in log_zs.items()}
        elif self.sums.count == 0 or not self.directions:
            return []
        else:
            log_zs = self.log_partition()
        if self.pass1_count != self.sums.count:
            raise RuntimeError(f"partition_isotropy: pass 1 saw {self.pass1_count} tokens, pass 0 {self.sums.count}")
        rows = []
        for variant, log_z in log_zs.items():
            ratio = math.exp(float(log_z.min() - log_z.max()))  # min Z / max Z from log Z
            rows.append(MetricValue("partition_isotropy", ratio, self.sums.count, variant))
        return rows
