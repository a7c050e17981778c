"""Every model family through every stage, on small random-init models (tokenuni.families, tokenuni.tiny_models).

For BERT, ALBERT, RoBERTa, DistilBERT, GPT-2, MPNet, Llama, Mistral and Qwen2: the dump equals a direct
forward pass of each sentence alone (layer 0 = the embedding output), special tokens are flagged as
the family's tokenizer adds them, ``cls`` pooling reads the family's sentence token (a decoder's last
real token, the same under left and right padding, in sentence pooling and in the fine-tuning head),
SoftDecay ``before_final_norm`` changes only the last hidden state (ALBERT: not the earlier depths of
its shared layer), and every fine-tuning variant kind trains a step. T5 is refused.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import MINILM, REPO

from tokenuni.families import (
    FAMILIES,
    FamilyError,
    family_of,
    family_problems,
    final_norm_site,
    max_positions,
    module_at,
)
from tokenuni.store import layer_column, open_dump, vectors
from tokenuni.tiny_models import TINY_FAMILIES, build_tiny_model, training_texts

torch.set_num_threads(1)

RUNNABLE = [name for name in TINY_FAMILIES if name != "t5"]
#: (first token special, last token special) as each tiny tokenizer adds them around one sentence
ADDED = {"bert": (True, True), "albert": (True, True), "roberta": (True, True), "distilbert": (True, True),
         "mpnet": (True, True), "gpt2": (False, False), "llama": (True, False), "mistral": (True, False),
         "qwen2": (False, False)}
TEXTS = ["The cat sat on the mat.", "A man is playing a guitar on the street tonight.", "Rain.",
         "Two dogs run through a field of tall grass near the river bank.", "She reads."]


@pytest.fixture(scope="module")
def tiny(mirror, tmp_path_factory):
    """family -> folder of a tiny random-init model with its tokenizer."""
    root = tmp_path_factory.mktemp("tiny-models")
    texts = training_texts(mirror)
    return {name: build_tiny_model(name, root / name, texts) for name in TINY_FAMILIES}


def spec_of(tiny, name, **changes):
    return {**MINILM, "id": f"tiny-random/{name}", "path": str(tiny[name]), "batch_size": 2, **changes}


def corpus_of(path, texts):
    from tokenuni.corpora import Example, examples_to_table, write_corpus

    write_corpus(examples_to_table([Example((t,)) for t in texts]), path)
    return path


def load(tiny, name):
    from tokenuni.embed import load_model

    return load_model(spec_of(tiny, name), "cpu")


def direct_hidden_states(tokenizer, model, text):
    """Every hidden state of ``text`` alone (no padding), with the embedding module's output captured."""
    family = family_of(model.config)
    captured = {}
    handle = module_at(model, family.embedding_output).register_forward_hook(
        lambda module, args, output: captured.setdefault("embedding", output))
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    try:
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return ids[0], [h[0].numpy() for h in hidden], captured["embedding"][0].numpy()


def dump_sentences(path):
    """sentence_id -> (ids, special flags, [layer arrays]) from a dump."""
    dump = open_dump(path)
    table = dump.reader.read_all()
    out = {}
    ids = table["sentence_id"].to_numpy()
    for s in np.unique(ids):
        rows = np.flatnonzero(ids == s)
        out[int(s)] = (table["token_id"].to_numpy()[rows], table["special"].to_numpy(zero_copy_only=False)[rows],
                       [vectors(table[layer_column(i)])[rows] for i in range(dump.n_layers)])
    return dump, out


# -- embedding and special tokens ----------------------------------------------------------------------
@pytest.mark.parametrize("name", RUNNABLE)
def test_dump_equals_a_direct_forward_pass_with_the_familys_special_tokens(tiny, name, tmp_path):
    from tokenuni.embed import embed_corpus

    tokenizer, model = load(tiny, name)
    family = family_of(model.config)
    corpus = corpus_of(tmp_path / "c.parquet", TEXTS)
    embed_corpus(corpus, spec_of(tiny, name), tmp_path / "d.arrow", device="cpu", progress=False)
    dump, rows = dump_sentences(tmp_path / "d.arrow")
    assert dump.metadata["family"] == family.name
    assert dump.metadata["is_decoder"] == str(family.causal).lower()
    assert dump.n_layers == model.config.num_hidden_layers + 1
    first, last = ADDED[name]
    special_ids = set(tokenizer.all_special_ids)
    for sentence_id, text in enumerate(TEXTS):
        token_ids, special, layers = rows[sentence_id]
        ids, hidden, embedding = direct_hidden_states(tokenizer, model, text)
        np.testing.assert_array_equal(token_ids, ids.numpy())
        # batched with padding (batch_size 2, longest first) == the sentence alone, at every layer
        for layer, (dumped, direct) in enumerate(zip(layers, hidden)):
            np.testing.assert_allclose(dumped, direct, rtol=1e-4, atol=2e-5, err_msg=f"{name} layer {layer}")
        np.testing.assert_allclose(hidden[0], embedding, rtol=1e-6, atol=1e-7)  # layer 0 = the embedding output
        # the flags: exactly the tokens the tokenizer added, where the family adds them
        expected = np.zeros(len(ids), bool)
        expected[0], expected[-1] = first, last
        np.testing.assert_array_equal(special, expected, err_msg=name)
        np.testing.assert_array_equal(special, [int(i) in special_ids for i in ids])


