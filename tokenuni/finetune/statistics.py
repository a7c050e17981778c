"""Statistics of the fine-tuning study: is a variant better than the baseline, is the baseline better than
chance, and does isotropy go with the score — each with a 95 % interval and a plain verdict.

**The question.** A variant (SoftDecay, I-STAR, fusion, …) and the baseline are fine-tuned with the same
S seeds and scored on the same n dev examples. The quantity of interest is the expected difference of
the task's metric over training seeds, on the population of examples the dev set samples:
δ = E_seed E_dev[M(variant) − M(baseline)]. Two sources of noise blur it: which seeds were drawn (the
seed variance of fine-tuning is large on small GLUE tasks: Dodge et al., 2020, "Fine-Tuning Pretrained
Language Models: Weight Initializations, Data Orders, and Early Stopping"), and which examples the dev
set holds. Both must be in the interval (Bouthillier et al., MLSys 2021, "Accounting for Variance in
Machine Learning Benchmarks"; Sellam et al., ICLR 2022, "The MultiBERTs", whose *multi-bootstrap*
resamples seeds and examples together).

**The method** (:func:`seed_example_interval`). Let d_s be the paired difference of seed s on the whole
dev set and D̄ = mean_s d_s (the estimate). Seeds and examples are crossed (every seed is scored on
every example), so, with a seed effect a_s, a common example-sampling deviation e and a seed × example
interaction i_s, d_s = δ + a_s + e + i_s and

    Var(D̄) = σ²_a / S + σ²_e + σ²_i / S.

* The example part comes from the **paired bootstrap over dev examples** (Efron & Tibshirani 1993;
  Koehn, EMNLP 2004, "Statistical Significance Tests for Machine Translation Evaluation";
  Berg-Kirkpatrick et al., EMNLP 2012): B resamples of the n examples with replacement, the *same*
  resample for every seed and both arms (so the pairing is kept and non-additive metrics — F1, MCC,
  Pearson, Spearman — are recomputed on each resample). From the bootstrap variance of D̄ (V_mean ≈
  σ²_e + σ²_i/S) and the mean bootstrap variance of a single seed's d_s (V_one ≈ σ²_e + σ²_i):
  σ̂²_e = max(0, V_mean − (V_one − V_mean)/(S − 1)).
* The seed part is the between-seed sample variance s²_d of the d_s (ddof 1), which estimates
  σ²_a + σ²_i on this dev set: the seed term is s²_d / S.
* SE = √(σ̂²_e + s²_d/S); the interval is D̄ ± t_{0.975, ν} · SE with Welch–Satterthwaite degrees of
  freedom ν = SE⁴ / ((s²_d/S)² / (S − 1)) (Satterthwaite, 1946; the example part, from n ≫ S examples,
  counts as exact). With 3 seeds and seed noise dominating, ν → 2 and t = 4.30: honest about what
  three seeds can show.

Why not the plain multi-bootstrap over seeds too: resampling S = 3 seeds with replacement shrinks the
seed variance by (S − 1)/S and takes a normal quantile where a t with S − 1 degrees of freedom is due,
so its intervals cover far less than 95 % when seeds dominate (the coverage test in
``tests/test_finetune_statistics.py`` shows both regimes at about the nominal rate for this method).
With a single seed the seed term cannot be estimated: the interval is the example part alone and the
result says ``seeds = 1``.

**Verdicts** (:func:`verdict`): "better" when the interval lies above 0, "worse" when below, "no
evidence" when it contains 0 (identical runs give D̄ = 0 and SE = 0: "no evidence"). No correction
for the many comparisons of a study: a table of 5 tasks × 4 variants has 20 intervals, about one of
which excludes 0 by chance alone when nothing works; the report says so.

**Chance** (:func:`chance_predictions`): the majority class of the *training* labels predicted for every
dev example (accuracy: the majority rate; MRPC F1: always "paraphrase", 81.2 on dev), MCC 0 (a constant
predictor), correlation 0 (STS-B). The baseline's difference to the chance arm uses the same interval.

**Isotropy vs score** (:func:`rank_correlation`): Spearman's ρ across runs between the last layer's
isotropy and the dev score. Pooled over several (model, task) strata it is the correlation of the
within-stratum centred ranks, so differences between tasks (scales) and models do not make a relation:
with strata of equal size it is the mean of the per-stratum ρ. Interval: Fisher's z with Bonett &
Wright's variance for Spearman's ρ (Psychometrika 2000, "Sample size requirements for estimating
Pearson, Kendall and Spearman correlations"): z = atanh ρ ± 1.96 · √((1 + ρ²/2) / (N − 3 − k)), k =
strata − 1 (the strata are controlled for, as in a partial correlation). Runs are treated as
independent; runs of one variant share its intervention, so this measures association, not cause.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 1000
VERDICTS = ("better", "worse", "no evidence")


# -- metrics, vectorised over leading axes -----------------------------------------------------------
def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r over the last axis; NaN where a side is constant (as scipy.stats.pearsonr)."""
    constant = (np.ptp(x, axis=-1) == 0) | (np.ptp(y, axis=-1) == 0)
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    return np.where(constant, np.nan, np.clip(r, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def batched_metric(name: str, predictions, labels) -> np.ndarray:
    """A GLUE metric of :func:`tokenuni.glue.glue_metrics` over the last axis, for every leading index.

    ``predictions`` (…, n): class ids (or scores for ``pearson`` / ``spearman`` /
    ``pearson_spearman_mean``); ``labels`` (…, n) or (n,), broadcast. Same definitions and edge cases
    as :mod:`tokenuni.glue` (F1 of class 1, 0 without positives; MCC 0 when undefined; correlations NaN
    when a side is constant), so ``batched_metric(m, p, y)`` equals ``glue_metrics(task, p, y)[m]`` for 1-D
    inputs; vectorised because the bootstrap evaluates it on thousands of resamples at once.
    """
    predictions = np.asarray(predictions)
    labels = np.broadcast_to(np.asarray(labels), predictions.shape)
    if name == "accuracy":
        return (predictions == labels).mean(axis=-1)
    if name == "f1":
        p, y = predictions == 1, labels == 1
        tp, fp, fn = (p & y).sum(axis=-1), (p & ~y).sum(axis=-1), (~p & y).sum(axis=-1)
        denominator = 2 * tp + fp + fn
        return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    if name == "matthews_corrcoef":
        classes = np.union1d(np.unique(predictions), np.unique(labels))
        n = float(predictions.shape[-1])
        correct = (predictions == labels).sum(axis=-1).astype(np.float64)
        t_sum = np.stack([(labels == c).sum(axis=-1) for c in classes]).astype(np.float64)
        p_sum = np.stack([(predictions == c).sum(axis=-1) for c in classes]).astype(np.float64)
        cov_ytyp = correct * n - (t_sum * p_sum).sum(axis=0)
        cov_ypyp = n * n - (p_sum * p_sum).sum(axis=0)
        cov_ytyt = n * n - (t_sum * t_sum).sum(axis=0)
        denominator = cov_ypyp * cov_ytyt
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, cov_ytyp / np.sqrt(np.maximum(denominator, 1e-300)), 0.0)
    x, y = predictions.astype(np.float64), labels.astype(np.float64)
    if name == "pearson":
        return _pearson(x, y)
    if name == "spearman":
        return _pearson(_ranks(x), _ranks(y))
    if name == "pearson_spearman_mean":
        return (_pearson(x, y) + _pearson(_ranks(x), _ranks(y))) / 2
    raise ValueError(f"unknown metric {name!r}; known: accuracy, f1, matthews_corrcoef, pearson, spearman, "
                     "pearson_spearman_mean")


# -- chance ------------------------------------------------------------------------------------------
CORRELATION_METRICS = ("pearson", "spearman", "pearson_spearman_mean")
#: the range of each metric (an interval of a mean score is clipped to it)
METRIC_RANGES = {"accuracy": (0.0, 1.0), "f1": (0.0, 1.0), "matthews_corrcoef": (-1.0, 1.0),
                 **{name: (-1.0, 1.0) for name in CORRELATION_METRICS}}


def majority_class(train_labels) -> int:
    """The most frequent class id of the training labels (the smallest id on a tie)."""
    values, counts = np.unique(np.asarray(train_labels).astype(np.int64), return_counts=True)
    return int(values[np.argmax(counts)])


def chance_predictions(metric: str, majority: int | None, n: int) -> np.ndarray | None:
    """The chance predictor's dev predictions: the training majority class for every example; ``None``
    for a correlation metric (a prediction unrelated to the labels: chance level 0 by definition)."""
    if metric in CORRELATION_METRICS:
        return None
    if majority is None:
        raise ValueError(f"metric {metric!r}: the chance level needs the training set's majority class")
    return np.full(n, int(majority), dtype=np.int64)


def chance_level(metric: str, majority: int | None, labels) -> float:
    """The chance predictor's metric on ``labels`` (see :func:`chance_predictions`)."""
    labels = np.asarray(labels)
    predictions = chance_predictions(metric, majority, len(labels))
    return 0.0 if predictions is None else float(batched_metric(metric, predictions, labels))


# -- intervals ---------------------------------------------------------------------------------------
@dataclass
class Interval:
    """An estimate over seeds with its interval (see the module docstring)."""

    estimate: float  #: mean over seeds of the statistic on the whole dev set
    low: float
    high: float
    se: float
    df: float  #: Welch–Satterthwaite degrees of freedom (inf: the example part alone)
    seeds: int
    sd_seeds: float  #: standard deviation over seeds (ddof 1; NaN for one seed)
    example_variance: float  #: σ̂²_e
    seed_variance: float  #: s²_d / S (NaN for one seed)
    bootstrap_dropped: int  #: resamples without a defined value (e.g. a constant side of a correlation)

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def seed_example_interval(full: np.ndarray, boot: np.ndarray, level: float = LEVEL,
                          bounds: tuple[float, float] | None = None) -> Interval:
    """Interval of the mean over seeds from per-seed values on the whole dev set and on bootstrap resamples.

    ``full``: (S,) the statistic per seed on the whole dev set; ``boot``: (B, S) the same on B paired
    resamples of the dev examples (one resample per row, the same for every seed). See the module
    docstring for the variance decomposition, the t quantile and its degrees of freedom. ``bounds``: the
    range of the statistic (e.g. (0, 1) for an accuracy): the interval is clipped to it.
    """
    from scipy.stats import t as student_t

    full = np.asarray(full, dtype=np.float64)
    boot = np.asarray(boot, dtype=np.float64).reshape(-1, full.size)
    if full.ndim != 1 or not full.size:
        raise ValueError("full must be a non-empty vector of per-seed values")
    if not np.isfinite(full).all():
        raise ValueError(f"per-seed values must be finite, got {full.tolist()}")
    kept = np.isfinite(boot).all(axis=1)
    dropped = int((~kept).sum())
    boot = boot[kept]
    if len(boot) < 2:
        raise ValueError(f"fewer than 2 of {len(kept)} bootstrap resamples have a defined value")
    seeds = full.size
    estimate = float(full.mean())
    v_mean = float(boot.mean(axis=1).var(ddof=1))
    if seeds == 1:
        example_variance, seed_variance, sd = v_mean, math.nan, math.nan
        variance, df = v_mean, math.inf
    else:
        v_one = float(boot.var(axis=0, ddof=1).mean())
        example_variance = max(0.0, v_mean - (v_one - v_mean) / (seeds - 1))
        sd = float(full.std(ddof=1))
        seed_variance = sd * sd / seeds
        variance = example_variance + seed_variance
        df = variance * variance / (seed_variance * seed_variance / (seeds - 1)) if seed_variance > 0 else math.inf
    se = math.sqrt(variance)
    half = float(student_t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    low, high = estimate - half, estimate + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(estimate, low, high, se, df, seeds, sd, example_variance, seed_variance, dropped)


def verdict(low: float, high: float) -> str:
    """"better" (interval above 0), "worse" (below 0) or "no evidence" (it contains 0)."""
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no evidence"


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices of paired resamples of n dev examples, with replacement (seeded)."""
    if n < 2:
        raise ValueError(f"the bootstrap needs at least 2 dev examples, got {n}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


class PairedBootstrap:
    """Metric values of several arms (variants and chance) on the same bootstrap resamples of one dev set.

    ``labels``: (n,) dev labels; ``metric``: the task's main metric name (:func:`batched_metric`).
    :meth:`values` gives, for an arm's (S, n) predictions, its (S,) values on the whole dev set and
    its (B, S) values on the resamples; every arm uses the same resamples (common random numbers), so
    differences are paired over examples as well as seeds.
    """

    def __init__(self, metric: str, labels, n_boot: int = N_BOOT, seed: int = 0, chunk: int = 200):
        self.metric = metric
        self.labels = np.asarray(labels)
        self.index = bootstrap_indices(len(self.labels), n_boot, seed)
        self.chunk = chunk
        self._resampled_labels = self.labels[self.index]

    def values(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        predictions = np.atleast_2d(np.asarray(predictions))
        if predictions.shape[-1] != len(self.labels):
            raise ValueError(f"{predictions.shape[-1]} predictions per seed for {len(self.labels)} dev labels")
        full = batched_metric(self.metric, predictions, self.labels)
        boot = np.empty((len(self.index), len(predictions)))
        for start in range(0, len(self.index), self.chunk):  # bounded memory: chunk × S × n
            rows = slice(start, start + self.chunk)
            boot[rows] = batched_metric(self.metric, predictions[:, self.index[rows]].transpose(1, 0, 2),
                                        self._resampled_labels[rows, None, :]).reshape(-1, len(predictions))
        return full, boot

    def chance_values(self, majority: int | None, seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """The chance arm (see :func:`chance_predictions`) repeated for ``seeds`` seeds."""
        predictions = chance_predictions(self.metric, majority, len(self.labels))
        if predictions is None:
            return np.zeros(seeds), np.zeros((len(self.index), seeds))
        return self.values(np.repeat(predictions[None], seeds, axis=0))


def compare(metric: str, labels, variant, baseline, n_boot: int = N_BOOT, seed: int = 0,
            level: float = LEVEL) -> dict:
    """Paired comparison of a variant with the baseline: both (S, n) predictions of the same seeds (rows
    in the same order) on the same dev examples. Returns the variant's and the baseline's mean, sd and
    interval over seeds, the difference with its interval and the verdict."""
    variant, baseline = np.atleast_2d(variant), np.atleast_2d(baseline)
    if variant.shape != baseline.shape:
        raise ValueError(f"variant predictions {variant.shape} and baseline predictions {baseline.shape} differ "
                         "in seeds or dev examples")
    bootstrap = PairedBootstrap(metric, labels, n_boot, seed)
    v_full, v_boot = bootstrap.values(variant)
    b_full, b_boot = bootstrap.values(baseline)
    difference = seed_example_interval(v_full - b_full, v_boot - b_boot, level)
    bounds = METRIC_RANGES.get(metric)
    return {**seed_example_interval(v_full, v_boot, level, bounds).as_dict("variant_"),
            **seed_example_interval(b_full, b_boot, level, bounds).as_dict("baseline_"),
            **difference.as_dict("difference_"), "verdict": verdict(difference.low, difference.high)}


# -- isotropy vs score ---------------------------------------------------------------------------------
def rank_correlation(x, y, strata=None, level: float = LEVEL) -> dict:
    """Spearman's ρ of ``x`` and ``y`` (within ``strata`` when given) with a Fisher-z interval.

    See the module docstring. Returns ``rho``, ``low``, ``high``, ``n`` (runs), ``strata``, ``verdict``
    ("positive", "negative", "no evidence", or "too few runs" when N − 3 − k < 1 or a side is constant).
    """
    from scipy.stats import norm, rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be vectors of the same length")
    strata = np.zeros(len(x), dtype=np.int64) if strata is None else np.asarray(strata)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, strata = x[keep], y[keep], strata[keep]
    rx, ry = np.empty_like(x), np.empty_like(y)
    groups = [np.flatnonzero(strata == s) for s in dict.fromkeys(strata.tolist())]
    groups = [g for g in groups if len(g) >= 2]
    for g in groups:
        rx[g] = rankdata(x[g]) - (len(g) + 1) / 2
        ry[g] = rankdata(y[g]) - (len(g) + 1) / 2
    used = np.concatenate(groups) if groups else np.empty(0, dtype=np.int64)
    n, k = len(used), max(0, len(groups) - 1)
    out = {"rho": math.nan, "low": math.nan, "high": math.nan, "n": n, "strata": len(groups),
           "verdict": "too few runs"}
    if n - 3 - k < 1:
        return out
    a, b = rx[used], ry[used]
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    if denominator == 0:
        return out
    rho = float(np.clip((a * b).sum() / denominator, -1.0, 1.0))
    half = norm.ppf(0.5 + level / 2) * math.sqrt((1 + rho * rho / 2) / (n - 3 - k))
    z = math.atanh(min(max(rho, -0.999999), 0.999999))
    low, high = math.tanh(z - half), math.tanh(z + half)
    out.update(rho=rho, low=low, high=high,
               verdict="positive" if low > 0 else "negative" if high < 0 else "no evidence")
    return out


def correlation_statement(result: dict, what: str) -> str:
    """One plain sentence on a :func:`rank_correlation` result, e.g. for the report."""
    if result["verdict"] == "too few runs":
        return f"{what}: too few runs ({result['n']}) for an interval."
    interval = f"ρ = {result['rho']:+.2f} [{result['low']:+.2f}, {result['high']:+.2f}], {result['n']} runs"
    if result["verdict"] == "no evidence":
        return f"{what}: no evidence of a relation ({interval}; the interval contains 0)."
    return f"{what}: the data support a {result['verdict']} relation ({interval})."
