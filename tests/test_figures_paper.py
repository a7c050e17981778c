"""The papers' figures (panels, over-smoothing, STS, fine-tuning, checkpoints) from small tables of real values.

The values are literal slices of the default study's tables (all-MiniLM-L6-v2 on STS-B test and
WikiText-2; unsupervised STS; the brief GLUE fine-tuning), so these tests need neither the mirror nor a
model run. Each figure renders, writes non-empty PNG (of the expected pixel size), SVG and PDF with no
temporary file left, and bad input gives a ValueError that names what is wrong.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
from matplotlib.image import imread

from tokenuni.figures import (DPI, FIGSIZE, PANEL_FIGSIZE, TABLE_FIGSIZE, layer_groups, model_colours,
                              plot_finetune_scores, plot_geometry_panels, plot_isotropy_vs_score,
                              plot_metrics_by_step, plot_oversmoothing, plot_sts_geometry, plot_sts_scores,
                              plot_sts_table)
from tokenuni.figures.finetune import last_layer_isotropy

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

BY_LAYER = {
    ('singular_value_skewness', 'uncentred'): {
        'stsb-test': [2.8817, 3.9814, 4.5467, 4.6017, 4.5651, 4.0554, 1.2479],
        'wikitext': [3.9656, 3.8951, 4.2416, 4.5611, 4.8066, 4.9424, 2.1631],
    },
    ('token_uniformity', ''): {
        'stsb-test': [0.0723, 0.1749, 0.2322, 0.2959, 0.3148, 0.3116, 0.3993],
        'wikitext': [0.0615, 0.1436, 0.1731, 0.2141, 0.2507, 0.3111, 0.359],
    },
    ('cls_uniformity', ''): {
        'stsb-test': [-0.0208, -0.0126, -0.0072, 0.0064, 0.0201, 0.0535, 0.2985],
        'wikitext': [-0.0209, -0.0137, -0.013, 0.0066, 0.0112, 0.057, 0.2769],
    },
    ('avg_cosine', 'uncentred'): {
        'stsb-test': [0.0572, 0.1327, 0.1532, 0.157, 0.1667, 0.2022, 0.0123],
        'wikitext': [0.0533, 0.1175, 0.1293, 0.1469, 0.1748, 0.2547, 0.0529],
    },
    ('s_intra', 'uncentred'): {
        'stsb-test': [0.9632, 0.9234, 0.8942, 0.8781, 0.8789, 0.8903, 0.8039],
        'wikitext': [0.9402, 0.8885, 0.8499, 0.8329, 0.8398, 0.861, 0.7601],
    },
    ('s_inter', 'uncentred'): {
        'stsb-test': [0.0171, 0.1414, 0.1603, 0.1633, 0.167, 0.1386, 0.0124],
        'wikitext': [0.0195, 0.1425, 0.1604, 0.1647, 0.1722, 0.1495, 0.0242],
    },
    ('isoscore', ''): {
        'stsb-test': [0.2601, 0.1864, 0.1923, 0.1796, 0.1611, 0.1677, 0.4184],
        'wikitext': [0.1254, 0.1273, 0.1301, 0.135, 0.1184, 0.0963, 0.3177],
    },
    ('partition_isotropy', 'uncentred'): {
        'stsb-test': [0.0071, 0.0002, 0.0001, 0.0001, 0.0, 0.0002, 0.0066],
        'wikitext': [0.0006, 0.0001, 0.0002, 0.0001, 0.0, 0.0, 0.0202],
    },
    ('lid_mean', ''): {
        'stsb-test': [30.4213, 16.4147, 14.6879, 15.7092, 18.2727, 35.2752, 33.6848],
        'wikitext': [29.4516, 15.2959, 14.4107, 16.1943, 19.4572, 36.7167, 36.9981],
    },
    ('mms_k', ''): {
        'stsb-test': [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0],
        'wikitext': [5.0, 10.0, 10.0, 6.0, 4.0, 3.0, 1.0],
    },
    ('token_mean_cosine', ''): {
        'stsb-test': [0.4003, 0.5068, 0.5545, 0.6023, 0.6165, 0.6071, 0.6683],
        'wikitext': [0.31, 0.4209, 0.4529, 0.494, 0.5274, 0.5712, 0.6124],
    },
    ('token_mean_distance', ''): {
        'stsb-test': [0.9161, 0.8596, 0.8282, 0.7916, 0.7819, 0.804, 0.7662],
        'wikitext': [0.9504, 0.9057, 0.8892, 0.867, 0.8482, 0.8329, 0.8149],
    },
    ('effective_rank', 'uncentred'): {
        'stsb-test': [325.7462, 295.8726, 296.5908, 295.0122, 287.6333, 282.5039, 334.4431],
        'wikitext': [309.4754, 283.3726, 288.6044, 291.0229, 280.1693, 266.6214, 325.6824],
    },
}

LAYERNORM_GAMMA_RMS = {
    'attention.output.LayerNorm': {1: 0.583, 2: 0.5968, 3: 0.6086, 4: 0.5931, 5: 0.5381, 6: 0.5602},
    'embeddings.LayerNorm': {0: 0.6182},
    'output.LayerNorm': {1: 0.6196, 2: 0.6149, 3: 0.6495, 4: 0.7218, 5: 0.6876, 6: 0.6447},
}

# (pooling, layers, transform, dataset, protocol, spearman): real STS scores of the default study
STS_SCORES = [
    ('mean_last', '6', 'none', 'stsb-test', 'all', 82.03),
    ('mean_last', '6', 'none', 'sick-r', 'all', 77.15),
    ('mean_last', '6', 'none', 'sts12', 'concatenated', 72.37),
    ('mean_last', '6', 'none', 'sts12', 'mean_over_subsets', 70.0),
    ('mean_last', '6', 'whitening', 'stsb-test', 'all', 78.07),
    ('mean_last', '6', 'whitening', 'sick-r', 'all', 67.83),
    ('mean_last', '6', 'whitening', 'sts12', 'concatenated', 60.41),
    ('mean_last', '6', 'whitening', 'sts12', 'mean_over_subsets', 67.31),
    ('mean_last', '6', 'softdecay', 'stsb-test', 'all', 80.65),
    ('mean_last', '6', 'softdecay', 'sick-r', 'all', 70.47),
    ('mean_last', '6', 'softdecay', 'sts12', 'concatenated', 66.36),
    ('mean_last', '6', 'softdecay', 'sts12', 'mean_over_subsets', 68.83),
    ('first_last_1', '1+6', 'none', 'stsb-test', 'all', 81.55),
    ('first_last_1', '1+6', 'none', 'sick-r', 'all', 75.3),
    ('first_last_1', '1+6', 'none', 'sts12', 'concatenated', 69.65),
    ('first_last_1', '1+6', 'none', 'sts12', 'mean_over_subsets', 70.39),
    ('first_last_1', '1+6', 'whitening', 'stsb-test', 'all', 77.85),
    ('first_last_1', '1+6', 'whitening', 'sick-r', 'all', 65.9),
    ('first_last_1', '1+6', 'whitening', 'sts12', 'concatenated', 58.02),
    ('first_last_1', '1+6', 'whitening', 'sts12', 'mean_over_subsets', 67.35),
    ('first_last_1', '1+6', 'softdecay', 'stsb-test', 'all', 80.62),
    ('first_last_1', '1+6', 'softdecay', 'sick-r', 'all', 69.02),
    ('first_last_1', '1+6', 'softdecay', 'sts12', 'concatenated', 64.99),
    ('first_last_1', '1+6', 'softdecay', 'sts12', 'mean_over_subsets', 69.25),
]
# metric -> variant, {(transform, dataset): value} (pooling mean_last)
STS_GEOMETRY = {
    ('avg_cosine', 'uncentred'): {('none', 'stsb-test'): 0.0229, ('none', 'sick-r'): 0.0579, ('none', 'sts12'): 0.0432, ('whitening', 'stsb-test'): -0.0003, ('whitening', 'sick-r'): -0.0, ('whitening', 'sts12'): 0.0, ('softdecay', 'stsb-test'): 0.0067, ('softdecay', 'sick-r'): 0.0093, ('softdecay', 'sts12'): 0.0079},
    ('isoscore', ''): {('none', 'stsb-test'): 0.24, ('none', 'sick-r'): 0.1428, ('none', 'sts12'): 0.234, ('whitening', 'stsb-test'): 0.9922, ('whitening', 'sick-r'): 0.9922, ('whitening', 'sts12'): 0.9922, ('softdecay', 'stsb-test'): 0.6948, ('softdecay', 'sick-r'): 0.6803, ('softdecay', 'sts12'): 0.7415},
    ('singular_value_skewness', 'uncentred'): {('none', 'stsb-test'): 1.9001, ('none', 'sick-r'): 2.7227, ('none', 'sts12'): 2.2012, ('whitening', 'stsb-test'): -11.1807, ('whitening', 'sick-r'): -11.1807, ('whitening', 'sts12'): -11.1807, ('softdecay', 'stsb-test'): -0.037, ('softdecay', 'sick-r'): 0.18, ('softdecay', 'sts12'): -0.1113},
}
# (task, variant, seed, main_metric, main, isoscore at layers 0 and 6, uncentred avg_cosine at layer 6):
# real runs of the default study's brief fine-tuning
FINETUNE = [
    ('sst2', 'baseline', 0, 'accuracy', 0.6146, 0.26, 0.2538, 0.0922),
    ('sst2', 'baseline', 1, 'accuracy', 0.5625, 0.26, 0.2521, 0.0908),
    ('sst2', 'softdecay', 0, 'accuracy', 0.5208, 0.26, 0.3359, 0.0313),
    ('sst2', 'softdecay', 1, 'accuracy', 0.5208, 0.26, 0.333, 0.0312),
    ('sst2', 'istar_pos', 0, 'accuracy', 0.6042, 0.26, 0.3011, 0.0722),
    ('sst2', 'istar_pos', 1, 'accuracy', 0.5312, 0.26, 0.3018, 0.0711),
    ('mrpc', 'baseline', 0, 'f1', 0.7815, 0.291, 0.373, 0.0332),
    ('mrpc', 'baseline', 1, 'f1', 0.8148, 0.2911, 0.3703, 0.0337),
    ('mrpc', 'softdecay', 0, 'f1', 0.7778, 0.2911, 0.4506, 0.0082),
    ('mrpc', 'softdecay', 1, 'f1', 0.8148, 0.291, 0.4485, 0.0086),
    ('mrpc', 'istar_pos', 0, 'f1', 0.7785, 0.291, 0.4028, 0.0265),
    ('mrpc', 'istar_pos', 1, 'f1', 0.8148, 0.291, 0.4012, 0.027),
]


# ------------------------------------------------------------------------------------------ the tables
def metrics_table(models=("minilm",)) -> pd.DataFrame:
    """The tidy metrics table (model, corpus, layer, metric, variant, component, value, ...) of BY_LAYER."""
    rows = []
    for model in models:
        for (metric, variant), per_corpus in BY_LAYER.items():
            for corpus, values in per_corpus.items():
                rows += [(model, corpus, layer, metric, variant or None, value) for layer, value in enumerate(values)]
            for corpus in per_corpus:  # read from the weights: the same for every corpus
                rows += [(model, corpus, layer, "layernorm_gamma_rms", place, value)
                         for place, by_layer in LAYERNORM_GAMMA_RMS.items() for layer, value in by_layer.items()]
    table = pd.DataFrame(rows, columns=["model", "corpus", "layer", "metric", "variant", "value"]).drop_duplicates()
    return table.assign(component=pd.array([None] * len(table), dtype="Int64"), n=1000,
                        sample_size=pd.array([None] * len(table), dtype="Int64"),
                        seed=pd.array([None] * len(table), dtype="Int64"),
                        training_step=pd.array([None] * len(table), dtype="Int64"))


def sts_scores() -> pd.DataFrame:
    table = pd.DataFrame(STS_SCORES, columns=["pooling", "layers", "transform", "dataset", "protocol", "spearman"])
    return table.assign(model="minilm", pearson=table["spearman"], n=100, subset=None)


def sts_geometry() -> pd.DataFrame:
    rows = [("minilm", "mean_last", "6", transform, dataset, metric, variant or None, value)
            for (metric, variant), values in STS_GEOMETRY.items() for (transform, dataset), value in values.items()]
    return pd.DataFrame(rows, columns=["model", "pooling", "layers", "transform", "dataset", "metric", "variant",
                                       "value"])


def finetune_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    results = pd.DataFrame([run[:5] for run in FINETUNE], columns=["task", "variant", "seed", "main_metric", "main"])
    results = results.assign(model="minilm")
    geometry = []
    for task, variant, seed, _, _, iso0, iso6, cos6 in FINETUNE:
        geometry += [("minilm", task, variant, seed, 0, "isoscore", None, iso0),
                     ("minilm", task, variant, seed, 6, "isoscore", None, iso6),
                     ("minilm", task, variant, seed, 6, "avg_cosine", "uncentred", cos6)]
    geometry = pd.DataFrame(geometry, columns=["model", "task", "variant", "seed", "layer", "metric",
                                               "metric_variant", "value"])
    return results, geometry


def finetune_summary(results: pd.DataFrame) -> pd.DataFrame:
    """A per-(model, task, variant) summary shaped like tokenuni.finetune.summary.compare_variants's (the
    interval widths are made up: the figure only draws them)."""
    stats = results.groupby(["model", "task", "variant"], as_index=False, sort=False)["main"].mean()
    chance = {"sst2": 0.5092, "mrpc": 0.8122}
    base = stats[stats["variant"] == "baseline"].set_index("task")["main"]
    stats = stats.rename(columns={"main": "mean"}).assign(low=lambda t: t["mean"] - 0.04, high=lambda t: t["mean"] + 0.04,
                                                       chance=lambda t: t["task"].map(chance),
                                                       metric=lambda t: t["task"].map({"sst2": "accuracy", "mrpc": "f1"}))
    stats["difference"] = [m - base[t] if v != "baseline" else float("nan")
                           for t, v, m in zip(stats["task"], stats["variant"], stats["mean"])]
    stats["difference_low"], stats["difference_high"] = stats["difference"] - 0.03, stats["difference"] + 0.03
    stats["verdict"] = ["" if v == "baseline" else "better" if lo > 0 else "worse" if hi < 0 else "no evidence"
                        for v, lo, hi in zip(stats["variant"], stats["difference_low"], stats["difference_high"])]
    return stats


# ---------------------------------------------------------------------------------------------- checks
def check_files(folder, stem, figsize) -> dict[str, str]:
    """PNG of figsize x DPI pixels with something drawn, SVG and PDF non-empty; no temporaries. SVG text."""
    png, svg, pdf = (folder / f"{stem}.{ext}" for ext in ("png", "svg", "pdf"))
    image = imread(png)
    assert abs(image.shape[1] - round(figsize[0] * DPI)) <= 1 and abs(image.shape[0] - round(figsize[1] * DPI)) <= 1
    assert image[..., :3].std() > 0
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    text = svg.read_text(encoding="utf-8")
    assert "<svg" in text
    assert not [p.name for p in folder.iterdir() if ".tmp" in p.name]
    return text


def outputs(folder, stem):
    return folder / f"{stem}.png", folder / f"{stem}.svg", folder / f"{stem}.pdf"


# -------------------------------------------------------------------------------------- geometry panels
def test_geometry_panels_models_overlaid(tmp_path):
    table = pd.concat([metrics_table(["minilm"]).assign(model_label=MINILM),
                       metrics_table(["minilm-copy"]).assign(value=lambda t: t["value"] * 1.1, model_label="copy")])
    plot_geometry_panels(table, *outputs(tmp_path, "geometry"))
    text = check_files(tmp_path, "geometry", PANEL_FIGSIZE)
    for title in ("IsoScore", "S_intra", "S_inter", "local intrinsic dimension", "k of max. mean silhouette",
                  "[CLS] uniformity", "I(V)"):
        assert title in text
    assert "layer (0 = embedding output)" in text
    assert f"{MINILM} · stsb-test" in text and "copy · wikitext" in text
    colours = model_colours(["minilm", "minilm-copy"])
    assert colours["minilm"] != colours["minilm-copy"]


def test_geometry_panels_leave_out_missing_metrics_and_reject_none(tmp_path):
    table = metrics_table()
    partial = table[~table["metric"].isin(["lid_mean", "mms_k"])]
    plot_geometry_panels(partial, *outputs(tmp_path, "partial"), corpora="wikitext")
    text = check_files(tmp_path, "partial", PANEL_FIGSIZE)
    assert "local intrinsic dimension" not in text and "IsoScore" in text
    with pytest.raises(ValueError, match=r"holds none of.*metrics present: \['effective_rank'\]"):
        plot_geometry_panels(table[table["metric"] == "effective_rank"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"corpus \['sick-r'\].*stsb-test"):
        plot_geometry_panels(table, tmp_path / "x.png", corpora=["sick-r"])
    assert not (tmp_path / "x.png").exists()


def test_oversmoothing(tmp_path):
    plot_oversmoothing(metrics_table().assign(model_label=MINILM), *outputs(tmp_path, "over"))
    text = check_files(tmp_path, "over", PANEL_FIGSIZE)
    assert "output.LayerNorm" in text and "embeddings.LayerNorm" in text
    assert "layer-norm scale" in text and "relative distance to the sentence mean" in text
    with pytest.raises(ValueError, match="over-smoothing: the metrics table holds none of"):
        plot_oversmoothing(metrics_table().query("metric == 'isoscore'"), tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------- STS
def test_sts_scores_per_pooling(tmp_path):
    plot_sts_scores(sts_scores(), *outputs(tmp_path, "scores"), pooling="first_last_1")
    text = check_files(tmp_path, "scores", FIGSIZE)
    assert "Spearman ρ × 100" in text and "layers 1+6" in text and "avg." in text
    assert "whitening" in text and "softdecay" in text
    plot_sts_scores(sts_scores(), *outputs(tmp_path, "concat"), sts_subsets="concatenated")
    assert "concatenated" in check_files(tmp_path, "concat", FIGSIZE)
    with pytest.raises(ValueError, match=r"pooling 'cls_last'.*first_last_1.*mean_last"):
        plot_sts_scores(sts_scores(), tmp_path / "x.png", pooling="cls_last")
    with pytest.raises(ValueError, match="sts_subsets must be one of"):
        plot_sts_scores(sts_scores(), tmp_path / "x.png", sts_subsets="median")


def test_sts_geometry_before_after(tmp_path):
    plot_sts_geometry(sts_geometry(), *outputs(tmp_path, "geometry"))
    text = check_files(tmp_path, "geometry", PANEL_FIGSIZE)
    assert "IsoScore" in text and "skewness of normalised singular values" in text and "each dataset" in text
    with pytest.raises(ValueError, match="STS geometry: the table holds none of"):
        plot_sts_geometry(sts_geometry().assign(metric="spearman"), tmp_path / "x.png")


def test_sts_table(tmp_path):
    plot_sts_table(sts_scores().assign(model_label=MINILM), *outputs(tmp_path, "table"))
    text = check_files(tmp_path, "table", TABLE_FIGSIZE)
    assert "mean_last · whitening" in text and "82.0" in text  # STS-B test, mean pooling, no transform
    two = pd.concat([sts_scores(), sts_scores().assign(model="other")])
    with pytest.raises(ValueError, match=r"holds 2: \['minilm', 'other'\]"):
        plot_sts_table(two, tmp_path / "x.png")
    plot_sts_table(two, *outputs(tmp_path, "other"), model="other")
    check_files(tmp_path, "other", TABLE_FIGSIZE)


# ------------------------------------------------------------------------------------------ fine-tuning
def test_finetune_scores_with_intervals_chance_and_differences(tmp_path):
    results, _ = finetune_tables()
    summary = finetune_summary(results)
    assert set(summary.loc[summary["variant"] != "baseline", "verdict"]) == {"worse", "no evidence"}
    plot_finetune_scores(results, summary, *outputs(tmp_path, "scores"))
    text = check_files(tmp_path, "scores", PANEL_FIGSIZE)
    assert "sst2 · accuracy · 2 seeds" in text and "mrpc · f1" in text and "istar_pos" in text
    assert "chance (majority class)" in text and "95 % interval of the mean" in text
    assert "difference: worse" in text and "difference: no evidence" in text
    assert "difference to baseline × 100" in text
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['main'\]"):
        plot_finetune_scores(results.drop(columns="main"), summary, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['chance'\]"):
        plot_finetune_scores(results, summary.drop(columns="chance"), tmp_path / "x.png")


def test_isotropy_vs_score_uses_last_layer(tmp_path):
    results, geometry = finetune_tables()
    last = last_layer_isotropy(geometry, "isoscore", None)
    assert len(last) == len(results)
    assert last.set_index(["task", "variant", "seed"]).loc[("mrpc", "softdecay", 0), "value"] == 0.4506
    plot_isotropy_vs_score(results, geometry, *outputs(tmp_path, "iso"), title=None)
    text = check_files(tmp_path, "iso", (11.0, 5.5))
    assert "IsoScore of the last layer" in text and "average cosine of the last layer" in text
    assert "variant softdecay" in text and "ρ =" in text
    assert "no evidence of a relation" in text or "the data support" in text  # a plain statement per task
    with pytest.raises(ValueError, match="no fine-tuning run has last-layer isotropy"):
        plot_isotropy_vs_score(results.assign(seed=7), geometry, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------ checkpoints
def test_metrics_by_step(tmp_path):
    table = metrics_table()
    with pytest.raises(ValueError, match="no training_step values.*checkpoints"):
        plot_metrics_by_step(table, tmp_path / "x.png")
    # the real MiniLM values relabelled as two checkpoints of one model (the layout, not the science)
    steps = pd.concat([table.assign(model="minilm@step0", training_step=0, value=table["value"] * 0.5),
                       table.assign(model="minilm@step1000", training_step=1000)], ignore_index=True)
    steps["training_step"] = steps["training_step"].astype("Int64")
    with pytest.raises(ValueError, match=r"at least two checkpoints.*\[1000\]"):
        plot_metrics_by_step(steps[steps["training_step"] == 1000], tmp_path / "x.png")
    plot_metrics_by_step(steps, *outputs(tmp_path, "steps"), corpora="stsb-test")
    text = check_files(tmp_path, "steps", PANEL_FIGSIZE)
    assert "training step" in text and "layers last (6)" in text and "1k" in text
    assert not (tmp_path / "x.png").exists()


def test_layer_groups():
    assert layer_groups(6) == {"embeddings (0)": [0], "lower (1–2)": [1, 2], "middle (3–4)": [3, 4],
                               "upper (5)": [5], "last (6)": [6]}
    assert list(layer_groups(12)) == ["embeddings (0)", "lower (1–4)", "middle (5–8)", "upper (9–11)", "last (12)"]
    assert layer_groups(1) == {"embeddings (0)": [0], "last (1)": [1]}


# ------------------------------------------------------------------------------------------ command line
def test_cli_figure_kinds_log_their_files(tmp_path):
    from tokenuni.cli import main

    metrics = tmp_path / "metrics.parquet"
    metrics_table().to_parquet(metrics)
    results, geometry = finetune_tables()
    results.to_parquet(tmp_path / "finetune.parquet")
    geometry.to_csv(tmp_path / "finetune_geometry.tsv", sep="\t", index=False)
    labels = json.dumps({"minilm": MINILM})
    for kind, table, extra in [("oversmoothing", metrics, []),
                               ("finetune-isotropy", tmp_path / "finetune.parquet",
                                ["--geometry", str(tmp_path / "finetune_geometry.tsv")])]:
        out = tmp_path / kind
        record = tmp_path / f"{kind}.json"
        code = main(["figure", kind, "--table", str(table), *extra, "--model-labels", labels,
                     "--png", str(out / "f.png"), "--svg", str(out / "f.svg"), "--pdf", str(out / "f.pdf"),
                     "--record", str(record), "--job", json.dumps({"rule": f"figure_{kind}", "wildcards": {}})])
        assert code == 0
        artifacts = json.loads(record.read_text())["artifacts"]
        assert sorted(a["path"].rsplit("/", 1)[1] for a in artifacts) == ["f.pdf", "f.png", "f.svg"]
        assert {a["artifact_path"] for a in artifacts} == {"figures"}
    assert MINILM in (tmp_path / "oversmoothing" / "f.svg").read_text(encoding="utf-8")
    # a kind that needs a second table says so
    assert main(["figure", "finetune-isotropy", "--table", str(tmp_path / "finetune.parquet"),
                 "--png", str(tmp_path / "x.png")]) == 1
    assert not (tmp_path / "x.png").exists()
