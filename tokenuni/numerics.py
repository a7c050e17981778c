"""Shared numerics, the ground floor: tensors and arrays in, tensors and numbers out.

Imports nothing from tokenuni (no token batches, no files): the metrics, transforms, projection,
fine-tuning, STS and GLUE build on it.

* :class:`MomentSums` -- the one streamed accumulator of first and second moments (count, mean,
  centred scatter, uncentred Gram), exact to rounding however large the mean is against the spread;
* :func:`descending_eigh` / :func:`canonical_signs` -- eigenpairs of a symmetric matrix in descending
  order with one sign convention;
* :func:`sample_covariance` -- the two-pass covariance of one in-memory matrix (differentiable);
* :class:`ReservoirSample` / :func:`token_hash` -- a seeded, batching-independent bottom-k sample;
* :func:`kmeans` -- seeded k-means++ / Lloyd, best of ``n_init`` restarts;
* :func:`skewness` / :func:`skewness_rows` -- population skewness, the one definition;
* :func:`pearson` / :func:`spearman` -- correlations, by scipy (the reference).

Accumulation is float64 on the tensors' device (CUDA or CPU: the same numbers to rounding).
"""
from __future__ import annotations

import math

import numpy as np

# -- moments ----------------------------------------------------------------------------------------


class MomentSums:
    """Streamed count N, mean μ and centred scatter M = Σ (x − μ)(x − μ)ᵀ of rows x ∈ ℝᵈ (float64).

    The shifted form: rows are accumulated as y = x − c, with the shift c fixed to the mean of the first
    batch, so the running sums hold numbers of the size of the spread, not of the mean. Each batch B is
    centred on its own mean (two-pass within the batch: its scatter M_B is formed without cancellation)
    and merged into the running state with the exact pairwise update of Chan, Golub & LeVeque
    ("Algorithms for computing the sample variance", The American Statistician 37, 1983)::

        δ = m_B − m_A,   N = N_A + N_B,   m = m_A + δ N_B / N,   M = M_A + M_B + δδᵀ N_A N_B / N

    (m: running mean of y). Every term added to M is positive semi-definite, so nothing cancels: M is
    accurate to rounding relative to itself even when ‖μ‖ dwarfs the spread (GPT-2's rogue dimensions of
    10²–10³), where the one-pass form Σ x xᵀ − N μμᵀ has a relative error of ε ‖μ‖² / σ² in a direction
    of spread σ (10⁻⁴ at ‖μ‖ = 10⁴, σ = 10⁻²). The shift keeps m small, so the rounding of the running
    mean (ε ‖m‖ per merge) stays at the level of the spread, not of μ.

    Why not the shift alone (Σ y, Σ y yᵀ, then Σ y yᵀ − N m mᵀ)? It still loses a factor ‖c − μ‖² / σ²;
    as the first batch's n₁ rows are part of the data, n₁ ‖c − μ‖² ≤ N σ² along c − μ, so that factor is
    at most N / n₁: small in practice (ε N / n₁ ≈ 10⁻¹² for 20 000 tokens after a one-token first batch)
    but growing with the stream. The pairwise update removes it at the cost of centring each batch on
    its own mean and one d × d outer product per batch (the n × d² product dominates), and it is what
    :meth:`merge` needs to combine accumulators of disjoint streams (filled on different devices, or by
    several metrics sharing one pass). The result depends on the batching only through rounding.

    Derived quantities: :meth:`mean`, :meth:`scatter`, :meth:`covariance` (M / (N − ddof)) and
    :meth:`uncentred_gram` Σ x xᵀ = M + N μμᵀ (a sum of PSD terms, again without cancellation).
    """

    def __init__(self, device=None):
        import torch

        #: the device of the state (None: that of the first batch)
        self.device = None if device is None else torch.device(device)
        self.count = 0
        self.shift = None  # (d,) c: the mean of the first batch
        self._mean = None  # (d,) running mean of y = x − c
        self._scatter = None  # (d, d) running M

    @property
    def dim(self) -> int | None:
        return None if self.shift is None else int(self.shift.shape[0])

    def update(self, x) -> MomentSums:
        """Add the rows of ``x`` ((n, d) tensor or array; cast to float64 on the accumulator's device)."""
        import torch

        x = torch.as_tensor(x)
        if x.ndim != 2:
            raise ValueError(f"MomentSums.update needs an (n, d) matrix of rows, got shape {tuple(x.shape)}")
        n = int(x.shape[0])
        if n == 0:
            return self
        x = x.to(device=self.device if self.device is not None else x.device, dtype=torch.float64)
        if self.shift is None:
            self.device = x.device
            self.shift = x.mean(dim=0)
        elif x.shape[1] != self.dim:
            raise ValueError(f"MomentSums: rows of dimension {x.shape[1]} added to a stream of dimension {self.dim}")
        centred = x - self.shift  # y, a new tensor (x is the caller's) ...
        batch_mean = centred.mean(dim=0)
        centred -= batch_mean  # ... centred on the batch's mean in place
        if self.count == 0:
            self.count, self._mean, self._scatter = n, batch_mean, centred.T @ centred
        else:
            self._scatter.addmm_(centred.T, centred)  # M += M_B in place
            self._fold(n, batch_mean)
        return self

    def merge(self, other: MomentSums) -> MomentSums:
        """Fold the statistics of ``other`` (a disjoint stream) into this one; returns self."""
        if not other.count:
            return self
        if self.shift is None:
            self.device = other.device if self.device is None else self.device
            self.shift = other.shift.to(self.device).clone()
        elif other.dim != self.dim:
            raise ValueError(f"MomentSums: merging a stream of dimension {other.dim} into one of dimension {self.dim}")
        mean = (other.shift.to(self.device) - self.shift) + other._mean.to(self.device)  # other's mean, in our shift
        if self.count == 0:
            self.count, self._mean, self._scatter = other.count, mean, other._scatter.to(self.device).clone()
        else:
            self._scatter += other._scatter.to(self.device)
            self._fold(other.count, mean)
        return self

    def _fold(self, n: int, mean) -> None:
        """The pairwise update for n more rows of mean ``mean`` (in our shift), their scatter already added to M."""
        total = self.count + n
        delta = mean - self._mean
        self._mean += delta * (n / total)
        self._scatter.addr_(delta, delta, alpha=self.count * n / total)  # M += δδᵀ N_A N_B / N
        self.count = total

    def _require(self) -> None:
        if self.count == 0:
            raise ValueError("MomentSums: no rows were added")

    def mean(self):
        """μ = c + m = (1/N) Σ x."""
        self._require()
        return self.shift + self._mean

    def scatter(self):
        """M = Σ (x − μ)(x − μ)ᵀ (centred, not divided by anything), symmetrised."""
        self._require()
        return (self._scatter + self._scatter.T) / 2

    def covariance(self, ddof: int = 1):
        """M / (N − ddof): the sample covariance (ddof = 1, as ``torch.cov``) or the population one (ddof = 0)."""
        if self.count <= ddof:
            raise ValueError(f"MomentSums: a covariance with ddof={ddof} needs more than {ddof} rows, got {self.count}")
        return self.scatter() / (self.count - ddof)

    def uncentred_gram(self):
        """Σ x xᵀ = M + N μμᵀ, symmetrised."""
        mean = self.mean()
        return self.scatter() + self.count * outer(mean, mean)

    def state_dict(self) -> dict:
        """The state as numpy arrays (float64): ``count``, ``shift``, ``mean`` (of y = x − c), ``scatter`` (M)."""
        self._require()
        return {"count": np.asarray(self.count, dtype=np.int64), "shift": self.shift.cpu().numpy(),
                "mean": self._mean.cpu().numpy(), "scatter": self._scatter.cpu().numpy()}

    @classmethod
    def from_state_dict(cls, state: dict, device=None) -> MomentSums:
        """The accumulator a :meth:`state_dict` came from (bit for bit), on ``device`` (default CPU)."""
        import torch

        sums = cls(device or "cpu")
        sums.count = int(state["count"])
        sums.shift, sums._mean, sums._scatter = (torch.as_tensor(np.asarray(state[k]), dtype=torch.float64,
                                                                 device=sums.device).clone()
                                                 for k in ("shift", "mean", "scatter"))
        return sums

    def select(self, coordinates) -> MomentSums:
        """The moments of a subset of the coordinates (a list of indices): a block of M, entries of c and m.

        Exact: the same numbers as an accumulator fed only those coordinates, up to the rounding of the matrix
        products (a block of a wider product).
        """
        import torch

        self._require()
        index = torch.as_tensor(list(coordinates), dtype=torch.int64, device=self.device)
        sub = MomentSums(self.device)
        sub.count = self.count
        sub.shift, sub._mean = self.shift[index].clone(), self._mean[index].clone()
        sub._scatter = self._scatter[index][:, index].clone()
        return sub


