"""Seeded sampling, independent of batching: :func:`token_hash` (splitmix64 of (sentence_id, position)),
:class:`ReservoirSample` (bottom-k sample of a stream) and :func:`seeded_generator` (a torch generator seeded from
integers)."""
from __future__ import annotations

import numpy as np

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
