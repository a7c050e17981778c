"""Cluster-based isotropy enhancement: per cluster, subtract its mean and remove its top principal components.

Rajaee & Pilehvar, "A Cluster-based Approach for Improving Isotropy in Contextual Embedding Space",
ACL 2021 (SCIENCE.md §3). The fit vectors are clustered with k-means into K = ``clusters`` clusters
(default 27); for cluster c with mean μ_c and top p = ``pcs`` (default 12) principal components
u_c1 … u_cp of its mean-shifted members,

    x ↦ x̃ − Σ_{j ≤ p} (u_cjᵀ x̃) u_cj,   x̃ = x − μ_c,   c = the cluster of x,

i.e. all-but-the-top (Mu & Viswanath, ICLR 2018) within each cluster. A vector is assigned to the
cluster of its nearest k-means centre (squared Euclidean distance; first centre on ties), so the map
applies to vectors outside the fit set too; on the fit sample the assignment is the k-means labelling.

Fitting, streamed: the fit vectors pass through a seeded bottom-k sample
(:class:`tokenuni.numerics.ReservoirSample`, ``sample_size`` default 20000, ``seed``) keyed by each
vector's running index in the fit stream, so the sample does not depend on how the stream is cut
into batches; when the fit set has at most ``sample_size`` vectors, the sample is the whole set (the
paper's setting). k-means is :func:`tokenuni.numerics.kmeans` (k-means++ seeding, Lloyd,
best of ``n_init`` seeded restarts, float64 torch), seeded by ``seed``. The means μ_c are the means of
the sample members of each cluster and the components the top right singular vectors of the
mean-shifted members (exactly scikit-learn's ``PCA(n_components=p).components_``).

Guard: a cluster of m members spans at most m − 1 directions once shifted to its mean; removing all of
them would map every member to 0 (no cosine left to measure). It removes only min(p, ⌊(m − 1)/2⌋)
components — at least half of what the cluster spans stays — and a cluster of identical vectors (a
singleton, or duplicated sentences) is shifted by the global mean instead of its own (which would map
it to 0); further limited to the directions with a singular value above
d · ε_machine times the cluster's largest (``summary()['clusters_with_fewer_pcs']`` counts such
clusters). The paper's code would fail (or remove arbitrary directions) there.

Deviations from the paper's public code (Sara-Rajaee/clusterbased_isotropy_enhancement,
``cluster_based``): it clusters every vector with ``scipy.cluster.vq.kmeans2(minit='points')``,
unseeded and single-start, and keeps empty clusters (their mean is then 0/0); here k-means is seeded
k-means++ with restarts on a seeded sample and re-seeds emptied clusters. Its transform is defined
only for the vectors it clustered; here new vectors go to the nearest centre.

What the transform is fit on is the caller's choice: Rajaee & Pilehvar fit on the evaluation set's
own embeddings (the pool); a separate corpus works the same way; record it in ``fitted_on``. A fit set
with fewer than ``clusters`` vectors is refused with an error.
"""
from __future__ import annotations

from tokenuni.numerics import ReservoirSample, kmeans, squared_distances
from tokenuni.transforms.base import Transform, TransformError, float_option, integer_option