def outer(a, b):
    """a bᵀ of two vectors (torch)."""
    return a[:, None] * b[None, :]


def sample_covariance(x):
    """Covariance (ddof = 1) of the rows of one in-memory matrix ``x`` (torch), two-pass, as ``torch.cov(x.T)``.

    Differentiable (I-STAR's batch covariance); for a stream use :class:`MomentSums`.
    """
    centred = x - x.mean(dim=0)
    return centred.T @ centred / (x.shape[0] - 1)


# -- eigenpairs ------------------------------------------------------------------------------------


def descending_eigh(matrix):
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix, with a canonical sign.

    ``torch.linalg.eigh`` of the symmetrised matrix, reordered; each eigenvector is signed by
    :func:`canonical_signs`, so repeated decompositions of nearly equal matrices give nearly equal bases.
    """
    import torch

    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    values, vectors = values.flip(0), vectors.flip(1)
    return values, canonical_signs(vectors)


def canonical_signs(vectors):
    """Columns multiplied by ±1 so that each column's entry of largest magnitude is positive (the first on ties)."""
    import torch

    if vectors.numel() == 0:
        return vectors
    pivot = torch.argmax(vectors.abs(), dim=0)
    signs = torch.sign(vectors.gather(0, pivot[None, :])[0])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return vectors * signs[None, :]


