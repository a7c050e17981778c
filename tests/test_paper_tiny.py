"""config/paper-tiny.yaml end to end through Snakemake: the papers' study shape, five tiny random-init models.

The five model keys of config/paper.yaml (BERT, ALBERT, RoBERTa, DistilBERT, GPT-2), each a small model
of its family built offline (tokenuni.tiny_models), through every stage: dumps, every metric, STS with
the paper's poolings (GPT-2's ``cls`` reads its last real token), and every kind of fine-tuning variant
(SoftDecay before the final norm included, which ALBERT and GPT-2 could not run before). Also:
``snakemake -n --configfile config/paper.yaml`` builds its DAG without the hub models.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import yaml
from conftest import REPO
from test_workflow import snakemake

from tokenuni.config import enabled_metrics, load_config

pytestmark = pytest.mark.workflow

MODELS = {"bert": 2, "albert": 3, "roberta": 2, "distilbert": 2, "gpt2": 2}  # key -> blocks
CONFIG = "config/paper-tiny.yaml"


def planned(workdir, configfile) -> dict[str, int]:
    """Rule -> job count of a dry run of ``configfile`` (Snakemake's job-stats table)."""
    out = snakemake(workdir, "--configfile", str(configfile), "--dry-run", "--quiet", "rules").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.MULTILINE)
            if m.group(1) != "total"}


@pytest.fixture(scope="module")
def study(mirror, tmp_path_factory):
    from tokenuni.tiny_models import build_tiny_models, training_texts

    workdir = tmp_path_factory.mktemp("paper-tiny")
    config = yaml.safe_load((REPO / CONFIG).read_text())
    config["data_mirror"] = str(mirror)
    (workdir / "config").mkdir()
    (workdir / CONFIG).write_text(yaml.safe_dump(config))
    build_tiny_models(workdir / "resources" / "paper-tiny" / "models", training_texts(mirror), list(MODELS))
    snakemake(workdir, "--configfile", str(workdir / CONFIG))
    return workdir, load_config(workdir / CONFIG)


def test_the_tiny_config_has_the_shape_of_paper_yaml():
    paper, tiny = load_config(REPO / "config" / "paper.yaml"), load_config(REPO / CONFIG)
    assert list(tiny["models"]) == list(paper["models"]) == list(MODELS)
    assert set(tiny["corpora"]) <= set(paper["corpora"])
    assert sorted(enabled_metrics(tiny)) == sorted(enabled_metrics(paper))
    assert tiny["sts"]["poolings"] == paper["sts"]["poolings"]
    assert set(tiny["sts"]["datasets"]) <= set(paper["sts"]["datasets"])
    kinds = {kind for variant in paper["finetune"]["variants"].values() for kind in variant}
    assert kinds == {kind for variant in tiny["finetune"]["variants"].values() for kind in variant}
    assert tiny["finetune"]["variants"]["softdecay"] == paper["finetune"]["variants"]["softdecay"]


def test_every_model_has_its_dumps_and_every_metric(study):
    import pandas as pd

    from tokenuni.store import open_dump

    workdir, config = study
    results = workdir / config["results"]
    families = {key: open_dump(results / "dumps" / key / "wikitext.arrow").metadata["family"] for key in MODELS}
    assert families == {key: key for key in MODELS}
    table = pd.read_parquet(results / "tables" / "metrics.parquet")
    for key, blocks in MODELS.items():
        rows = table[table.model == key]
        assert sorted(rows.layer.unique()) == list(range(blocks + 1)), key
        cosine = rows[(rows.metric == "avg_cosine") & (rows.variant == "uncentred")]
        assert len(cosine) == blocks + 1 and cosine.value.between(-1, 1).all(), key
    produced = {key: set(table[table.model == key].metric) for key in MODELS}
    assert len({frozenset(m) - {"cls_uniformity"} for m in produced.values()}) == 1  # the same rows for all
    assert "cls_uniformity" not in produced["gpt2"] and "cls_uniformity" in produced["bert"]
    for name in config["metrics"]:
        assert (results / "metrics" / "gpt2" / "wikitext" / f"{name}.parquet").exists(), name


def test_sts_for_every_model_pooling_and_transform(study):
    import pandas as pd

    from tokenuni.sentences import sentences_metadata

    workdir, config = study
    results = workdir / config["results"]
    for key in MODELS:
        poolings = json.loads(sentences_metadata(results / "sentences" / key / "stsb-test.arrow")["poolings"])
        assert poolings["cls_last"]["token"] == ("last" if key == "gpt2" else "first")
    table = pd.read_parquet(results / "tables" / "sts.parquet")
    expected = {(m, p, t, d) for m in MODELS for p in config["sts"]["poolings"] for t in config["sts"]["transforms"]
                for d in config["sts"]["datasets"]}
    assert expected <= set(zip(table["model"], table["pooling"], table["transform"], table["dataset"]))
    assert table.spearman.notna().all()
    assert (results / "tables" / "sts_summary.md").stat().st_size > 0


def test_every_variant_fine_tunes_every_model(study):
    workdir, config = study
    results = workdir / config["results"]
    for key in MODELS:
        for variant in config["finetune"]["variants"]:
            summary = json.loads((results / "finetune" / key / "mrpc" / variant / "seed0" / "summary.json").read_text())
            assert summary["steps"] == 2 and math.isfinite(summary["final_loss"]), (key, variant)
    assert (results / "tables" / "finetune_summary.md").stat().st_size > 0
    assert (results / "report" / "index.html").stat().st_size > 100_000
    assert planned(workdir, workdir / CONFIG) == {}  # nothing left to do


def test_paper_yaml_dry_runs_without_its_hub_models(tmp_path):
    """The papers' study plans every job for its five hub models without needing them (no onstart check in -n)."""
    counts = planned(tmp_path, REPO / "config" / "paper.yaml")
    paper = load_config(REPO / "config" / "paper.yaml")
    geometry = [name for name, corpus in paper["corpora"].items() if corpus["geometry"]]
    streamed = [name for name in geometry if not paper["corpora"][name]["dump"]]  # WikiText-103: no dump
    assert streamed and counts["embed_without_dump"] == 5 * len(streamed)
    assert counts["embed"] == counts["stats"] == 5 * (len(geometry) - len(streamed))  # one read per dump
    assert counts["metric"] == 5 * len(geometry) * len(enabled_metrics(paper))
    assert counts["finetune"] == 5 * len(paper["finetune"]["tasks"]) * len(paper["finetune"]["variants"]) * 3
