"""Population skewness, the one definition (:func:`skewness`, :func:`skewness_rows`, as ``scipy.stats.skew``),
and the rule by which a set of values counts as constant up to rounding (:func:`constant_up_to_rounding`)."""
from __future__ import annotations

import numpy as np

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