# -- seeded sampling -------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def token_hash(seed: int, sentence_id, position):
    """A seeded 64-bit hash (splitmix64) of (sentence_id, position), as int64 tensors; order-free."""
    import torch

    def mix(z):
        z = z.to(torch.int64)
        z = (z ^ ((z >> 30) & 0x3FFFFFFFF)) * _signed(0xBF58476D1CE4E5B9)
        z = (z ^ ((z >> 27) & 0x1FFFFFFFFF)) * _signed(0x94D049BB133111EB)
        return z ^ ((z >> 31) & 0x1FFFFFFFF)

    key = sentence_id.to(torch.int64) * 1_000_003 + position.to(torch.int64)
    return mix(key + _signed((int(seed) * 0x9E3779B97F4A7C15) & _MASK64))


class ReservoirSample:
    """A seeded, batching-independent sample of at most ``size`` items of a stream (bottom-k sampling).

    Items are identified by (sentence_id, position) (int tensors); an item is kept when its
    :func:`token_hash` under ``seed`` is among the ``size`` smallest, so the sample does not depend on
    batch boundaries, is the same set of items for every layer of a dump, and is reproducible from the
    seed. Any further per-item tensors (vectors, token ids, ...) travel with the kept items. Memory is
    at most 2 × size rows. :meth:`rows` returns them in (sentence_id, position) order.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = int(seed)
        self.keys = None
        self.columns: dict = {}
        self.seen = 0

    def update(self, sentence_id, position, **columns) -> None:
        """Offer the items (``sentence_id``, ``position``), with ``columns``: per-item tensors to keep alongside."""
        import torch

        columns = {"sentence_id": sentence_id, "position": position, **columns}
        lengths = {name: int(value.shape[0]) for name, value in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"ReservoirSample.update: columns of different lengths {lengths}")
        keys = token_hash(self.seed, sentence_id, position)
        self.seen += len(keys)
        if self.keys is None:
            self.keys, self.columns = keys, dict(columns)
        else:
            if set(columns) != set(self.columns):
                raise ValueError(f"ReservoirSample.update: columns {sorted(columns)}, earlier {sorted(self.columns)}")
            self.keys = torch.cat([self.keys, keys])
            self.columns = {k: torch.cat([v, columns[k]]) for k, v in self.columns.items()}
        if len(self.keys) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        import torch

        if len(self.keys) <= self.size:
            return
        keep = torch.topk(self.keys, self.size, largest=False).indices
        self.keys = self.keys[keep]
        self.columns = {k: v[keep] for k, v in self.columns.items()}

    def rows(self) -> dict:
        """The sample as a dict of tensors (``sentence_id``, ``position`` and the offered columns)."""
        import torch

        if self.keys is None:
            return {}
        self._shrink()
        order = torch.argsort(self.columns["sentence_id"] * 1_000_003 + self.columns["position"])
        return {k: v[order] for k, v in self.columns.items()}

    def __len__(self) -> int:
        return 0 if self.keys is None else min(len(self.keys), self.size)

    def bottom(self, size: int) -> ReservoirSample:
        """The sample a ``ReservoirSample(size, seed)`` fed the same stream would hold (size ≤ this one's size):
        the ``size`` smallest hashes (bottom-k samples of one hash nest)."""
        if size > self.size:
            raise ValueError(f"ReservoirSample.bottom: {size} tokens asked of a sample of {self.size}")
        other = ReservoirSample(size, self.seed)
        other.seen = self.seen
        if self.keys is not None:
            other.keys, other.columns = self.keys, dict(self.columns)
            other._shrink()
        return other


def seeded_generator(*key: int):
    """A CPU torch generator seeded from integers (np.random.SeedSequence), the same on every device."""
    import torch

    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


# -- k-means ---------------------------------------------------------------------------------------


def squared_distances(x, centers, x_sq=None):
    """‖x_i − c_j‖² (n × k), clamped at 0."""
    if x_sq is None:
        x_sq = (x * x).sum(dim=1)
    return (x_sq[:, None] - 2.0 * (x @ centers.T) + (centers * centers).sum(dim=1)[None, :]).clamp_min_(0.0)


def kmeans_plusplus(x, k: int, generator, x_sq=None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; 2 + ⌊ln k⌋ trials per centre, as scikit-learn)."""
    import torch

    n = x.shape[0]
    if x_sq is None:
        x_sq = (x * x).sum(dim=1)
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    closest = squared_distances(x, x[first:first + 1], x_sq)[:, 0]
    potential = closest.sum()
    for _ in range(1, k):
        draws = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device) * potential
        candidates = torch.searchsorted(torch.cumsum(closest, 0), draws).clamp_(max=n - 1)
        to_candidates = torch.minimum(closest[:, None], squared_distances(x, x[candidates], x_sq))
        potentials = to_candidates.sum(dim=0)
        best = int(torch.argmin(potentials))
        chosen.append(int(candidates[best]))
        closest, potential = to_candidates[:, best], potentials[best]
    return x[chosen].clone()