def test_cls_uniformity_is_not_measured_on_a_decoders_bos(tiny, tmp_path):
    from tokenuni.embed import embed_corpus
    from tokenuni.metrics import compute_metric

    tables = {}
    for name in ("llama", "bert"):
        embed_corpus(corpus_of(tmp_path / "c.parquet", TEXTS), spec_of(tiny, name), tmp_path / f"{name}.arrow",
                     device="cpu", progress=False)
        tables[name] = compute_metric(tmp_path / f"{name}.arrow", "oversmoothing", {}, model=name, corpus="c",
                                      progress=False)
    assert "cls_uniformity" not in set(tables["llama"].metric)  # BOS is flagged, but it summarises nothing
    assert "cls_uniformity" in set(tables["bert"].metric)
    assert "token_mean_cosine" in set(tables["llama"].metric)


def test_offset_positions_cap_the_length(tiny, tmp_path):
    """RoBERTa and MPNet count positions from padding_idx + 1: a sentence as long as max_position_embeddings
    would index past the table; the length is capped two tokens earlier and the embed runs."""
    from tokenuni.embed import effective_max_length, embed_corpus

    for name in ("roberta", "mpnet"):
        tokenizer, model = load(tiny, name)
        n = model.config.max_position_embeddings
        assert max_positions(model.config) == n - model.config.pad_token_id - 1
        assert effective_max_length({"max_length": 10_000}, model) == n - 2
        long_text = " ".join(["the cat sat on the mat"] * 60)
        summary = embed_corpus(corpus_of(tmp_path / "long.parquet", [long_text, "Short."]),
                               spec_of(tiny, name, max_length=10_000), tmp_path / f"{name}.arrow", device="cpu",
                               progress=False)
        assert summary["truncated_sentences"] == 1
        assert open_dump(tmp_path / f"{name}.arrow").metadata["max_length"] == str(n - 2)


def test_token_type_ids_reach_only_models_that_have_them(tiny):
    from tokenuni.finetune import GlueModel

    for name, changes in (("gpt2", False), ("roberta", False), ("distilbert", False), ("bert", True)):
        tokenizer, encoder = load(tiny, name)
        model = GlueModel(encoder, num_labels=2, regression=False, variant={}).eval()
        batch = tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
        types = torch.ones_like(batch["input_ids"]) * (batch["attention_mask"] > 0)
        with torch.no_grad():
            plain = model(batch["input_ids"], batch["attention_mask"]).hidden_states[-1]
            typed = model(batch["input_ids"], batch["attention_mask"], types).hidden_states[-1]
        assert (not torch.allclose(plain, typed)) is changes, name


