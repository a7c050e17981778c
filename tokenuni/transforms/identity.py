"""The identity, x ↦ x: the baseline row of a transform comparison.

It is "fit" like every other transform (the fit only records the dimension d and the number of
vectors), so a pipeline treats the baseline exactly as the real transforms and the same errors
apply (transform before fit, dimension mismatch). What it is fit on is irrelevant to the output.
"""
from __future__ import annotations

from tokenuni.transforms.base import Transform


class Identity(Transform):
    name = "identity"

    def __init__(self, device="cpu"):
        super().__init__(device)

    def _reset_statistics(self) -> None:
        pass

    def _accumulate(self, x) -> None:
        pass

    def _finalize(self) -> None:
        pass

    def _apply(self, x):
        return x.clone()

    def summary(self) -> dict:
        return {"n_fit": self.n_fit, "dim": self.dim}
