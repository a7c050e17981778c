"""The shared seeded sample: one streamed bottom-k sample per (seed, token set), with every layer's vectors."""
from __future__ import annotations

import numpy as np

from tokenuni.numerics import ReservoirSample, token_hash


class SharedSample:
    """A streamed bottom-k sample of one (seed, token set), with each sampled token's vector in every layer."""

    def __init__(self, size: int, seed: int, n_layers: int):
        self.size, self.seed, self.n_layers = int(size), int(seed), int(n_layers)
        self.keys = None
        self.columns: dict = {}
        self.vectors: list = []
        self.seen = 0

    def offer(self, rows: dict, layers: list) -> None:
        """``rows``: index tensors of the batch's tokens of this set (incl. ``row``, ``token``), ``layers``: their
        (n, d) float64 vectors per layer."""
        import torch

        keys = token_hash(self.seed, rows["sentence_id"], rows["position"])
        self.seen += len(keys)
        if self.keys is not None and len(self.keys) >= self.size:  # only tokens that can still enter
            threshold = torch.kthvalue(self.keys, self.size).values
            keep = keys < threshold
            if not bool(keep.any()):
                return
            keys = keys[keep]
            rows = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()]) for k, v in rows.items()}
            layers = [x[keep] for x in layers]
        layers = [x.to(torch.float32) for x in layers]  # exact: dump values are float32 / bfloat16 / float16
        if self.keys is None:
            self.keys, self.columns, self.vectors = keys, dict(rows), layers
        else:
            self.keys = torch.cat([self.keys, keys])
            self.columns = {k: (torch.cat([v, rows[k]]) if isinstance(v, torch.Tensor) else np.concatenate([v, rows[k]]))
                            for k, v in self.columns.items()}
            self.vectors = [torch.cat([a, b]) for a, b in zip(self.vectors, layers)]
        if len(self.keys) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        import torch

        if self.keys is None or len(self.keys) <= self.size:
            return
        keep = torch.topk(self.keys, self.size, largest=False).indices
        self.keys = self.keys[keep]
        self.columns = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()])
                        for k, v in self.columns.items()}
        self.vectors = [x[keep] for x in self.vectors]

    def state_dict(self, prefix: str) -> dict:
        import torch

        self._shrink()
        state = {f"{prefix}/size": np.asarray(self.size), f"{prefix}/seed": np.asarray(self.seed),
                 f"{prefix}/seen": np.asarray(self.seen)}
        if self.keys is None:
            return state
        order = torch.argsort(self.columns["sentence_id"] * 1_000_003 + self.columns["position"]).cpu()
        state[f"{prefix}/keys"] = self.keys.cpu()[order].numpy()
        for name, values in self.columns.items():
            values = values.cpu()[order].numpy() if isinstance(values, torch.Tensor) else values[order.numpy()]
            state[f"{prefix}/{name}"] = values
        for layer, x in enumerate(self.vectors):
            state[f"{prefix}/x/{layer}"] = x.cpu()[order].numpy()
        return state


def sample_for_layer(state, key: str, layer: int, device="cpu") -> ReservoirSample:
    """The shared sample of ``key`` at ``layer`` as a :class:`ReservoirSample` (the columns a SampledMetric reads)."""
    import torch

    prefix = f"sample/{key}"
    sample = ReservoirSample(int(state[f"{prefix}/size"]), int(state[f"{prefix}/seed"]))
    sample.seen = int(state[f"{prefix}/seen"])
    if f"{prefix}/keys" not in state:
        return sample

    def tensor(name, dtype):
        return torch.as_tensor(np.asarray(state[f"{prefix}/{name}"]), dtype=dtype, device=device)

    sample.keys = tensor("keys", torch.int64)
    sample.columns = {"sentence_id": tensor("sentence_id", torch.int64), "position": tensor("position", torch.int64),
                      "x": tensor(f"x/{layer}", torch.float64), "token_id": tensor("token_id", torch.int64),
                      "frequency": tensor("frequency", torch.int64)}
    return sample
