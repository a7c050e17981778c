"""Shared numerics, the ground floor: tensors and arrays in, tensors and numbers out.

Imports nothing from tokenuni outside this package (no token batches, no files): the metrics, transforms,
projection, fine-tuning, STS and GLUE build on it. Every name below is importable from ``tokenuni.numerics``.

* :mod:`.moments` -- :class:`MomentSums`, the one streamed accumulator of first and second moments (count,
  mean, centred scatter, uncentred Gram), exact to rounding however large the mean is against the spread;
  :func:`sample_covariance`, the two-pass covariance of one in-memory matrix (differentiable); :func:`outer`;
* :mod:`.eigen` -- :func:`descending_eigh` / :func:`canonical_signs`: eigenpairs of a symmetric matrix in
  descending order with one sign convention;
* :mod:`.sampling` -- :class:`ReservoirSample` / :func:`token_hash`: a seeded, batching-independent bottom-k
  sample; :func:`seeded_generator`: a torch generator seeded from integers;
* :mod:`.clustering` -- :func:`kmeans`: seeded k-means++ / Lloyd, best of ``n_init`` restarts
  (:func:`kmeans_runs`: many runs batched; :func:`kmeans_plusplus`, :func:`squared_distances`);
* :mod:`.descriptive` -- :func:`skewness` / :func:`skewness_rows`: population skewness, the one definition;
  :func:`constant_up_to_rounding` (:data:`CONSTANT_RESOLUTION`);
* :mod:`.correlation` -- :func:`pearson` / :func:`spearman`: correlations, by scipy (the reference).

Accumulation is float64 on the tensors' device (CUDA or CPU: the same numbers to rounding).
"""
from __future__ import annotations

from tokenuni.numerics.clustering import kmeans, kmeans_plusplus, kmeans_runs, squared_distances
from tokenuni.numerics.correlation import pearson, spearman
from tokenuni.numerics.descriptive import CONSTANT_RESOLUTION, constant_up_to_rounding, skewness, skewness_rows
from tokenuni.numerics.eigen import canonical_signs, descending_eigh
from tokenuni.numerics.moments import MomentSums, outer, sample_covariance
from tokenuni.numerics.sampling import ReservoirSample, seeded_generator, token_hash

__all__ = [
    "MomentSums", "outer", "sample_covariance",
    "descending_eigh", "canonical_signs",
    "ReservoirSample", "token_hash", "seeded_generator",
    "squared_distances", "kmeans_plusplus", "kmeans", "kmeans_runs",
    "CONSTANT_RESOLUTION", "constant_up_to_rounding", "skewness_rows", "skewness",
    "pearson", "spearman",
]
