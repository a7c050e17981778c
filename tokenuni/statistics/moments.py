"""Per-layer moments of z = (x, f, log f, ‖x‖) of the regular and of the special tokens, and their file beside a dump."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenuni.numerics import MomentSums
from tokenuni.statistics.file import _load_npz, _save_npz, json_array, json_value

TOKEN_SETS = ("regular", "special")


# -- moments -----------------------------------------------------------------------------------------

def moment_rows(x, frequency):
    """z = (x, f, log f, ‖x‖) per token (float64): every second moment a metric or the projection uses is a
    block of z's moments (f = in-corpus frequency, log f with f clamped at 1)."""
    import torch

    f = frequency.to(torch.float64)[:, None]
    return torch.cat([x, f, f.clamp_min(1.0).log(), torch.linalg.vector_norm(x, dim=1, keepdim=True)], dim=1)


class LayerMoments:
    """Per layer, the moments of z (:func:`moment_rows`) of the regular and of the special tokens."""

    def __init__(self, n_layers: int, device="cpu"):
        self.n_layers = int(n_layers)
        self.device = device
        self.sums = {group: [MomentSums(device) for _ in range(self.n_layers)] for group in TOKEN_SETS}

    #: passes over the corpus it needs as a consumer of the embed stage (:func:`tokenuni.embed.embed_corpus`)
    reads = 1

    def update(self, index: dict, layers: list) -> None:
        """One batch of every layer (the embed stage's consumer protocol, see :meth:`Suite.update`)."""
        special = index["special"].bool()
        for layer, x in enumerate(layers):
            self.add(layer, x, index["frequency"], special)

    def add(self, layer: int, x, frequency, special) -> None:
        """Add one batch of a layer: ``x`` (n, d) float64, ``frequency`` (n,), ``special`` (n,) bool tensors."""
        z = moment_rows(x, frequency)
        regular = ~special
        if bool(regular.all()):
            self.sums["regular"][layer].update(z)
            return
        self.sums["regular"][layer].update(z[regular])
        if bool(special.any()):
            self.sums["special"][layer].update(z[special])

    def of(self, layer: int, token_set: str) -> MomentSums:
        """The moments of z over the regular tokens, or over all tokens (regular merged with special)."""
        regular = self.sums["regular"][layer]
        if token_set == "regular":
            return regular
        merged = MomentSums.from_state_dict(regular.state_dict(), regular.device) if regular.count else MomentSums()
        return merged.merge(self.sums["special"][layer])

    def hidden_size(self) -> int:
        dim = self.sums["regular"][0].dim
        return 0 if dim is None else dim - 3

    def state_dict(self) -> dict:
        return {f"moments/{group}/{layer}/{key}": value
                for group, layers in self.sums.items() for layer, sums in enumerate(layers) if sums.count
                for key, value in sums.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state, n_layers: int, device="cpu") -> LayerMoments:
        moments = cls(n_layers, device)
        for group in TOKEN_SETS:
            for layer in range(n_layers):
                prefix = f"moments/{group}/{layer}/"
                if prefix + "count" in state:
                    moments.sums[group][layer] = MomentSums.from_state_dict(
                        {k: state[prefix + k] for k in ("count", "shift", "mean", "scatter")}, device)
        return moments

    def save(self, path, metadata: dict | None = None) -> None:
        """Write ``<dump>.moments.npz`` (atomically), with the dump's row count to check it against."""
        arrays = {**self.state_dict(), "n_layers": np.asarray(self.n_layers),
                  "metadata.json": json_array(metadata or {})}
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path, device="cpu") -> tuple[LayerMoments, dict]:
        state = _load_npz(path)
        return cls.from_state_dict(state, int(state["n_layers"]), device), json_value(state["metadata.json"])


def moments_path(dump_path) -> Path:
    """Where the embed stage saves a dump's moments: ``<dump>.moments.npz`` beside it."""
    dump_path = Path(dump_path)
    return dump_path.with_name(dump_path.name + ".moments.npz")
