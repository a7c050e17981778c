"""Streamed and in-memory moments: :class:`MomentSums` (count, mean, centred scatter, uncentred Gram, exact
to rounding however large the mean is against the spread), :func:`outer` and :func:`sample_covariance`.

Accumulation is float64 on the tensors' device (CUDA or CPU: the same numbers to rounding).
"""
from __future__ import annotations

import numpy as np


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
