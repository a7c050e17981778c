"""Seeded k-means: :func:`kmeans` (k-means++ seeding, Lloyd, best of ``n_init`` restarts), :func:`kmeans_runs`
(many (key, k) runs batched on the same points), :func:`kmeans_plusplus` and :func:`squared_distances`.

(The module is ``clustering``, not ``kmeans``: a submodule named as the function it exports would make
``tokenuni.numerics.kmeans`` mean the module or the function depending on how it is imported.)
"""
from __future__ import annotations

import math

from tokenuni.numerics.sampling import seeded_generator


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
    k-means++ draws, same Lloyd rules), but the runs advance together: per k, one matrix product gives the
    distances of every point to the centres of every moving run (C xᵀ with C the stacked centres, instead of one
    thin product per run; float32, checked, :func:`_nearest_two`), the centre sums change by one sparse product
    with the points that changed cluster, and the k-means++ candidates of all runs are scored by one product per
    seeding step.
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
    """Lloyd's iterations of several runs (:func:`kmeans`'s rules), batched: the runs of equal k form one group,
    assigned, counted and compared as one (runs, k) block with one distance product per iteration (float32, checked,
    see :func:`_nearest_two`). A run that stops leaves its group, so every array of a group is that of its moving
    runs and is updated in place. The centre sums come from one product with the stacked one-hot labels in the first
    iteration; after it, only the points that changed cluster move their vector from one sum to the other.

    Distances are skipped where they cannot change an assignment (Hamerly, "Making k-means even faster", SDM 2010):
    per run and point an upper bound u on the distance to its centre and a lower bound l on the distance to any
    other; after the centres move by δ, u += δ(own centre), l −= the largest δ of the other centres, and only the
    points with u ≥ l − margin (margin 10⁻⁶ of the data's scale, far above the rounding of the distances) get a new
    row of distances. A point that is skipped provably keeps the centre the full argmin would give it. Returns
    (labels, centres, inertia) per run."""
    import torch

    n, dim, device = x.shape[0], x.shape[1], x.device
    norm = torch.sqrt(x_sq)
    margin = 1e-6 * (float(norm.max()) if n else 1.0)
    x32 = x.to(torch.float32) if float32_products_are_ieee(device) else None
    members: dict[int, list[int]] = {}
    for r, c in enumerate(centers):
        members.setdefault(int(c.shape[0]), []).append(r)
    groups = [_LloydGroup(k, runs, torch.stack([centers[r] for r in runs])) for k, runs in members.items()]
    final: list = [None] * len(centers)
    for iteration in range(max(int(max_iter), 0)):
        groups = [group for group in groups if group.runs]
        if not groups:
            break
        changes = []
        for group in groups:
            k, runs = group.k, len(group.runs)
            points = None if group.labels is None else \
                torch.nonzero((group.upper >= group.lower - margin).any(dim=0)).flatten()  # the bounds do not settle
            if points is not None and len(points) > 0.9 * n:
                points = None  # nearly all: every row, without gathering them (fresh distances are valid bounds too)
            found, nearest, second = _nearest_two(x, x32, x_sq, norm, points, group.centers.view(-1, dim), runs, k)
            if group.labels is None:
                assigned = found
                group.upper = nearest if nearest is not None else torch.zeros((runs, n), dtype=x.dtype, device=device)
                group.lower = second if second is not None else torch.full_like(group.upper, math.inf)
            elif points is None:
                assigned = found
                if nearest is not None:
                    group.upper, group.lower = nearest, second
            else:
                assigned = group.labels.clone()
                assigned[:, points] = found
                if nearest is not None:
                    group.upper[:, points], group.lower[:, points] = nearest, second
            counts = torch.bincount((torch.arange(runs, device=device)[:, None] * k + assigned).flatten(),
                                    minlength=runs * k).view(runs, k)
            for i in torch.nonzero((counts == 0).any(dim=1)).flatten().tolist():
                counts[i] = _reseed_empty(x, x_sq, group.centers[i], assigned[i], counts[i])
                group.upper[i], group.lower[i] = math.inf, -math.inf  # bounds void: every distance next time
            changes.append((assigned, counts))
        if iteration == 0:  # every run's centre sums by one product with the stacked one-hot labels
            onehot = torch.zeros((n, sum(len(group.runs) * group.k for group in groups)), dtype=x.dtype, device=device)
            offset = 0
            for group, (assigned, _) in zip(groups, changes):
                width = len(group.runs) * group.k
                onehot[:, offset:offset + width].view(n, len(group.runs), group.k).scatter_(2, assigned.T[:, :, None], 1.0)
                offset += width
            sums, offset = onehot.T @ x, 0
            for group in groups:
                width = len(group.runs) * group.k
                group.sums = sums[offset:offset + width].view(len(group.runs), group.k, dim).clone()
                offset += width
        else:  # only the points that changed cluster move their vector between two sums
            for group, (assigned, _) in zip(groups, changes):
                group.move_points(x, assigned)
        for group, (assigned, counts) in zip(groups, changes):
            old = group.centers
            new = torch.where(counts[:, :, None] > 0, group.sums / counts.clamp_min(1)[:, :, None].to(x.dtype), old)
            step = new - old
            shift = (step ** 2).sum(dim=(1, 2))
            moved = torch.linalg.vector_norm(step, dim=2)  # (R, k): how far each centre moved
            group.centers = new
            group.upper += moved.gather(1, assigned)
            if group.k >= 2:
                # the nearest other centre came at most as close as the farthest any other centre moved (Hamerly's
                # update: the largest move, or the second largest for the points of the centre that moved most)
                top = torch.topk(moved, 2, dim=1).values
                farthest = torch.argmax(moved, dim=1)
                group.lower -= torch.where(assigned == farthest[:, None], top[:, 1:2], top[:, 0:1])
            converged = torch.zeros(len(group.runs), dtype=torch.bool, device=device) if group.labels is None \
                else (group.labels == assigned).all(dim=1)
            group.labels = assigned
            group.keep((~(converged | (shift <= tol))).tolist(), final)
    for group in groups:
        group.keep([False] * len(group.runs), final)
    distances = squared_distances(x, torch.cat(final), x_sq)
    results, offset = [], 0
    for centres in final:
        block = distances[:, offset:offset + centres.shape[0]]
        offset += centres.shape[0]
        assigned = torch.argmin(block, dim=1)
        results.append((assigned, centres, float(block.gather(1, assigned[:, None]).sum())))
    return results