def kmeans(x, k: int, *, n_init: int = 5, seed: int = 0, max_iter: int = 300, tol: float = 1e-4, key=()):
    """Best of ``n_init`` seeded k-means++ / Lloyd runs: (labels, centres, inertia), float64 on x's device.

    Lloyd iterates until the labels stop changing or the centres move by ≤ ``tol`` × the mean
    per-dimension variance of x (scikit-learn's convention); an emptied cluster is re-seeded with the
    point farthest from its centre. The restarts draw from generators seeded by (seed, *key, k, restart); the
    first restart of the lowest inertia wins (restarts within 1e-12 relative tie: two restarts that find the same
    partition, numbered otherwise, differ only in rounding). One call of :func:`kmeans_runs` (batched).
    """
    return kmeans_runs(x, [(tuple(key), int(k))], n_init=n_init, seed=seed, max_iter=max_iter, tol=tol)[tuple(key), int(k)]


def kmeans_runs(x, runs, *, n_init: int = 5, seed: int = 0, max_iter: int = 300, tol: float = 1e-4) -> dict:
    """:func:`kmeans` for many (key, k) at once on the same points: {(key, k): (labels, centres, inertia)}.

    Every (key, k, restart) is the same seeded run as a call of :func:`kmeans` would make (same generator, same
    k-means++ draws, same Lloyd rules), but the runs advance together: one matrix product gives the distances of
    every point to the centres of every active run (x Cᵀ with C the stacked centres, instead of one thin product
    per run), one product with the stacked one-hot labels gives every run's new centre sums (instead of one
    ``index_add_`` per run), and the k-means++ candidates of all runs are scored by one product per seeding step.
    The centring, squared norms and tolerance of x are computed once. Numbers equal the one-run-at-a-time
    evaluation to rounding (sums taken in another order); a label could differ only for a point equidistant to
    two centres to the last bit.
    """
    import torch

    if not runs:  # e.g. clusters' k_max lowered below k_min for a sample of a few tokens
        return {}
    x = x.to(dtype=torch.float64)
    n = x.shape[0]
    mean = x.mean(dim=0)
    centred = x - mean  # distances do not change; rounding does (as scikit-learn)
    x_sq = (centred * centred).sum(dim=1)
    absolute_tol = tol * float(centred.var(dim=0, unbiased=False).mean()) if n > 1 else 0.0
    plan = [(tuple(key), int(k), restart) for key, k in runs for restart in range(max(int(n_init), 1))]
    generators = [seeded_generator(seed, *key, k, restart) for key, k, restart in plan]
    seeds = _kmeans_plusplus_runs(centred, [k for _, k, _ in plan], generators, x_sq)
    finished = _lloyd_runs(centred, seeds, x_sq, max_iter, absolute_tol)
    best: dict = {}
    for (key, k, _), result in zip(plan, finished):  # the first restart of the lowest inertia; restarts that reach
        # the same partition (numbered otherwise) tie to the last bits, so a later one must be lower by 1e-12 relative
        if (key, k) not in best or result[2] < best[key, k][2] * (1.0 - 1e-12):
            best[key, k] = result
    return {run: (labels, centers + mean, inertia) for run, (labels, centers, inertia) in best.items()}


