"""The fine-tuning study's statistics (tokenuni.finetune.statistics): metrics against glue/scipy, the
interval against hand computation, its coverage on simulated benchmarks with a known effect, verdicts,
chance levels and the isotropy rank correlation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from tokenuni.finetune import statistics as st
from tokenuni.glue import glue_metrics

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("task, metric", [("sst2", "accuracy"), ("mrpc", "f1"), ("cola", "matthews_corrcoef"),
                                          ("stsb", "pearson"), ("stsb", "spearman"),
                                          ("stsb", "pearson_spearman_mean")])
def test_batched_metric_equals_glue_metrics_row_by_row(task, metric):
    labels = RNG.integers(0, 2, 60) if task != "stsb" else np.round(RNG.uniform(0, 5, 60), 1)
    if task == "stsb":
        predictions = labels + RNG.normal(0, 2, (5, 60))
        predictions[1, :] = np.round(predictions[1, :])  # ties in the ranks
    else:
        predictions = np.where(RNG.random((5, 60)) < 0.7, labels, 1 - labels)
        predictions[2] = 1  # a constant predictor: MCC 0, F1 of always-positive
    batched = st.batched_metric(metric, predictions, labels)
    expected = [glue_metrics(task, row, labels)[metric] for row in predictions]
    np.testing.assert_allclose(batched, expected, rtol=1e-12, atol=1e-12)


def test_batched_correlations_equal_scipy_and_nan_when_constant():
    x, y = RNG.normal(size=(4, 30)), RNG.normal(size=30)
    np.testing.assert_allclose(st.batched_metric("pearson", x, y), [scipy.stats.pearsonr(r, y)[0] for r in x])
    np.testing.assert_allclose(st.batched_metric("spearman", x, y), [scipy.stats.spearmanr(r, y)[0] for r in x])
    assert math.isnan(st.batched_metric("pearson", np.ones(30), y))
    assert math.isnan(st.batched_metric("spearman", y, np.full(30, 2.5)))


def test_multiclass_mcc_matches_the_gorodkin_formula():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    predictions = np.array([0, 2, 1, 0, 1, 2, 0, 0])
    # by hand: confusion rows = truth, columns = prediction
    c = np.zeros((3, 3))
    np.add.at(c, (labels, predictions), 1)
    n, correct, t, p = c.sum(), np.trace(c), c.sum(1), c.sum(0)
    expected = (correct * n - t @ p) / math.sqrt((n * n - p @ p) * (n * n - t @ t))
    assert st.batched_metric("matthews_corrcoef", predictions, labels) == pytest.approx(expected)


def test_interval_by_hand():
    full = np.array([0.10, 0.20, 0.30])
    boot = np.array([[0.12, 0.18, 0.33], [0.08, 0.22, 0.27], [0.11, 0.19, 0.31], [0.09, 0.21, 0.29]])
    result = st.seed_example_interval(full, boot)
    v_mean = np.var(boot.mean(axis=1), ddof=1)
    v_one = np.var(boot, axis=0, ddof=1).mean()
    example = max(0.0, v_mean - (v_one - v_mean) / 2)
    seed = np.var(full, ddof=1) / 3
    se = math.sqrt(example + seed)
    df = se ** 4 / (seed ** 2 / 2)
    half = scipy.stats.t.ppf(0.975, df) * se
    assert result.estimate == pytest.approx(0.2)
    assert (result.low, result.high) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert result.df == pytest.approx(df) and result.sd_seeds == pytest.approx(0.1)
    assert result.seeds == 3 and result.bootstrap_dropped == 0


def test_one_seed_uses_the_example_part_with_a_normal_quantile():
    boot = RNG.normal(0.5, 0.02, size=(500, 1))
    result = st.seed_example_interval(np.array([0.5]), boot)
    assert math.isinf(result.df) and math.isnan(result.sd_seeds)
    assert result.high - result.estimate == pytest.approx(1.959964 * boot.std(ddof=1), rel=1e-5)


def test_identical_runs_give_no_evidence_and_a_zero_interval():
    labels = RNG.integers(0, 2, 200)
    predictions = np.where(RNG.random((3, 200)) < 0.8, labels, 1 - labels)
    for metric in ("accuracy", "f1", "matthews_corrcoef"):
        result = st.compare(metric, labels, predictions, predictions.copy(), n_boot=200)
        assert result["verdict"] == "no evidence"
        assert result["difference_estimate"] == result["difference_low"] == result["difference_high"] == 0


def test_a_clear_improvement_is_better_and_a_clear_loss_worse():
    labels = RNG.integers(0, 2, 400)
    weak = np.where(RNG.random((3, 400)) < 0.6, labels, 1 - labels)
    strong = np.where(RNG.random((3, 400)) < 0.9, labels, 1 - labels)
    assert st.compare("accuracy", labels, strong, weak, n_boot=300)["verdict"] == "better"
    assert st.compare("accuracy", labels, weak, strong, n_boot=300)["verdict"] == "worse"


def test_mismatched_runs_are_refused():
    with pytest.raises(ValueError, match="differ in seeds or dev examples"):
        st.compare("accuracy", np.zeros(10), np.zeros((3, 10)), np.zeros((2, 10)))


def _simulated_coverage(tau_common: float, tau_arm: float, replications: int = 300, seeds: int = 3,
                        n: int = 400, n_boot: int = 200) -> float:
    """Share of 95 % intervals that contain the true difference of expected accuracy.

    Probit model: example i of difficulty z_i ~ N(0, 1) (a new dev set per replication), seed s shifts
    both arms by u_s ~ N(0, τ_common²) and each arm by its own v_{a,s} ~ N(0, τ_arm²); the arm is right
    on the example with probability Φ(μ_a + z_i + u_s + v_{a,s}). Then the expected accuracy over seeds
    and examples is Φ(μ_a / √(2 + τ_common² + τ_arm²)) exactly.
    """
    from scipy.stats import norm

    rng = np.random.default_rng(12345)
    mu = {"baseline": 0.3, "variant": 0.45}
    scale = math.sqrt(2 + tau_common ** 2 + tau_arm ** 2)
    truth = norm.cdf(mu["variant"] / scale) - norm.cdf(mu["baseline"] / scale)
    covered = 0
    for _ in range(replications):
        z = rng.normal(size=n)
        u = rng.normal(0, tau_common, size=(seeds, 1))
        correct = {arm: rng.random((seeds, n)) < norm.cdf(m + z + u + rng.normal(0, tau_arm, size=(seeds, 1)))
                   for arm, m in mu.items()}
        labels = np.ones(n, dtype=np.int64)  # accuracy of "predicted 1" = the share of correct examples
        result = st.compare("accuracy", labels, correct["variant"].astype(np.int64),
                            correct["baseline"].astype(np.int64), n_boot=n_boot, seed=int(rng.integers(1 << 30)))
        covered += result["difference_low"] <= truth <= result["difference_high"]
    return covered / replications


@pytest.mark.parametrize("regime, tau_common, tau_arm", [("examples dominate", 0.05, 0.02),
                                                         ("seeds dominate", 0.3, 0.3)])
def test_interval_covers_the_true_difference_at_about_the_nominal_rate(regime, tau_common, tau_arm):
    coverage = _simulated_coverage(tau_common, tau_arm)
    assert 0.91 <= coverage <= 0.99, f"{regime}: coverage {coverage:.3f}"


def test_chance_levels():
    labels = np.array([1] * 68 + [0] * 32)
    assert st.majority_class(np.array([0, 1, 1, 2, 2])) == 1  # tie: the smaller id
    assert st.chance_level("accuracy", 1, labels) == pytest.approx(0.68)
    assert st.chance_level("f1", 1, labels) == pytest.approx(2 * 0.68 / 1.68)  # always "paraphrase"
    assert st.chance_level("matthews_corrcoef", 1, labels) == 0.0
    assert st.chance_level("pearson_spearman_mean", None, np.linspace(0, 5, 10)) == 0.0


def test_rank_correlation_equals_spearman_with_the_bonett_wright_interval():
    x, y = RNG.normal(size=25), RNG.normal(size=25)
    y = y + 0.8 * x
    result = st.rank_correlation(x, y)
    rho = scipy.stats.spearmanr(x, y)[0]
    half = 1.959964 * math.sqrt((1 + rho ** 2 / 2) / (25 - 3))
    assert result["rho"] == pytest.approx(rho)
    assert (result["low"], result["high"]) == (pytest.approx(math.tanh(math.atanh(rho) - half), rel=1e-5),
                                               pytest.approx(math.tanh(math.atanh(rho) + half), rel=1e-5))
    assert result["verdict"] == "positive" and result["n"] == 25


def test_pooled_rank_correlation_is_within_strata():
    # two tasks with opposite offsets: pooled naively they correlate, within each task they do not
    x1, x2 = RNG.normal(size=15), RNG.normal(size=15) + 10
    y1, y2 = RNG.normal(size=15), RNG.normal(size=15) + 10
    x, y, strata = np.r_[x1, x2], np.r_[y1, y2], np.r_[[0] * 15, [1] * 15]
    assert scipy.stats.spearmanr(x, y)[0] > 0.6
    pooled = st.rank_correlation(x, y, strata)
    per = [scipy.stats.spearmanr(x1, y1)[0], scipy.stats.spearmanr(x2, y2)[0]]
    assert pooled["rho"] == pytest.approx(np.mean(per))  # equal strata: the mean of the per-stratum ρ
    assert pooled["strata"] == 2 and pooled["n"] == 30
    assert "relation" in st.correlation_statement(pooled, "pooled")


def test_rank_correlation_with_too_few_runs():
    result = st.rank_correlation([1.0, 2.0, 3.0], [3.0, 1.0, 2.0])
    assert result["verdict"] == "too few runs" and math.isnan(result["rho"])
    assert "too few runs" in st.correlation_statement(result, "sst2")