def _reseed_empty(x, x_sq, centres, assigned, counts):
    """Give each emptied cluster of one run the point farthest from its centre (every distance of the run, in
    float64): ``assigned`` is rewritten in place; returns the new counts."""
    import torch

    k, n = centres.shape[0], x.shape[0]
    empty = torch.nonzero(counts == 0).flatten()
    full = torch.addmm((centres * centres).sum(dim=1)[None, :], x, centres.T, alpha=-2.0)
    column = torch.argmin(full, dim=1)
    own = (full.gather(1, column[:, None])[:, 0] + x_sq).clamp_min(0.0)
    far = torch.topk(own, min(len(empty), n)).indices
    column[far] = empty[:len(far)]
    assigned[:] = column
    return torch.bincount(column, minlength=k)


class _LloydGroup:
    """The moving runs of one k in :func:`_lloyd_runs`: ``runs`` (their indices), ``centers`` and ``sums``
    (R, k, d), ``labels``, ``upper`` and ``lower`` (R, n)."""

    def __init__(self, k: int, runs: list, centers):
        self.k, self.runs, self.centers = k, list(runs), centers
        self.sums = self.labels = self.upper = self.lower = None

    def move_points(self, x, assigned) -> None:
        """Update the centre sums for the points whose label changed from ``labels`` to ``assigned``."""
        import torch

        run, point = torch.nonzero(self.labels != assigned, as_tuple=True)
        n, width = x.shape[0], len(self.runs) * self.k
        if len(run) > 4 * n:  # most moved: one product with the one-hot labels is cheaper than the sparse one
            onehot = torch.zeros((n, width), dtype=x.dtype, device=x.device)
            onehot.view(n, len(self.runs), self.k).scatter_(2, assigned.T[:, :, None], 1.0)
            self.sums = (onehot.T @ x).view(len(self.runs), self.k, -1)
        elif len(run):  # Δsums = M x, M (runs·k, n) sparse: +1 at (new cluster, point), −1 at (old cluster, point)
            index = torch.stack([torch.cat([run * self.k + assigned[run, point], run * self.k + self.labels[run, point]]),
                                 torch.cat([point, point])])
            signs = torch.ones(2 * len(run), dtype=x.dtype, device=x.device)
            signs[len(run):] = -1.0
            change = torch.sparse_coo_tensor(index, signs, (width, n), check_invariants=False)
            self.sums += torch.sparse.mm(change, x).view(len(self.runs), self.k, -1)

    def keep(self, moving: list[bool], final: list) -> None:
        """Keep the runs still ``moving``; the others' centres go to ``final`` (by run index)."""
        if all(moving):
            return
        for run, go_on, centres in zip(self.runs, moving, self.centers):
            if not go_on:
                final[run] = centres
        rows = [i for i, go_on in enumerate(moving) if go_on]
        self.runs = [self.runs[i] for i in rows]
        for name in ("centers", "sums", "labels", "upper", "lower"):
            setattr(self, name, getattr(self, name)[rows])


def float32_products_are_ieee(device) -> bool:
    """Whether float32 matrix products on ``device`` round as IEEE float32 (not TF32 or bfloat16, which a user may
    switch on with ``torch.set_float32_matmul_precision`` or the ``fp32_precision`` backends): the error bound of
    :func:`_nearest_two` holds only then."""
    import torch

    if torch.get_float32_matmul_precision() != "highest":
        return False
    device = torch.device(device)
    backends = [torch.backends, torch.backends.cuda.matmul if device.type == "cuda"
                else getattr(torch.backends.mkldnn, "matmul", None)]
    if any(getattr(backend, "fp32_precision", "none") not in ("none", "ieee") for backend in backends if backend):
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


