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
