"""PCA views of a layer's tokens (tokenuni.projection, tokenuni.figures.projection) on the real MiniLM dump."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from tokenuni.figures.projection import plot_token_projection
from tokenuni.figures.style import DPI, PANEL_FIGSIZE
from tokenuni.projection import mms_k_by_layer, projection_options, token_projection
from tokenuni.store import layer_column, open_dump, vectors

SAMPLE = 150


@pytest.fixture(scope="module")
def projection(minilm_dump) -> pd.DataFrame:
    return token_projection(minilm_dump, sample_size=SAMPLE, seed=0, clusters=3, model="minilm", progress=False)


def layer_matrix(dump_path, layer: int):
    """All vectors of a layer and the token index, read in one go (what the streaming code must reproduce)."""
    dump = open_dump(dump_path)
    index = dump.read_index().to_pandas()
    x = np.concatenate([vectors(b.column(layer_column(layer))) for b in dump.batches([layer_column(layer)])])
    return x.astype(np.float64), index


def test_pca_matches_sklearn_on_the_full_layer(minilm_dump, projection):
    from sklearn.decomposition import PCA

    for layer in (0, 3, 6):
        x, index = layer_matrix(minilm_dump, layer)
        real = ~index["special"].to_numpy()
        pca = PCA(n_components=3, svd_solver="full").fit(x[real])
        rows = projection[projection["layer"] == layer]
        assert rows["n_tokens"].iat[0] == real.sum()
        ratios = [rows[f"explained_variance_ratio_pc{k}"].iat[0] for k in (1, 2, 3)]
        np.testing.assert_allclose(ratios, pca.explained_variance_ratio_, rtol=1e-6)
        expected = pca.transform(x[rows["token_index"].to_numpy()])
        for k in range(3):
            got = rows[f"pc{k + 1}"].to_numpy()
            sign = np.sign(got @ expected[:, k])
            np.testing.assert_allclose(got, sign * expected[:, k], atol=1e-6 * np.abs(expected[:, k]).max())


def test_sample_is_seeded_the_same_for_every_layer_and_the_clusters_metric(minilm_dump, projection):
    from tokenuni.metrics.base import TokenBatch
    from tokenuni.metrics.clusters import Clusters

    per_layer = [rows["token_index"].to_numpy() for _, rows in projection.groupby("layer")]
    assert len(per_layer) == 7 and len(per_layer[0]) == SAMPLE
    assert all(np.array_equal(per_layer[0], other) for other in per_layer[1:])
    assert not projection["special"].any()
    again = token_projection(minilm_dump, layers=[2], sample_size=SAMPLE, seed=0, progress=False)
    assert np.array_equal(again["token_index"], per_layer[0])
    other = token_projection(minilm_dump, layers=[2], sample_size=SAMPLE, seed=1, progress=False)
    assert not np.array_equal(np.sort(other["token_index"]), np.sort(per_layer[0]))

    # the clusters metric with the same seed and size draws the same tokens and scores the same k-means labels
    metric = Clusters(sample_size=SAMPLE, seed=0, k_min=3, k_max=3, repeats=1)
    for batch in open_dump(minilm_dump).batches():
        metric.update(TokenBatch.from_record_batch(batch, metric.device, vector_column=layer_column(4)))
    rows = metric.sample.rows()
    layer4 = projection[projection["layer"] == 4]
    assert np.array_equal(rows["token_id"].numpy(), layer4["token_id"].to_numpy())
    labels = metric.analyse(rows["x"], rows["token_id"])[0]["labels"][3].numpy()
    assert np.array_equal(labels, layer4["cluster"].to_numpy(dtype=np.int64))


def test_frequency_is_the_brute_force_count_and_clusters_are_in_range(minilm_dump, projection):
    index = open_dump(minilm_dump).read_index().to_pandas()
    counts = index["token_id"].value_counts()  # every token of the dump, special tokens included
    assert (projection["frequency"].to_numpy() == counts.loc[projection["token_id"]].to_numpy()).all()
    tokens = index["token"].iloc[projection["token_index"]].to_numpy()
    assert (projection["token"].to_numpy() == tokens).all()
    assert projection["cluster"].between(0, 2).all() and (projection["cluster_k"] == 3).all()
    assert projection.groupby("layer")["cluster"].nunique().eq(3).all()
    assert {"model", "corpus", "seed", "sample_size"} <= set(projection.columns)
    assert (projection["model"] == "minilm").all() and (projection["corpus"] == "stsb-test").all()


def test_mms_k_per_layer_and_options(minilm_dump):
    clusters_table = pd.DataFrame({"layer": [0, 1], "metric": ["mms_k", "mms_k"], "value": [1.0, 2.0]})
    assert mms_k_by_layer(clusters_table) == {0: 1, 1: 2}
    options = projection_options({"clusters": "mms", "sample_size": 80, "layers": [0, 1]}, clusters_table)
    table = token_projection(minilm_dump, progress=False, **options)
    assert (table.loc[table["layer"] == 0, "cluster"] == 0).all()
    assert table.loc[table["layer"] == 1, "cluster"].nunique() == 2
    with pytest.raises(ValueError, match="clusters-table"):
        projection_options({"clusters": "mms"})
    with pytest.raises(ValueError, match=r"layer\(s\) \[2\]"):
        token_projection(minilm_dump, layers=[2], clusters={0: 1}, progress=False)
    unclustered = token_projection(minilm_dump, layers=[-1], sample_size=50, progress=False)
    assert unclustered["layer"].eq(6).all() and unclustered["cluster"].isna().all()


def test_bad_layer_index_names_the_layer(minilm_dump, projection, tmp_path):
    with pytest.raises(ValueError, match=r"layer 7 does not exist.*0\.\.6"):
        token_projection(minilm_dump, layers=[0, 7], progress=False)
    with pytest.raises(ValueError, match=r"layer 9 is not in the projection table"):
        plot_token_projection(projection, tmp_path / "x.png", layers=[9])
    with pytest.raises(ValueError, match="no cluster labels"):
        plot_token_projection(projection.assign(cluster=pd.NA), tmp_path / "x.png", colour_by="cluster")


@pytest.mark.parametrize("dims,colour_by", [(2, "frequency"), (3, "cluster")])
def test_figures_png_and_svg(projection, tmp_path, dims, colour_by):
    png, svg = tmp_path / "view.png", tmp_path / "view.svg"
    plot_token_projection(projection, png, svg, dims=dims, colour_by=colour_by)
    image = imread(png)
    assert image.shape[:2] == (round(PANEL_FIGSIZE[1] * DPI), round(PANEL_FIGSIZE[0] * DPI))
    assert image[..., :3].std() > 0.05  # not a blank canvas
    text = svg.read_text()
    assert text.startswith("<?xml") and "PC1 (" in text and "layer 0 = embedding output" in text
    assert not list(tmp_path.glob(".*tmp*"))


def test_cli_writes_table_figure_and_run_records(minilm_dump, tmp_path):
    from tokenuni.cli import main

    table, record = tmp_path / "projection.parquet", tmp_path / "projection.json"
    options = json.dumps({"layers": [0, -1], "sample_size": 60, "seed": 0, "components": 3, "clusters": 2})
    assert main(["projection", "--dump", str(minilm_dump), "--model", "minilm", "--corpus", "stsb-test",
                 "--options", options, "--out", str(table), "--record", str(record), "--device", "cpu",
                 "--no-progress"]) == 0
    written = pd.read_parquet(table)
    assert sorted(written["layer"].unique()) == [0, 6] and len(written) == 120
    run = json.loads(record.read_text())
    assert {a["artifact_path"] for a in run["artifacts"]} == {"projections"}
    assert {m["key"] for m in run["metrics"]} >= {"explained_variance_ratio_pc1", "cluster_k"}

    png, figure_record = tmp_path / "view.png", tmp_path / "figure.json"
    assert main(["projection-figure", "--table", str(table), "--colour-by", "cluster", "--dims", "2",
                 "--png", str(png), "--record", str(figure_record)]) == 0
    assert png.stat().st_size > 10_000
    assert [a["artifact_path"] for a in json.loads(figure_record.read_text())["artifacts"]] == ["figures"]
    assert main(["projection", "--dump", str(minilm_dump), "--model", "m", "--corpus", "c", "--options",
                 '{"layers": [12]}', "--out", str(tmp_path / "bad.parquet"), "--device", "cpu"]) == 1
