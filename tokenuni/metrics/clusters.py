"""Clusters in a layer's token space and isotropy within them.

Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds",
ICLR 2021 (§3.2 and §4): the token space of a layer falls into a few isolated clusters; once each
cluster is shifted to its own mean, the space is nearly isotropic within the clusters.

On a seeded :class:`~tokenuni.numerics.ReservoirSample` of ``sample_size`` tokens (the same
tokens for every layer and whatever the batching), for every k in ``k_min … k_max``:

* k-means (:func:`tokenuni.numerics.kmeans`: Lloyd; greedy k-means++ initialisation with 2 + ⌊ln k⌋
  local trials, as scikit-learn; ``n_init`` seeded restarts, the lowest inertia Σ_i ‖x_i − c_{l(i)}‖²
  kept; iterations until the labels stop changing or the centres move by ≤ ``tol`` × mean
  per-dimension variance; an emptied cluster is re-seeded with the point farthest from its centre)
  in float64 torch on the metric's device; every (repeat, k, restart) run advances together
  (:func:`tokenuni.numerics.kmeans_runs`: one distance product per Lloyd iteration for all runs).
  Row ``kmeans_inertia`` (component = k).
* the mean silhouette (Rousseeuw 1987) of that clustering, s(i) = (b_i − a_i) / max(a_i, b_i) with
  a_i the mean Euclidean distance from i to the other members of its cluster, b_i the smallest
  mean distance from i to the members of another (non-empty) cluster, s(i) = 0 when i is alone in
  its cluster or a_i = b_i = 0 — as ``sklearn.metrics.silhouette_score``. Exact pairwise distances,
  computed in row chunks and shared by every k; on the whole sample, or on a seeded subset of
  ``silhouette_sample_size`` of its points. Row ``silhouette`` (component = k).

``k_max`` above what the sample allows (k < n for n sampled tokens) is lowered to n − 1 with a warning
once per job; row ``clusters_k_max`` records the largest k tried, as ``lid_k`` does for LID. The
``sample_size`` column records the sample actually drawn (fewer when the dump has fewer tokens).

Maximum mean silhouette (MMS): the k with the largest mean silhouette (the smallest such k on
ties); Cai's rule: when that best silhouette is below ``min_silhouette`` (0.1) the space is one
cluster, k = 1. Rows ``mms_k`` (value = the chosen k) and ``mms_silhouette`` (the best mean
silhouette, reported even when the rule chose k = 1).

Isotropy within the chosen clusters C_1 … C_K (K = 1: the whole sample), with cosines of the raw
vectors (variant ``raw``) or after center shifting, x ↦ x − μ_c with μ_c the mean of x's own cluster
(variant ``cluster_centred``); zero vectors have no direction and are left out:

* ``within_cluster_avg_cosine`` = E_c[ mean_{i≠j ∈ C_c} cos(x_i, x_j) ];
* ``within_cluster_s_intra``    = E_c[ E_t[ mean_{i≠j ∈ C_c, type t} cos(x_i, x_j) ] ] over the token types t
  with ≥ 2 instances in the cluster (Cai's S'_intra);
* ``within_cluster_s_inter``    = E_c[ E_{t≠u}[ m_t · m_u ] ] over ordered pairs of distinct types of the
  cluster, m_t = mean of the unit vectors of type t's instances in the cluster (Cai's S'_inter): the
  exact expectation of Cai's estimator, which draws one random instance per type (as ``cosine_family``'s
  ``type_sampling: exact``), every type weighted alike.

E_c is the unweighted mean over the clusters where the quantity is defined (≥ 2 vectors; ≥ 2 types
for s_inter), as the paper's E_c and its code (``np.mean`` over clusters), not weighted by cluster
size. Each term is exact from per-(cluster, type) sums of unit vectors S: Σ_{i≠j} cos = ‖Σ x̂_i‖² − N.
Types are tokenizer ids (``token_id``).

Uncertainty: the whole analysis is repeated ``repeats`` times with k-means seeds derived from
(seed, repeat); every row's value is that of repeat 0 and its ``spread`` the sample standard
deviation (ddof = 1) over the repeats (absent when ``repeats`` = 1). It measures the instability of
k-means (local optima), not the sampling error of the token sample.

Memory: the reservoir (at most 2 × ``sample_size`` rows of d floats) and, at ``compute``, one
chunk of 64 MiB of the distance matrix; nothing grows with the number of tokens. Cost per layer:
repeats × (k_max − k_min + 1) × n_init k-means runs and one pass of n² d for the silhouettes
(about 30 s on one CPU thread for the defaults at d = 768; seconds on a GPU).

Deviations from the paper's public code (TideDancer/iclr21_isotropy_contxt, ``analysis.py``): its
k-means and silhouette subsample are unseeded (here every random choice derives from ``seed``); its
``sil_std`` is always 0 (one silhouette per k); it clusters all tokens and scores silhouette on 20,000
random points, here both on the seeded token sample; k runs over 2…15 there, ``k_min``…``k_max`` here
(default 2…10); S'_inter and S'_intra there draw random instances (one per type; at most 1000 per
type), here exact expectations over all instances in the sample.
"""
from __future__ import annotations

