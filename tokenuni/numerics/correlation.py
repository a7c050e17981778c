"""Correlations by scipy (the reference): :func:`pearson`, :func:`spearman`; NaN where undefined."""
from __future__ import annotations

import math

import numpy as np


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
