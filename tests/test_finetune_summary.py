"""The fine-tuning study's tables from job outputs (tokenuni.finetune.summary), on synthetic jobs: pairing by
seed and dev example, chance, verdicts, the checks on mismatched runs, the Markdown and the time split."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tokenuni.finetune.job import PredictionsError, write_predictions
from tokenuni.finetune.summary import study_tables

N_DEV = 300
LABELS = (np.random.default_rng(1).random(N_DEV) < 0.55).astype(np.int64)  # majority class 1


def _job(folder, variant: str, seed: int, accuracy: float, *, digest: str = "d1", labels=LABELS):
    """Write one synthetic job's summary.json, predictions.parquet and geometry.parquet; return their paths."""
    rng = np.random.default_rng([seed, sum(map(ord, variant))])
    predictions = np.where(rng.random(N_DEV) < accuracy, labels, 1 - labels)
    logits = np.stack([1.0 - predictions, predictions.astype(float)], axis=1)
    main = float((predictions == labels).mean())
    path = folder / variant / f"seed{seed}"
    path.mkdir(parents=True)
    summary = {"model": "minilm", "task": "sst2", "variant": variant, "seed": seed, "main_metric": "accuracy",
               "main": main, "dev": {"accuracy": main, "loss": 0.5}, "steps": 100, "train_examples": 800,
               "dev_examples": N_DEV, "seconds": 30.0, "device": "cpu", "dev_digest": digest,
               "train_majority_class": 1, "timings": {"imports": 2.0, "model_load": 2.0, "train": 20.0 + seed,
                                                      "evaluate": 3.0, "geometry": 2.0}}
    (path / "summary.json").write_text(json.dumps(summary))
    write_predictions(path / "predictions.parquet", {**summary, "dev_logits": logits, "dev_labels": labels})
    isotropy = {"baseline": 0.20, "better": 0.30, "same": 0.25}[variant] + 0.01 * seed
    geometry = pd.DataFrame({"model": "minilm", "task": "sst2", "variant": variant, "seed": seed, "layer": [0, 6, 6],
                             "metric": ["isoscore", "isoscore", "avg_cosine"], "metric_variant": [None, None, "uncentred"],
                             "component": pd.array([None] * 3, dtype="Int64"), "value": [0.1, isotropy, 0.05]})
    geometry.to_parquet(path / "geometry.parquet")
    return path


def _paths(folder):
    return (sorted(folder.glob("*/*/summary.json")), sorted(folder.glob("*/*/predictions.parquet")),
            sorted(folder.glob("*/*/geometry.parquet")))


@pytest.fixture
def jobs(tmp_path):
    for seed in range(3):
        _job(tmp_path, "baseline", seed, 0.75)
        _job(tmp_path, "better", seed, 0.92)
        _job(tmp_path, "same", seed, 0.75)
    return tmp_path


def test_variants_against_baseline_and_chance(jobs):
    tables = study_tables(*_paths(jobs), n_boot=300)
    summary = tables["summary"].set_index("variant")
    assert summary.loc["better", "verdict"] == "better"
    assert summary.loc["better", "difference_low"] > 0
    assert summary.loc["same", "difference_low"] < summary.loc["same", "difference"] < summary.loc["same", "difference_high"]
    assert summary.loc["baseline", "verdict"] == ""
    assert summary.loc["baseline", "chance"] == pytest.approx(LABELS.mean())  # majority class 1 of the training set
    assert summary.loc["baseline", "chance_verdict"] == "above chance" and summary.loc["baseline", "over_chance_low"] > 0
    assert (summary["seeds"] == 3).all() and (summary.loc[["better", "same"], "difference_seeds"] == 3).all()
    assert summary.loc["better", "isoscore (last layer)"] == pytest.approx(0.31)
    runs = tables["results"]
    assert summary.loc["better", "mean"] == pytest.approx(runs[runs["variant"] == "better"]["main"].mean())
    text = tables["markdown"]
    for part in ("## The baseline against chance", "above chance", "## Variants against the baseline", "better",
                 "## Isotropy of the last layer against the score", "## Where a job's time goes", "| train |"):
        assert part in text
    timings = tables["timings"].set_index("stage")
    assert timings.loc["train", "median_s"] == 21.0 and timings["share"].sum() == pytest.approx(1.0)


def test_isotropy_statement_per_task(jobs):
    isotropy = study_tables(*_paths(jobs), n_boot=200)["isotropy"]
    assert set(isotropy["scope"]) == {"sst2"}  # one task: no pooled row
    row = isotropy[isotropy["isotropy"] == "isoscore (last layer)"].iloc[0]
    assert row["n"] == 9 and row["rho"] > 0.5  # the better variant has the most isotropic last layer here
    assert row["statement"].startswith("isoscore vs score, sst2:")


def test_runs_on_other_dev_examples_are_refused(tmp_path):
    _job(tmp_path, "baseline", 0, 0.75)
    _job(tmp_path, "better", 0, 0.9, digest="d2")
    with pytest.raises(PredictionsError, match="scored other dev examples"):
        study_tables(*_paths(tmp_path), n_boot=100)


def test_a_run_without_predictions_is_refused(tmp_path):
    _job(tmp_path, "baseline", 0, 0.75)
    path = _job(tmp_path, "better", 0, 0.9)
    summaries, predictions, geometry = _paths(tmp_path)
    predictions = [p for p in predictions if path not in p.parents]
    with pytest.raises(PredictionsError, match="runs without a predictions file"):
        study_tables(summaries, predictions, geometry, n_boot=100)


def test_a_variant_without_common_seeds_says_so(tmp_path):
    _job(tmp_path, "baseline", 0, 0.75)
    _job(tmp_path, "better", 1, 0.9)
    summary = study_tables(*_paths(tmp_path), n_boot=100)["summary"].set_index("variant")
    assert summary.loc["better", "verdict"] == "no paired baseline" and np.isnan(summary.loc["better", "difference"])