def _kmeans_plusplus_runs(x, ks: list[int], generators: list, x_sq) -> list:
    """:func:`kmeans_plusplus` for several runs (one generator and k each), the candidates of all runs scored by
    one distance product per seeding step."""
    import torch

    n = x.shape[0]
    firsts = [int(torch.randint(n, (1,), generator=generator)) for generator in generators]
    chosen = [[first] for first in firsts]
    first_distances = squared_distances(x, x[firsts], x_sq)
    closest = [first_distances[:, r] for r in range(len(ks))]
    potential = list(first_distances.sum(dim=0))
    for step in range(1, max(ks)):
        active = [r for r, k in enumerate(ks) if k > step]
        candidates = []
        for r in active:
            trials = 2 + int(math.log(ks[r]))
            draws = torch.rand(trials, generator=generators[r], dtype=torch.float64).to(x.device) * potential[r]
            candidates.append(torch.searchsorted(torch.cumsum(closest[r], 0), draws).clamp_(max=n - 1))
        distances = squared_distances(x, x[torch.cat(candidates)], x_sq)
        offset = 0
        for r, candidate in zip(active, candidates):
            to_candidates = torch.minimum(closest[r][:, None], distances[:, offset:offset + len(candidate)])
            offset += len(candidate)
            potentials = to_candidates.sum(dim=0)
            best = int(torch.argmin(potentials))
            chosen[r].append(int(candidate[best]))
            closest[r], potential[r] = to_candidates[:, best], potentials[best]
    return [x[index].clone() for index in chosen]