class ClusterRemoval(Transform):
    name = "cluster_removal"
    _state_names = ("shift", "centroids", "means", "components", "sizes", "n_removed", "removed_variance")

    def __init__(self, device="cpu", clusters: int = 27, pcs: int = 12, sample_size: int = 20000, seed: int = 0,
                 n_init: int = 3, max_iter: int = 300, tol: float = 1e-4):
        clusters = integer_option(self.name, "clusters", clusters, minimum=1)
        pcs = integer_option(self.name, "pcs", pcs, minimum=0)
        sample_size = integer_option(self.name, "sample_size", sample_size, minimum=1)
        seed = integer_option(self.name, "seed", seed, minimum=0)
        n_init = integer_option(self.name, "n_init", n_init, minimum=1)
        max_iter = integer_option(self.name, "max_iter", max_iter, minimum=1)
        tol = float_option(self.name, "tol", tol, minimum=0.0)
        if sample_size < clusters:
            raise TransformError(f"transform cluster_removal: option sample_size = {sample_size} is below clusters = {clusters}")
        super().__init__(device, clusters=clusters, pcs=pcs, sample_size=sample_size, seed=seed, n_init=n_init,
                         max_iter=max_iter, tol=tol)

    def _reset_statistics(self) -> None:
        self._sample = ReservoirSample(self._params["sample_size"], self._params["seed"])
        self.shift = self.centroids = self.means = self.components = None
        self.sizes = self.n_removed = self.removed_variance = None
        self.inertia = None
        self.sample_labels = None  # k-means labels of the fit sample (not saved)

    def _accumulate(self, x) -> None:
        import torch

        n = x.shape[0]
        index = torch.arange(self.n_fit, self.n_fit + n, dtype=torch.int64, device=x.device)
        self._sample.update(index, torch.zeros_like(index), x=x)

    def _finalize(self) -> None:
        import torch

        p = self._params
        x = self._sample.rows()["x"]
        n, d = x.shape
        k = p["clusters"]
        if n < k:
            raise TransformError(f"transform cluster_removal: {k} clusters need at least {k} fit vectors, got {n}")
        labels, centroids, inertia = kmeans(x, k, n_init=p["n_init"], seed=p["seed"], max_iter=p["max_iter"], tol=p["tol"])
        means = torch.zeros((k, d), dtype=x.dtype, device=x.device)
        components = torch.zeros((k, p["pcs"], d), dtype=x.dtype, device=x.device)
        sizes = torch.bincount(labels, minlength=k)
        n_removed = torch.zeros(k, dtype=torch.int64, device=x.device)
        removed_variance = torch.zeros((k, 2), dtype=x.dtype, device=x.device)  # (removed, total) squared norms
        for c in range(k):
            members = x[labels == c]
            if len(members) == 0:
                means[c] = centroids[c]
                continue
            # a cluster of identical vectors (a singleton, or duplicated sentences) shifted by its own mean
            # would become the zero vector (no direction left): it is shifted by the global mean instead
            spread = (members - members[0]).abs().max() if len(members) > 1 else members.new_zeros(())
            degenerate = float(spread) <= 1e-12 * max(float(members.abs().max()), 1e-300)
            means[c] = x.mean(dim=0) if degenerate else members.mean(dim=0)
            centred = members - means[c]
            if p["pcs"] == 0 or len(members) < 2 or degenerate:
                removed_variance[c, 1] = (centred * centred).sum()
                continue
            _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
            rank = int((singular > max(centred.shape) * torch.finfo(x.dtype).eps * singular[0]).sum()) if singular[0] > 0 else 0
            m = min(p["pcs"], (len(members) - 1) // 2, rank)
            components[c, :m] = vh[:m]
            n_removed[c] = m
            removed_variance[c] = torch.stack([(singular[:m] ** 2).sum(), (singular ** 2).sum()])
        self.shift = x.mean(dim=0)
        self.centroids, self.means, self.components = centroids, means, components
        self.sizes, self.n_removed, self.removed_variance = sizes, n_removed, removed_variance
        self.inertia = float(inertia)
        self.sample_labels = labels

    def assign(self, x):
        """The cluster (index of the nearest k-means centre) of each row of ``x``; same container type as ``x``."""
        import torch

        if not self._fitted:
            raise TransformError("transform cluster_removal is not fitted: call fit() or partial_fit() + finalize() first")
        t = self._as_tensor(x, "assign")
        if t.shape[1] != self.dim:
            raise TransformError(f"transform cluster_removal was fit on vectors of dimension {self.dim}, got {t.shape[1]}")
        labels = self._assign(t)
        return labels.to(x.device) if isinstance(x, torch.Tensor) else labels.cpu().numpy()

    def _assign(self, x):
        import torch

        # the same centred coordinates kmeans() measures distances in (distances do not change; rounding does)
        return torch.argmin(squared_distances(x - self.shift, self.centroids - self.shift), dim=1)

    def _apply(self, x):
        labels = self._assign(x)
        out = x - self.means[labels]
        for c in range(self.centroids.shape[0]):
            rows = labels == c
            if bool(rows.any()) and int(self.n_removed[c]) > 0:
                basis = self.components[c, :int(self.n_removed[c])]
                out[rows] = out[rows] - (out[rows] @ basis.T) @ basis
        return out

    def _extra_meta(self) -> dict:
        return {"inertia": self.inertia}

    def _load_state(self, state: dict, extra: dict) -> None:
        super()._load_state(state, extra)
        self.inertia = extra.get("inertia")

    def summary(self) -> dict:
        p = self._params
        removed, total = (float(v) for v in self.removed_variance.sum(dim=0))
        return {"n_fit": self.n_fit, "sample_n": int(self.sizes.sum()), "clusters": p["clusters"], "pcs": p["pcs"],
                "seed": p["seed"], "inertia": self.inertia, "smallest_cluster": int(self.sizes.min()),
                "clusters_with_fewer_pcs": int((self.n_removed < p["pcs"]).sum()),
                "removed_variance_fraction": removed / total if total > 0 else float("nan")}
