"""Center shift, x ↦ x − μ, with μ the mean of the vectors the transform is fit on.

The global form of the center shifting of Cai, Huang, Bian, Church, "Isotropy in the Contextual
Embedding Space: Clusters and Manifolds", ICLR 2021 (they shift each cluster to its own mean; see
``cluster_removal`` for a per-cluster map), and the first step of all-but-the-top (Mu & Viswanath,
ICLR 2018) and of whitening (Su et al., 2021). μ is exact from the streamed sum. What the transform
is fit on (the evaluation pool, as the papers do, or a separate corpus) is the caller's choice.
"""
from __future__ import annotations

from tokenuni.transforms.base import Transform


class CenterShift(Transform):
    name = "center_shift"
    _state_names = ("mean",)

    def __init__(self, device="cpu"):
        super().__init__(device)

    def _reset_statistics(self) -> None:
        self._sum = None
        self.mean = None

    def _accumulate(self, x) -> None:
        s = x.sum(dim=0)
        self._sum = s if self._sum is None else self._sum + s

    def _finalize(self) -> None:
        self.mean = self._sum / self.n_fit

    def _apply(self, x):
        return x - self.mean

    def summary(self) -> dict:
        import torch

        return {"n_fit": self.n_fit, "mean_norm": float(torch.linalg.vector_norm(self.mean))}