def _lloyd_runs(x, centers: list, x_sq, max_iter: int, tol: float) -> list:
    """Lloyd's iterations of several runs (:func:`kmeans`'s rules), batched: per iteration one distance product for
    all runs still moving, and the runs of equal k assigned, counted and compared as one (runs, k) block. The centre
    sums come from one product with the stacked one-hot labels in the first iteration; after it, only the points
    that changed cluster move their vector from one sum to the other.

    Distances are skipped where they cannot change an assignment (Hamerly, "Making k-means even faster", SDM 2010):
    per run and point an upper bound u on the distance to its centre and a lower bound l on the distance to any
    other; after the centres move by δ, u += δ(own centre), l −= max δ, and only the points with u ≥ l − margin
    (margin 10⁻⁶ of the data's scale, far above the rounding of the distances) get a new row of distances. A point
    that is skipped provably keeps the centre the full argmin would give it. Returns (labels, centres, inertia)
    per run."""
    import torch

    n, device = x.shape[0], x.device
    norm = torch.sqrt(x_sq)
    margin = 1e-6 * (float(norm.max()) if n else 1.0)
    groups: dict[int, list[int]] = {}
    for r, c in enumerate(centers):
        groups.setdefault(int(c.shape[0]), []).append(r)
    # per k: the runs, their stacked centres (R, k, d), labels (R, n), and which runs still move
    state = {k: {"runs": runs, "centers": torch.stack([centers[r] for r in runs]), "labels": None,
                 "active": torch.ones(len(runs), dtype=torch.bool, device=device)} for k, runs in groups.items()}
    for _ in range(max(int(max_iter), 0)):
        moving = [(k, g, torch.nonzero(g["active"]).flatten()) for k, g in state.items() if bool(g["active"].any())]
        if not moving:
            break
        first = all(g["labels"] is None for _, g, _ in moving)  # every run of a group starts together
        onehot = torch.zeros((n, sum(len(rows) * k for k, _, rows in moving)), dtype=x.dtype, device=device) \
            if first else None
        offset, blocks = 0, []
        for k, g, rows in moving:
            width = len(rows) * k
            stacked = g["centers"][rows].reshape(-1, x.shape[1])
            c_sq = (stacked * stacked).sum(dim=1)[None, :]
            if g["labels"] is None:
                points = None  # every point
                upper = torch.empty((len(g["runs"]), n), dtype=x.dtype, device=device)
                g["upper"], g["lower"] = upper, torch.empty_like(upper)
            else:
                stale = g["upper"][rows] >= g["lower"][rows] - margin  # (R, n): the bounds do not settle it
                points = torch.nonzero(stale.any(dim=0)).flatten()
            # ‖x − c‖² − ‖x‖² = ‖c‖² − 2 x·c: the same argmin (‖x‖² is the row's constant), one fused product per k
            subset = x if points is None else x[points]
            block = torch.addmm(c_sq, subset, stacked.T, alpha=-2.0).view(len(subset), len(rows), k)
            found = torch.argmin(block, dim=2)  # (m, R)
            if len(subset) and k >= 2:
                near = (block + (x_sq if points is None else x_sq[points])[:, None, None]).clamp_min(0.0)
                two = torch.topk(near, 2, dim=2, largest=False).values.sqrt()  # (m, R, 2): nearest, second nearest
                if points is None:
                    g["upper"][rows], g["lower"][rows] = two[:, :, 0].T, two[:, :, 1].T
                else:
                    upper, lower = g["upper"][rows], g["lower"][rows]
                    upper[:, points], lower[:, points] = two[:, :, 0].T, two[:, :, 1].T
                    g["upper"][rows], g["lower"][rows] = upper, lower
            if points is None:
                assigned = found
            else:
                assigned = g["labels"][rows].T.clone()
                assigned[points] = found
            counts = torch.bincount((torch.arange(len(rows), device=device) * k + assigned).flatten(),
                                    minlength=width).view(len(rows), k)
            for i in torch.nonzero((counts == 0).any(dim=1)).flatten().tolist():
                # re-seed emptied clusters with the points farthest from their centres (every distance of this run)
                empty = torch.nonzero(counts[i] == 0).flatten()
                run_centers = stacked[i * k:(i + 1) * k]
                full = torch.addmm((run_centers * run_centers).sum(dim=1)[None, :], x, run_centers.T, alpha=-2.0)
                assigned[:, i] = torch.argmin(full, dim=1)
                own = (full.gather(1, assigned[:, i:i + 1])[:, 0] + x_sq).clamp_min(0.0)
                far = torch.topk(own, min(len(empty), n)).indices
                column = assigned[:, i].clone()
                column[far] = empty[:len(far)]
                assigned[:, i] = column
                counts[i] = torch.bincount(column, minlength=k)
                run = rows[i]
                g["upper"][run], g["lower"][run] = math.inf, -math.inf  # bounds void: every distance next time
            if onehot is not None:
                onehot[:, offset:offset + width].view(n, len(rows), k).scatter_(2, assigned[:, :, None], 1.0)
            blocks.append((offset, width, assigned, counts))
            offset += width
        if onehot is not None:  # the first iteration: every run's centre sums by one product
            sums = onehot.T @ x
            for (k, g, rows), (offset, width, _, _) in zip(moving, blocks):
                g["sums"] = sums[offset:offset + width].view(len(rows), k, -1).clone()
        else:  # later ones: only the points that changed cluster move their vector between two sums
            for (k, g, rows), (_, _, assigned, _) in zip(moving, blocks):
                before, after = g["labels"][rows], assigned.T
                run, point = torch.nonzero(before != after, as_tuple=True)
                if len(run) > n // 2:  # many moved: one product is cheaper than the gathers
                    onehot = torch.zeros((n, len(rows) * k), dtype=x.dtype, device=device)
                    onehot.view(n, len(rows), k).scatter_(2, assigned[:, :, None], 1.0)
                    g["sums"][rows] = (onehot.T @ x).view(len(rows), k, -1)
                elif len(run):
                    block = g["sums"][rows].view(len(rows) * k, -1)
                    moved = x[point]
                    block.index_add_(0, run * k + after[run, point], moved)
                    block.index_add_(0, run * k + before[run, point], moved, alpha=-1.0)
                    g["sums"][rows] = block.view(len(rows), k, -1)
        for (_k, g, rows), (_offset, _width, assigned, counts) in zip(moving, blocks):
            old = g["centers"][rows]
            new = torch.where(counts[:, :, None] > 0, g["sums"][rows] / counts.clamp_min(1)[:, :, None].to(x.dtype), old)
            shift = ((new - old) ** 2).sum(dim=(1, 2))
            g["centers"][rows] = new
            moved = torch.linalg.vector_norm(new - old, dim=2)  # (R, k): how far each centre moved
            g["upper"][rows] = g["upper"][rows] + moved.gather(1, assigned.T)
            g["lower"][rows] = g["lower"][rows] - moved.max(dim=1).values[:, None]
            labels = assigned.T  # (R, n)
            if g["labels"] is None:
                g["labels"] = torch.empty((len(g["runs"]), n), dtype=labels.dtype, device=device)
                converged = torch.zeros(len(rows), dtype=torch.bool, device=device)
            else:
                converged = (g["labels"][rows] == labels).all(dim=1)
            g["labels"][rows] = labels
            g["active"][rows] = ~(converged | (shift <= tol))
    final = [None] * len(centers)
    for g in state.values():
        for i, r in enumerate(g["runs"]):
            final[r] = g["centers"][i]
    distances = squared_distances(x, torch.cat(final), x_sq)
    results, offset = [], 0
    for r in range(len(final)):
        k = final[r].shape[0]
        block = distances[:, offset:offset + k]
        offset += k
        assigned = torch.argmin(block, dim=1)
        results.append((assigned, final[r], float(block.gather(1, assigned[:, None]).sum())))
    return results