import logging

import numpy as np

from tokenuni.metrics.base import MetricError, MetricValue, SampledMetric, unit_rows, used_sample_size, warn_once
from tokenuni.metrics.rows import LOW, Row
from tokenuni.numerics import kmeans_runs, seeded_generator

log = logging.getLogger(__name__)

#: elements of one chunk of the pairwise distance matrix (8 Mi float64 = 64 MiB)
_DISTANCE_CHUNK_ELEMENTS = 1 << 23


def silhouette_scores(x, labelings, chunk_elements: int = _DISTANCE_CHUNK_ELEMENTS) -> list[float | None]:
    """Mean silhouette of each labeling of the rows of x (exact Euclidean distances, row chunks).

    The distance matrix is computed once, chunk by chunk, and shared by all labelings. A labeling
    with fewer than 2 or more than n − 1 non-empty clusters has no silhouette (None), as scikit-learn
    refuses it.
    """
    import torch

    x = x.to(dtype=torch.float64)
    x = x - x.mean(dim=0)
    n = x.shape[0]
    blocks, columns, usable = [], 0, []
    onehots = []
    for labels in labelings:
        labels = labels.to(x.device)
        _, dense = torch.unique(labels, return_inverse=True)  # non-empty clusters only, as LabelEncoder
        k = int(dense.max()) + 1 if n else 0
        usable.append(2 <= k <= n - 1)
        onehots.append(torch.nn.functional.one_hot(dense, k).to(x.dtype))
        blocks.append((columns, k, dense))
        columns += k
    if not any(usable):
        return [None] * len(labelings)
    onehot = torch.cat(onehots, dim=1)
    counts = onehot.sum(dim=0)
    x_sq = (x * x).sum(dim=1)
    # sums[i, c]: Σ_j∈c ‖x_i − x_j‖ for every cluster c of every labeling. The distance matrix is symmetric, so
    # a row chunk computes only its columns from the chunk on (half the products and square roots); the block
    # right of the diagonal block feeds its rows' sums directly and, transposed, the sums of the later rows.
    sums = torch.zeros((n, onehot.shape[1]), dtype=x.dtype, device=x.device)
    step = max(1, min(chunk_elements // max(n, 1), -(-n // 8)))  # ≥ 8 chunks: the computed triangle is ≤ 9/16
    for start in range(0, n, step):
        stop = min(start + step, n)
        distances = torch.addmm(x_sq[None, start:], x[start:stop], x[start:].T, alpha=-2.0)
        distances.add_(x_sq[start:stop, None]).clamp_min_(0.0).sqrt_()
        rows = torch.arange(stop - start, device=x.device)
        distances[rows, rows] = 0.0
        sums[start:] += distances.T @ onehot[start:stop]
        sums[start:stop] += distances[:, stop - start:] @ onehot[stop:]
    totals = torch.zeros(len(labelings), dtype=x.dtype, device=x.device)
    for index, (offset, k, dense) in enumerate(blocks):
        if not usable[index]:
            continue
        block_sums, block_counts = sums[:, offset:offset + k], counts[offset:offset + k]
        own_sum = block_sums.gather(1, dense[:, None])[:, 0]
        own_count = block_counts[dense]
        a = own_sum / (own_count - 1)  # 0/0 for a point alone in its cluster -> nan -> 0 below
        means = block_sums / block_counts[None, :]
        means.scatter_(1, dense[:, None], float("inf"))
        b = means.min(dim=1).values
        s = torch.nan_to_num((b - a) / torch.maximum(a, b), nan=0.0, posinf=0.0, neginf=0.0)
        totals[index] = s.sum()
    return [float(totals[i]) / n if usable[i] else None for i in range(len(labelings))]


def within_cluster_cosines(x, labels, token_id, centred: bool) -> dict[str, float]:
    """Unweighted mean over clusters of the mean pairwise cosine, S_intra and S_inter within each cluster."""
    import torch

    x = x.to(dtype=torch.float64)
    _, cluster = torch.unique(labels.to(x.device), return_inverse=True)
    n_clusters = int(cluster.max()) + 1
    if centred:
        sums = torch.zeros((n_clusters, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, cluster, x)
        counts = torch.bincount(cluster, minlength=n_clusters).to(x.dtype)
        x = x - (sums / counts[:, None])[cluster]
    unit, nonzero = unit_rows(x)
    unit, cluster, token = unit[nonzero], cluster[nonzero], token_id.to(x.device)[nonzero]
    if len(unit) == 0:
        return {}
    _, types = torch.unique(token, return_inverse=True)
    n_types = int(types.max()) + 1
    cluster_sum = torch.zeros((n_clusters, unit.shape[1]), dtype=unit.dtype, device=unit.device).index_add_(0, cluster, unit)
    cluster_count = torch.bincount(cluster, minlength=n_clusters).to(unit.dtype)
    group, group_index = torch.unique(cluster * n_types + types, return_inverse=True)
    group_sum = torch.zeros((len(group), unit.shape[1]), dtype=unit.dtype, device=unit.device).index_add_(0, group_index, unit)
    group_count = torch.bincount(group_index, minlength=len(group)).to(unit.dtype)
    group_cluster = group // n_types
    group_sq = (group_sum * group_sum).sum(dim=1)
    cluster_sq = (cluster_sum * cluster_sum).sum(dim=1)

    out = {}
    valid = cluster_count >= 2
    if valid.any():
        per_cluster = (cluster_sq - cluster_count) / (cluster_count * (cluster_count - 1)).clamp_min(1)
        out["avg_cosine"] = float(per_cluster[valid].mean())
    repeated = group_count >= 2
    if repeated.any():
        per_type = (group_sq - group_count) / (group_count * (group_count - 1)).clamp_min(1)
        intra_sum = torch.zeros(n_clusters, dtype=unit.dtype, device=unit.device).index_add_(
            0, group_cluster[repeated], per_type[repeated])
        intra_types = torch.bincount(group_cluster[repeated], minlength=n_clusters)
        has = intra_types > 0
        out["s_intra"] = float((intra_sum[has] / intra_types[has]).mean())
    # S_inter: E over ordered pairs of distinct types t ≠ u of the cluster of m_t · m_u, m_t = S_t / n_t
    centroid = group_sum / group_count[:, None]
    centroid_total = torch.zeros_like(cluster_sum).index_add_(0, group_cluster, centroid)
    centroid_sq = torch.zeros(n_clusters, dtype=unit.dtype, device=unit.device).index_add_(
        0, group_cluster, (centroid * centroid).sum(dim=1))
    n_types_in = torch.bincount(group_cluster, minlength=n_clusters).to(unit.dtype)
    has = n_types_in >= 2
    if has.any():
        per_cluster = ((centroid_total * centroid_total).sum(dim=1) - centroid_sq) / (n_types_in * (n_types_in - 1)).clamp_min(1)
        out["s_inter"] = float(per_cluster[has].mean())
    return out


class Clusters(SampledMetric):
    name = "clusters"
    #: its config entry ``metrics.clusters`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          k-means clusters of a seeded token sample, mean silhouette per k, best k by maximum mean silhouette
          (k = 1 below min_silhouette) and the cosine family within the chosen clusters, raw and after
          center shifting (Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and
          Manifolds", ICLR 2021).
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          sample_size:
            type: integer
            minimum: 2
            default: 5000
            description: Tokens in the seeded reservoir sample (the same tokens for every layer) that are clustered.
          seed:
            type: integer
            minimum: 0
            default: 0
            description: Seed of the token sample, the k-means restarts and the silhouette subset.
          k_min:
            type: integer
            minimum: 2
            default: 2
            description: Smallest number of clusters tried.
          k_max:
            type: integer
            minimum: 2
            default: 10
            description: Largest number of clusters tried (Cai et al. use 15); must be >= k_min.
          n_init:
            type: integer
            minimum: 1
            default: 5
            description: Seeded k-means++ restarts per k; the one with the lowest inertia is kept.
          max_iter:
            type: integer
            minimum: 1
            default: 300
            description: Most Lloyd iterations per restart.
          tol:
            type: number
            minimum: 0
            default: 1.0e-4
            description: Lloyd stops when the centres move less than tol x the mean per-dimension variance (scikit-learn's convention).
          silhouette_sample_size:
            type: [integer, "null"]
            minimum: 2
            default: null
            description: Score the silhouette on a seeded subset of this many sampled tokens; null = the whole sample.
          min_silhouette:
            type: number
            default: 0.1
            description: Cai's rule, when the best mean silhouette is below this the space counts as one cluster (k = 1).
          repeats:
            type: integer
            minimum: 1
            default: 3
            description: >-
              Whole analysis repeated with this many k-means seeds; values are from the first, spread = standard
              deviation (ddof 1) over the repeats (k-means instability, not sampling error); 1 = no spread.
    """
    rows = (
        Row("kmeans_inertia", "k-means inertia (per k)", component=True),
        Row("silhouette", "mean silhouette (per k)", component=True),
        Row("mms_k", "number of clusters k (max. mean silhouette)", title="k of max. mean silhouette (clusters)",
            unit="clusters"),
        Row("mms_silhouette", "best mean silhouette"),
        Row("within_cluster_avg_cosine", "average cosine within clusters", headline_variant="raw", isotropic=LOW),
        Row("within_cluster_s_intra", "S_intra within clusters", headline_variant="raw"),
        Row("within_cluster_s_inter", "S_inter within clusters", headline_variant="raw", isotropic=LOW),
        Row("clusters_k_max", "largest k tried (k-means)", unit="clusters", diagnostic=True),
    )
    derived_options = ("k_min", "k_max", "n_init", "max_iter", "tol", "silhouette_sample_size", "min_silhouette",
                       "repeats")

    def __init__(self, device="cpu", sample_size: int = 5000, seed: int = 0, k_min: int = 2, k_max: int = 10,
                 n_init: int = 5, max_iter: int = 300, tol: float = 1e-4, silhouette_sample_size: int | None = None,
                 min_silhouette: float = 0.1, repeats: int = 3, **options):
        super().__init__(device, sample_size=sample_size, seed=seed, **options)
        if int(sample_size) < 2:
            raise MetricError("sample_size must be at least 2")
        if not 2 <= int(k_min) <= int(k_max):
            raise MetricError(f"need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if int(n_init) < 1 or int(repeats) < 1 or int(max_iter) < 1:
            raise MetricError("n_init, repeats and max_iter must be at least 1")
        if silhouette_sample_size is not None and int(silhouette_sample_size) < 2:
            raise MetricError("silhouette_sample_size must be at least 2 (or null: the whole sample)")
        self.k_min, self.k_max = int(k_min), int(k_max)
        self.n_init, self.max_iter, self.tol = int(n_init), int(max_iter), float(tol)
        self.silhouette_sample_size = None if silhouette_sample_size is None else int(silhouette_sample_size)
        self.min_silhouette = float(min_silhouette)
        self.repeats = int(repeats)

    def _silhouette_subset(self, n: int):
        """Indices of the points the silhouette is scored on (all, or a seeded subset)."""
        import torch

        if self.silhouette_sample_size is None or self.silhouette_sample_size >= n:
            return None
        generator = seeded_generator(self.seed, 0x5117)
        return torch.sort(torch.randperm(n, generator=generator)[:self.silhouette_sample_size]).values.to(self.device)

    def analyse(self, x, token_id) -> list[dict]:
        """One analysis per repeat (a dict each): k-means labels, inertia and silhouette per k, the MMS choice
        (``mms_k``, ``mms_silhouette``, ``mms_labels``) and the within-cluster cosines per variant."""
        import torch

        n = x.shape[0]
        ks = list(range(self.k_min, self.k_max_used(n) + 1))
        # every (repeat, k, restart) k-means run at once (batched distance and centre products, shared centring)
        batched = kmeans_runs(x, [((r,), k) for r in range(self.repeats) for k in ks], n_init=self.n_init,
                              seed=self.seed, max_iter=self.max_iter, tol=self.tol)
        runs = {(key[0], k): result for (key, k), result in batched.items()}
        subset = self._silhouette_subset(n)
        scored = x if subset is None else x[subset]
        keys = list(runs)
        scores = silhouette_scores(scored, [runs[key][0] if subset is None else runs[key][0][subset] for key in keys])
        silhouettes = dict(zip(keys, scores))
        results = []
        for r in range(self.repeats):
            result = {"inertia": {k: runs[r, k][2] for k in ks},
                      "labels": {k: runs[r, k][0] for k in ks},
                      "silhouette": {k: silhouettes[r, k] for k in ks if silhouettes[r, k] is not None}}
            best_k, best = 1, None
            for k, score in result["silhouette"].items():
                if best is None or score > best:
                    best_k, best = k, score
            if best is None or best < self.min_silhouette:
                chosen_k, labels = 1, torch.zeros(n, dtype=torch.int64, device=x.device)
            else:
                chosen_k, labels = best_k, runs[r, best_k][0]
            result["mms_k"], result["mms_silhouette"], result["mms_labels"] = chosen_k, best, labels
            result["within"] = {variant: within_cluster_cosines(x, labels, token_id, centred=variant == "cluster_centred")
                                for variant in ("raw", "cluster_centred")}
            results.append(result)
        return results

    def k_max_used(self, n: int) -> int:
        """``k_max``, lowered (with a warning once per job) to n − 1 when the sample has only n tokens: k-means
        needs k < n and the silhouette needs at least one cluster with two points."""
        used = min(self.k_max, n - 1)
        if used < self.k_max:
            warn_once(log, ("clusters", "k_max", self.k_max, n),
                      "clusters: k_max %d lowered to %d: the sample holds only %d tokens (sample_size %d); k runs "
                      "over %s; the table records clusters_k_max = %d", self.k_max, used, n, self.sample_size,
                      f"{self.k_min}..{used}" if used >= self.k_min else "nothing (k_min is larger)", used)
        return used

    def compute(self) -> list[MetricValue]:
        rows = self.sample.rows()
        n = len(self.sample)
        if n < 2:
            return []
        sample_size = used_sample_size(self, self.sample, log)
        results = self.analyse(rows["x"], rows["token_id"])
        first = results[0]
        n_scored = n if self.silhouette_sample_size is None else min(n, self.silhouette_sample_size)

        def row(metric, pick, count=n, variant="", component=None):
            values = [pick(result) for result in results]
            if values[0] is None:
                return []
            others = [v for v in values if v is not None]
            spread = float(np.std(others, ddof=1)) if len(others) >= 2 else None
            return [MetricValue(metric, float(values[0]), count, variant, component, sample_size, self.seed, spread)]

        out = []
        for k in first["inertia"]:
            out += row("kmeans_inertia", lambda res, k=k: res["inertia"].get(k), component=k)
        for k in first["inertia"]:
            out += row("silhouette", lambda res, k=k: res["silhouette"].get(k), count=n_scored, component=k)
        out += row("mms_k", lambda res: res["mms_k"])
        out += row("mms_silhouette", lambda res: res["mms_silhouette"], count=n_scored)
        for variant in ("raw", "cluster_centred"):
            for quantity in ("avg_cosine", "s_intra", "s_inter"):
                out += row(f"within_cluster_{quantity}", lambda res, v=variant, q=quantity: res["within"][v].get(q),
                           variant=variant)
        out.append(MetricValue("clusters_k_max", float(self.k_max_used(n)), n, sample_size=sample_size, seed=self.seed))
        return out