# -- pooling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_cls_pooling_reads_the_sentence_token(tiny, name, tmp_path):
    """Encoders: the first token. Causal decoders: the last real token — in sentence pooling and in the
    fine-tuning head, the same under left and right padding."""
    from tokenuni.finetune import GlueModel
    from tokenuni.sentences import embed_sentences, read_sentences, sentences_metadata

    tokenizer, model = load(tiny, name)
    family = family_of(model.config)
    poolings = {"cls_last": {"pool": "cls", "layers": [-1]}, "mean_last": {"pool": "mean", "layers": [-1]}}
    embed_sentences(corpus_of(tmp_path / "c.parquet", TEXTS), spec_of(tiny, name), poolings, tmp_path / "s.arrow",
                    device="cpu", progress=False)
    _, pooled = read_sentences(tmp_path / "s.arrow", "cls_last")
    token = "last" if family.causal else "first"
    assert json.loads(sentences_metadata(tmp_path / "s.arrow")["poolings"])["cls_last"]["token"] == token
    for i, text in enumerate(TEXTS):
        _, hidden, _ = direct_hidden_states(tokenizer, model, text)
        np.testing.assert_allclose(pooled[i], hidden[-1][-1 if family.causal else 0], rtol=1e-4, atol=2e-5)

    # the fine-tuning head: right vs left padding, with the family's inputs (position ids from the mask)
    head = GlueModel(copy.deepcopy(model), num_labels=2, regression=False, variant={}).eval()
    fusion = GlueModel(copy.deepcopy(model), num_labels=2, regression=False,
                       variant={"fusion": {"kind": "max", "layers": [-1]}}).eval()
    ids = [tokenizer(text)["input_ids"] for text in TEXTS]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    right = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    left = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
    right_mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    left_mask = right_mask.flip(-1)
    with torch.no_grad():
        by_right = head(right, right_mask).pooled
        by_left = head(left, left_mask).pooled
        fused = fusion(right, right_mask).pooled
    if family.causal:  # an encoder's [CLS] under left padding is not where BERT's positions expect it
        torch.testing.assert_close(by_left, by_right, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(fused, by_right)
    np.testing.assert_allclose(by_right.numpy(), pooled, rtol=1e-4, atol=2e-5)


# -- SoftDecay placement -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUNNABLE)
def test_softdecay_before_final_norm_changes_only_the_last_hidden_state(tiny, name):
    from tokenuni.finetune import GlueModel
    from tokenuni.finetune.softdecay_layer import SoftDecay

    tokenizer, encoder = load(tiny, name)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    baseline = GlueModel(copy.deepcopy(encoder), num_labels=2, regression=False, variant={}).eval()
    decayed = GlueModel(copy.deepcopy(encoder), num_labels=2, regression=False,
                        variant={"softdecay": {"alpha": -0.01, "placement": "before_final_norm"}}).eval()
    site = final_norm_site(baseline.encoder)
    assert site.path == FAMILIES[family_of(encoder.config).name].final_norm
    if name == "albert":
        assert site.applications == encoder.config.num_hidden_layers == 3  # one shared layer, every depth
    inputs = []
    handle = site.module.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        before = baseline(batch["input_ids"], mask, batch.get("token_type_ids")).hidden_states
        after = decayed(batch["input_ids"], mask, batch.get("token_type_ids")).hidden_states
    handle.remove()
    assert len(inputs) == site.applications
    for layer in range(len(before) - 1):  # every earlier hidden state, ALBERT's earlier depths included
        torch.testing.assert_close(after[layer], before[layer], rtol=0, atol=0, msg=f"{name} layer {layer}")
    real = mask.bool()
    assert not torch.allclose(after[-1][real], before[-1][real], atol=1e-4)
    # and the last one is exactly norm(SoftDecay(input of that norm at its last call))
    softdecay = SoftDecay(alpha=-0.01)
    with torch.no_grad():
        expected = site.module(softdecay(inputs[-1], mask))
    torch.testing.assert_close(after[-1][real], expected[real], rtol=1e-5, atol=1e-6)


# -- fine-tuning ---------------------------------------------------------------------------------------
FT_VARIANTS = {
    "softdecay_before": {"softdecay": {"alpha": -0.2, "lr": 1e-3, "placement": "before_final_norm"}},
    "softdecay_after": {"softdecay": {"alpha": -0.2, "lr": 1e-3, "placement": "after_final_norm"}},
    "istar": {"istar": {"lambda": -1.0, "zeta": 0.2, "layers": "all", "c0_tokens": 500}},
    "cosine": {"cosine_regulariser": {"lambda": 0.1, "layers": "all"}},
    "fusion_gate": {"fusion": {"kind": "gate", "layers": "all"}},
    "fusion_concat_mean": {"fusion": {"kind": "concat", "layers": "all"}, "pooling": "mean"},
}


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_variant_kind_trains_a_step(tiny, name):
    """One epoch of two optimiser steps on sentence pairs (token types where the family has them)."""
    from tokenuni.finetune import GlueModel
    from tokenuni.finetune.train import finetune

    tokenizer, encoder = load(tiny, name)
    texts_a, texts_b = TEXTS[:4], list(reversed(TEXTS[1:]))
    train = (texts_a, texts_b, [0, 1, 0, 1])
    for variant_name, variant in FT_VARIANTS.items():
        torch.manual_seed(0)
        model = GlueModel(copy.deepcopy(encoder), num_labels=2, regression=False, variant=variant)
        start = {k: v.detach().clone() for k, v in model.encoder.named_parameters()}
        summary = finetune(model, tokenizer, "mrpc", train, train, epochs=1, lr=1e-3, batch_size=2, max_length=32,
                           seed=0, device="cpu", progress=False, warmup_ratio=0.0)
        assert summary["steps"] == 2 and summary["skipped_steps"] == 0, (name, variant_name)
        assert np.isfinite(summary["final_loss"]), (name, variant_name)
        moved = [k for k, v in model.encoder.named_parameters() if not torch.equal(v, start[k])]
        assert moved, (name, variant_name)
        if "istar" in variant:
            assert np.isfinite(summary["curves"]["train/isoscore_star"][-1][1])


# -- refusals and checks -------------------------------------------------------------------------------
def test_t5_is_refused_before_its_weights_load(tiny, tmp_path):
    from transformers import AutoModel

    from tokenuni.embed import embed_corpus
    from tokenuni.finetune import GlueModel

    with pytest.raises(FamilyError, match=r"model tiny-random/t5: model_type 't5' is an encoder-decoder model"):
        embed_corpus(corpus_of(tmp_path / "c.parquet", TEXTS), spec_of(tiny, "t5"), tmp_path / "d.arrow",
                     device="cpu", progress=False)
    assert not (tmp_path / "d.arrow").exists()
    with pytest.raises(FamilyError, match="encoder-decoder"):
        GlueModel(AutoModel.from_pretrained(tiny["t5"]), num_labels=2, regression=False, variant={})


def test_family_problems_name_the_model_and_the_fix(tiny, mirror, tmp_path):
    from tokenuni.config import validate_config

    electra = tmp_path / "electra"
    electra.mkdir()
    (electra / "config.json").write_text(json.dumps({"model_type": "electra"}))
    causal_bert = tmp_path / "causal-bert"
    shutil.copytree(tiny["bert"], causal_bert)
    raw = json.loads((causal_bert / "config.json").read_text())
    (causal_bert / "config.json").write_text(json.dumps({**raw, "is_decoder": True}))
    no_pad = tmp_path / "gpt2-no-pad"
    shutil.copytree(tiny["gpt2"], no_pad)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (no_pad / name).exists():
            data = json.loads((no_pad / name).read_text())
            (no_pad / name).write_text(json.dumps({k: v for k, v in data.items() if k not in ("eos_token", "pad_token")}))
    models = {"t5": tiny["t5"], "electra": electra, "causal_bert": causal_bert, "gpt2_no_pad": no_pad,
              **{name: tiny[name] for name in RUNNABLE}}
    config = validate_config({"models": {k: {"id": f"tiny/{k}", "path": str(p)} for k, p in models.items()},
                              "corpora": {"stsb-test": {"mirror": {"format": "stsb",
                                                                   "files": ["stsbenchmark/sts-test.csv"]}}}})
    problems = family_problems(config)
    assert len(problems) == 4, problems
    assert problems[0].startswith("model 't5' (tiny/t5): model_type 't5' is an encoder-decoder model")
    assert "model 'electra' (tiny/electra): model_type 'electra' is not a supported family" in problems[1]
    assert "tokenuni/families.py" in problems[1]
    assert "model 'causal_bert'" in problems[2] and "is_decoder" in problems[2]
    assert "model 'gpt2_no_pad'" in problems[3] and "pad_token" in problems[3]

    # `tokenuni check` says the same and exits 1
    path = tmp_path / "study.yaml"
    config["data_mirror"] = str(mirror)
    config["models"] = {"t5": config["models"]["t5"], "bert": config["models"]["bert"]}
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "tokenuni", "check", str(path)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "model 't5' (tiny/t5 at " in result.stderr  # the check names the folder it read
    assert "): model_type 't5' is an encoder-decoder model" in result.stderr
    assert "model 'bert'" not in result.stderr


def test_tiny_models_without_a_mirror_is_a_user_error(tmp_path, monkeypatch, caplog):
    """`tokenuni tiny-models` with no data mirror: a TokenuniError naming what to set (exit 1, no traceback),
    and nothing built; an unknown family is refused before anything is built."""
    from tokenuni.cli import main
    from tokenuni.errors import TokenuniError
    from tokenuni.tiny_models import TinyModelError, build_tiny_models, training_texts

    monkeypatch.delenv("TOKENUNI_DATA", raising=False)
    assert issubclass(TinyModelError, TokenuniError)
    with pytest.raises(TinyModelError, match="none is set: set TOKENUNI_DATA to the mirror folder or pass --mirror"):
        training_texts(None)
    with pytest.raises(TinyModelError, match=r"wiki\.test\.raw not found: .* point TOKENUNI_DATA or --mirror"):
        training_texts(tmp_path)
    with pytest.raises(TinyModelError, match="no tiny model for family 'bart'; known: bert, albert"):
        build_tiny_models(tmp_path / "models", ["a text"], ["bert", "bart"])
    assert main(["tiny-models", "--out", str(tmp_path / "models")]) == 1
    assert "none is set: set TOKENUNI_DATA" in caplog.text
    assert not (tmp_path / "models").exists()