# -- skewness --------------------------------------------------------------------------------------

#: relative spread below which a set of values counts as constant (scipy.stats.skew's rule, where it returns nan)
CONSTANT_RESOLUTION = 1e-15


def constant_up_to_rounding(variance, mean):
    """Whether a variance is at rounding level for values of that mean: variance ≤ (10⁻¹⁵ · mean)².

    A set of equal values can come out of float arithmetic with a variance of ~ε² · mean² instead of 0;
    quantities that divide by the variance (skewness, correlations from streamed moments) treat such sets as
    constant.
    """
    return variance <= (CONSTANT_RESOLUTION * mean) ** 2


def skewness_rows(values, valid=None):
    """Population (biased) skewness m₃ / m₂^{3/2} of each row of ``values`` (torch, (..., n)) over its ``valid``
    entries.

    m_k = mean over the valid entries of (v − mean)ᵏ, as ``scipy.stats.skew`` (bias=True). A row whose
    m₂ ≤ (10⁻¹⁵ · mean)² -- constant up to rounding, where scipy returns nan -- has skewness 0.
    """
    import torch

    values = torch.as_tensor(values)
    if valid is None:
        valid = torch.ones_like(values, dtype=torch.bool)
    zero = torch.zeros_like(values)
    count = valid.sum(dim=-1).to(values.dtype)
    mean = torch.where(valid, values, zero).sum(dim=-1) / count
    centred = torch.where(valid, values - mean[..., None], zero)
    m2 = (centred ** 2).sum(dim=-1) / count
    m3 = (centred ** 3).sum(dim=-1) / count
    spread_out = ~constant_up_to_rounding(m2, mean)
    safe_m2 = torch.where(spread_out, m2, torch.ones_like(m2))
    return torch.where(spread_out, m3 / safe_m2 ** 1.5, torch.zeros_like(m2))