def _nearest_two(x, x32, x_sq, norm, points, stacked, n_runs: int, k: int):
    """The nearest centre of each point of ``points`` (None: every point) in each of ``n_runs`` runs of k centres
    (``stacked``: their (n_runs·k, d) centres), with an upper bound on the distance to it and a lower bound on the
    distance to every other centre of its run: (found, upper, lower), each (n_runs, m); the bounds None when k = 1.

    ‖x − c‖² = ‖x‖² + (‖c‖² − 2 c·x): the argmin over c is that of ‖c‖² − 2 c·x, one fused product for all the runs,
    laid out (runs, k, points) so that the reductions over k run along contiguous rows of points.

    With ``x32`` (x in float32; None: float64 throughout) the product is taken in float32 and checked against its
    error bound. Each float32 value differs from the exact one by at most E = (2d + 16)·u·(‖x‖‖c‖ + ‖c‖²),
    u = 2⁻²⁴ (the rounding of x, c and ‖c‖² to float32, the d-term dot product, γ_d ≤ d·u/(1 − d·u) in any
    summation order, and the final rounding; Higham, "Accuracy and Stability of Numerical Algorithms", 2002, §3.1),
    taken with the largest centre norm of the run. Where the second-nearest value exceeds the nearest by more than
    2E the float32 argmin is the exact argmin, so it is the float64 one; every other (run, point), ties included,
    is evaluated again in float64 (first centre on ties, as ``argmin``). The bounds widen by E, so they stay
    bounds. The labels are those of float64 products; only the cost changes (float32 products run 2–3× faster).
    """
    import torch

    subset_sq = x_sq if points is None else x_sq[points]
    c_sq = (stacked * stacked).sum(dim=1)
    if x32 is None:
        block = torch.addmm(c_sq[:, None], stacked, (x if points is None else x[points]).T, alpha=-2.0)
        block = block.view(n_runs, k, -1)
        if k < 2 or not block.shape[2]:
            return torch.argmin(block, dim=1), None, None
        found, nearest, second = _first_two(block)
        return found, (nearest + subset_sq).clamp_min(0.0).sqrt(), (second + subset_sq).clamp_min(0.0).sqrt()
    block = torch.addmm(c_sq.to(torch.float32)[:, None], stacked.to(torch.float32),
                        (x32 if points is None else x32[points]).T, alpha=-2.0).view(n_runs, k, -1)
    if k < 2 or not block.shape[2]:
        return torch.argmin(block, dim=1), None, None
    # the smallest value, which centres reach it, and the smallest of the others: reductions over the middle axis
    # (amin, sum) are fast where argmin over a short axis is not; a tie is a near tie and is evaluated again below
    nearest = block.amin(dim=1)
    at_min = block == nearest[:, None]
    second = block.masked_fill(at_min, float("inf")).amin(dim=1).to(x.dtype)
    at_min = at_min.to(torch.float32)  # sums of small integers, exact in float32
    found = (at_min * torch.arange(k, device=block.device, dtype=torch.float32)[None, :, None]).sum(dim=1).long()
    ties = at_min.sum(dim=1) > 1
    nearest = nearest.to(x.dtype)
    center_norm = c_sq.sqrt().view(n_runs, k).max(dim=1).values
    error = (2 * x.shape[1] + 16) * 2.0 ** -24 * (center_norm[:, None] * (norm if points is None else norm[points])
                                                 + (center_norm * center_norm)[:, None])  # (n_runs, m)
    unsure = ~(second - nearest > 2.0 * error) | ties  # a float32 overflow (inf − inf = nan) is unsure too
    if bool(unsure.any()):  # near ties: these (run, point) again in float64
        run, where = torch.nonzero(unsure, as_tuple=True)
        columns, inverse = torch.unique(where, return_inverse=True)
        exact = torch.addmm(c_sq[:, None], stacked, x[columns if points is None else points[columns]].T, alpha=-2.0)
        exact = exact.view(n_runs, k, -1)[run, :, inverse]  # (unsure, k)
        found[run, where], nearest[run, where], second[run, where] = _first_two(exact)
        error[run, where] = 0.0
    return found, (nearest + subset_sq + error).clamp_min(0.0).sqrt(), \
        (second + subset_sq - error).clamp_min(0.0).sqrt()


def _first_two(values):
    """Along dimension 1: the index of the smallest value (the first on ties, as ``argmin``), the smallest value
    and the smallest of the others."""
    import torch

    found = torch.argmin(values, dim=1)
    return found, values.gather(1, found[:, None]).squeeze(1), values.scatter(1, found[:, None], float("inf")).amin(dim=1)
