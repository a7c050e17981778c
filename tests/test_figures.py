"""Figures from small synthetic tidy tables: files, sizes, formats, atomic writes, error messages."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from tokenuni.figures import (DPI, FIGSIZE, metric_label, model_colours, plot_metric_by_layer,
                              plot_singular_value_cdf, save_figure)

COLUMNS = ["model", "corpus", "layer", "metric", "variant", "component", "value", "n", "sample_size", "seed"]
WIDTH, HEIGHT = round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI)


def tidy(rows) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("component", "sample_size", "seed"):
        table[column] = table[column].astype("Int64")
    table["layer"] = table["layer"].astype("int64")
    table["n"] = table["n"].astype("int64")
    table["value"] = table["value"].astype("float64")
    return table


def spectrum_table(model="minilm", corpus="stsb-test", n_layers=3, k=20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in range(n_layers):
        for variant in ("uncentred", "centred"):
            decay = 0.05 + 0.3 * layer  # deeper layers: more skewed spectrum
            values = np.sort(np.exp(-decay * np.arange(k)) * (1 + 0.05 * rng.random(k)))[::-1] * 10
            rows += [(model, corpus, layer, "singular_value", variant, c, float(v), 500, None, None)
                     for c, v in enumerate(values)]
            rows.append((model, corpus, layer, "effective_rank", variant, None, float(k / (1 + layer)), 500, None, None))
    return tidy(rows)


def scalar_table() -> pd.DataFrame:
    rows = []
    for m, model in enumerate(("minilm", "bert-base")):
        for c, corpus in enumerate(("stsb-test", "wikitext")):
            for layer in range(4):
                rows.append((model, corpus, layer, "avg_cosine", "", None, 0.1 + 0.1 * layer + 0.05 * m + 0.02 * c,
                             1000, 1000, 0))
                rows.append((model, corpus, layer, "token_uniformity", "", None, 0.3 + 0.1 * layer, 1000, None, None))
                for variant in ("uncentred", "centred"):
                    rows.append((model, corpus, layer, "singular_value_skewness", variant, None,
                                 1.0 + layer + (variant == "centred"), 1000, None, None))
    return tidy(rows)


def check_outputs(folder, png, svg=None):
    assert png.exists()
    image = imread(png)
    assert abs(image.shape[1] - WIDTH) <= 1 and abs(image.shape[0] - HEIGHT) <= 1, image.shape
    assert image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0  # something was drawn
    if svg is not None:
        head = svg.read_text(encoding="utf-8")[:200].lstrip()
        assert head.startswith("<?xml") or head.startswith("<svg")
        assert "<svg" in svg.read_text(encoding="utf-8")
    leftovers = [p.name for p in folder.iterdir() if "tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


def test_singular_value_cdf_png_and_svg(tmp_path):
    png, svg = tmp_path / "cdf.png", tmp_path / "cdf.svg"
    plot_singular_value_cdf(spectrum_table(), png, svg)
    check_outputs(tmp_path, png, svg)
    text = svg.read_text(encoding="utf-8")
    assert "layer 0 (embeddings)" in text and "layer 2" in text
    assert "singular-value CDF (uncentred)" in text


def test_singular_value_cdf_uses_model_label_and_variant(tmp_path):
    table = spectrum_table().assign(model_label="sentence-transformers/all-MiniLM-L6-v2")
    png, svg = tmp_path / "sub" / "cdf.png", tmp_path / "sub" / "cdf.svg"  # parent folder is created
    plot_singular_value_cdf(table, png, svg, variant="centred")
    check_outputs(tmp_path / "sub", png, svg)
    text = svg.read_text(encoding="utf-8")
    assert "sentence-transformers/all-MiniLM-L6-v2 · stsb-test · singular-value CDF (centred)" in text


def test_singular_value_cdf_png_only(tmp_path):
    png = tmp_path / "cdf.png"
    plot_singular_value_cdf(spectrum_table(), png, title="custom")
    check_outputs(tmp_path, png)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdf.png"]


def test_singular_value_cdf_rejects_several_models(tmp_path):
    table = pd.concat([spectrum_table("minilm"), spectrum_table("bert-base")], ignore_index=True)
    with pytest.raises(ValueError, match=r"bert-base/stsb-test.*minilm/stsb-test"):
        plot_singular_value_cdf(table, tmp_path / "cdf.png")
    assert list(tmp_path.iterdir()) == []


def test_singular_value_cdf_rejects_missing_spectrum_and_variant(tmp_path):
    with pytest.raises(ValueError, match="singular_value.*avg_cosine"):
        plot_singular_value_cdf(scalar_table(), tmp_path / "cdf.png")
    with pytest.raises(ValueError, match="variant 'whitened'.*centred"):
        plot_singular_value_cdf(spectrum_table(), tmp_path / "cdf.png", variant="whitened")


def test_metric_by_layer_two_models_two_corpora(tmp_path):
    table = scalar_table().assign(model_label=lambda t: t["model"].map({"minilm": "MiniLM-L6", "bert-base": "BERT base"}))
    png, svg = tmp_path / "avg.png", tmp_path / "avg.svg"
    plot_metric_by_layer(table, "avg_cosine", png, svg)
    check_outputs(tmp_path, png, svg)
    text = svg.read_text(encoding="utf-8")
    assert metric_label("avg_cosine") == "average cosine similarity" and "average cosine similarity" in text
    assert "layer (0 = embedding output)" in text
    assert "MiniLM-L6 · wikitext" in text and "BERT base · stsb-test" in text


def test_metric_by_layer_several_variants_and_unknown_metric(tmp_path):
    table = scalar_table()
    png, svg = tmp_path / "skew.png", tmp_path / "skew.svg"
    plot_metric_by_layer(table, "singular_value_skewness", png, svg)
    check_outputs(tmp_path, png, svg)
    assert "stsb-test · centred" in svg.read_text(encoding="utf-8")

    new = table[table["metric"] == "token_uniformity"].assign(metric="brand_new_metric")
    png2, svg2 = tmp_path / "new.png", tmp_path / "new.svg"
    plot_metric_by_layer(pd.concat([table, new]), "brand_new_metric", png2, svg2, title="New")
    check_outputs(tmp_path, png2, svg2)
    assert "brand_new_metric" in svg2.read_text(encoding="utf-8")  # default ylabel: the metric name


def test_metric_by_layer_averages_seeds(tmp_path):
    table = scalar_table()
    seeds = table[table["metric"] == "avg_cosine"].assign(seed=1, value=lambda t: t["value"] + 0.05)
    png = tmp_path / "avg.png"
    plot_metric_by_layer(pd.concat([table, seeds], ignore_index=True), "avg_cosine", png, ylabel="cos")
    check_outputs(tmp_path, png)


def test_metric_by_layer_missing_metric(tmp_path):
    with pytest.raises(ValueError, match=r"'isoscore'.*avg_cosine.*token_uniformity"):
        plot_metric_by_layer(scalar_table(), "isoscore", tmp_path / "x.png")
    with pytest.raises(ValueError, match="vector-valued"):
        plot_metric_by_layer(spectrum_table(), "singular_value", tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_save_figure_replaces_existing_and_cleans_up_on_error(tmp_path):
    from matplotlib.figure import Figure

    png = tmp_path / "fig.png"
    png.write_bytes(b"old")
    fig = Figure(figsize=FIGSIZE)
    fig.add_subplot().plot([0, 1], [0, 1])
    save_figure(fig, png)
    check_outputs(tmp_path, png)

    class Broken(Figure):
        def savefig(self, fname, **kwargs):
            with open(fname, "wb") as handle:
                handle.write(b"partial")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(figsize=FIGSIZE), png)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    assert imread(png).shape[0] == HEIGHT  # the previous figure is intact


def test_model_colours_stable():
    a = model_colours(["minilm", "bert-base"])
    b = model_colours(["bert-base", "minilm", "roberta"])
    assert a["minilm"] == model_colours(["minilm"])["minilm"]
    assert len(set(b.values())) == 3
    assert a["bert-base"] == b["bert-base"]


def test_figure_kind_registry_drives_the_command_and_the_rules():
    """Every registered kind names a drawing function of tokenuni.figures; every kind a workflow rule asks
    ``tokenuni figure`` for is registered; a kind that needs an extra table says which option is missing."""
    import re
    from pathlib import Path

    from tokenuni import figures
    from tokenuni.errors import TokenuniError
    from tokenuni.figure_kinds import FIGURE_KINDS, draw

    for kind, spec in FIGURE_KINDS.items():
        assert callable(getattr(figures, spec.function)), kind
    rule_files = Path(__file__).parents[1] / "workflow" / "rules"
    rules = "".join(p.read_text() for p in rule_files.glob("*.smk"))
    table = (rule_files / "figures.smk").read_text()  # FIGURE_RULES: one rule per entry, kind="<figure kind>"
    asked = set(re.findall(r"tokenuni figure ([a-z-]+)", rules)) | set(re.findall(r'kind="([a-z-]+)"', table))
    assert len(asked) >= 10 and asked <= set(FIGURE_KINDS), asked - set(FIGURE_KINDS)
    with pytest.raises(TokenuniError, match=r"^figure finetune-scores needs --summary \(the fine-tuning summary"):
        draw("finetune-scores", pd.DataFrame(), (None, None, None), {"summary": None})