def skewness(values) -> float:
    """Population skewness of a 1-D sequence (array, tensor or list), float64; 0 for constant input.

    The same definition as :func:`skewness_rows` (scipy.stats.skew, 0 where scipy returns nan).
    """
    import torch

    values = torch.as_tensor(np.asarray(values, dtype=np.float64) if not isinstance(values, torch.Tensor) else values,
                             dtype=torch.float64).reshape(1, -1)
    if values.shape[1] == 0:
        return 0.0
    return float(skewness_rows(values)[0])


# -- correlations ----------------------------------------------------------------------------------


def _correlation_inputs(x, y):
    """(x, y) as flat float64 arrays, or None where a correlation is undefined (n < 2, a constant side, non-finite)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"correlation of {len(x)} values with {len(y)} values")
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return x, y


def pearson(x, y) -> float:
    """Pearson's r (``scipy.stats.pearsonr``); NaN for fewer than 2 points, a constant side or non-finite values."""
    import scipy.stats

    pair = _correlation_inputs(x, y)
    return math.nan if pair is None else float(scipy.stats.pearsonr(*pair).statistic)


def spearman(x, y) -> float:
    """Spearman's ρ (``scipy.stats.spearmanr``: Pearson's r of the average ranks); NaN as :func:`pearson`."""
    import scipy.stats

    pair = _correlation_inputs(x, y)
    return math.nan if pair is None else float(scipy.stats.spearmanr(*pair).statistic)
