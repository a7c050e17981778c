"""Over-smoothing rows and layer-norm scales against brute force; decoder (GPT-2-style) and ALBERT dumps."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tokenuni.metrics import compute_metric
from tokenuni.store import layer_column, open_dump, vectors

from conftest import MINILM

RTOL = 1e-6


def sentences(dump_path, layer):
    """{sentence_id: (x, special)} of one layer, read whole."""
    dump = open_dump(dump_path)
    out: dict[int, list] = {}
    for batch in dump.batches():
        x = vectors(batch.column(layer_column(layer))).astype(np.float64)
        ids = batch.column("sentence_id").to_numpy()
        special = batch.column("special").to_numpy(zero_copy_only=False)
        for s in np.unique(ids):
            rows = ids == s
            prev = out.setdefault(int(s), [np.empty((0, x.shape[1])), np.empty(0, bool)])
            prev[0] = np.vstack([prev[0], x[rows]])
            prev[1] = np.concatenate([prev[1], special[rows]])
    return out


def cos(a, b):
    return (a @ b) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b))


def value(table, metric, layer, variant=""):
    rows = table[(table.metric == metric) & (table.layer == layer) & (table.variant == variant)]
    assert len(rows) == 1, (metric, layer, len(rows))
    return rows.iloc[0]


def test_oversmoothing_equals_brute_force(minilm_dump):
    table = compute_metric(minilm_dump, "oversmoothing", {}, model="m", corpus="c", progress=False)
    for layer in (0, 3, 6):
        mean_cos, distance, cls = [], [], []
        for x, special in sentences(minilm_dump, layer).values():
            real = x[~special]
            mean = real.mean(axis=0)
            mean_cos.append(cos(real, mean).mean())
            distance.append(np.linalg.norm(real - mean, axis=1).sum() / np.linalg.norm(real, axis=1).sum())
            assert special[0]  # [CLS]
            cls.append(cos(real, x[0]).mean())
        for name, reference in (("token_mean_cosine", mean_cos), ("token_mean_distance", distance),
                                ("cls_uniformity", cls)):
            row = value(table, name, layer)
            assert row.value == pytest.approx(np.mean(reference), rel=RTOL)
            assert row.spread == pytest.approx(np.std(reference), rel=1e-5)
            assert row.n == len(reference)


def test_tokens_become_alike_with_depth_on_minilm(minilm_dump):
    table = compute_metric(minilm_dump, "oversmoothing", {}, model="m", corpus="c", progress=False)
    assert value(table, "token_mean_cosine", 5).value > value(table, "token_mean_cosine", 0).value
    assert value(table, "cls_uniformity", 5).value > value(table, "cls_uniformity", 0).value


def test_oversmoothing_analytic_identical_tokens():
    from tokenuni.metrics import make_metric
    from tokenuni.metrics.base import TokenBatch

    x = torch.tensor(np.tile([[1.0, -2.0, 0.5]], (6, 1)))
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    special = torch.tensor([True, False, False, True, False, False])
    zeros = torch.zeros(6, dtype=torch.int64)
    metric = make_metric("oversmoothing", {}, "cpu")
    for part in (slice(0, 2), slice(2, 4), slice(4, 6)):  # sentences split across batches
        metric.update(TokenBatch(x[part], ids[part], zeros[part], special[part], zeros[part], (ids * 0 + torch.tensor([0, 1, 2, 0, 1, 2]))[part]))
    rows = {v.metric: v for v in metric.compute()}
    assert rows["token_mean_cosine"].value == pytest.approx(1.0)
    assert rows["token_mean_distance"].value == pytest.approx(0.0, abs=1e-12)
    assert rows["cls_uniformity"].value == pytest.approx(1.0)
    assert rows["token_mean_cosine"].n == 2


def test_layernorm_scale_read_from_the_model(minilm_dump):
    from transformers import AutoModel

    from tokenuni.sources import resolve_model

    table = compute_metric(minilm_dump, "layernorm_scale", {}, model="m", corpus="c", progress=False)
    model = AutoModel.from_pretrained(resolve_model(MINILM).location)
    gamma = model.embeddings.LayerNorm.weight.detach().double()
    assert value(table, "layernorm_gamma_norm", 0, "embeddings.LayerNorm").value == pytest.approx(float(gamma.norm()), rel=1e-6)
    block = model.encoder.layer[2].output.LayerNorm.weight.detach().double()
    assert value(table, "layernorm_gamma_norm", 3, "output.LayerNorm").value == pytest.approx(float(block.norm()), rel=1e-6)
    assert value(table, "layernorm_gamma_rms", 3, "output.LayerNorm").value == pytest.approx(float(block.norm() / np.sqrt(384)), rel=1e-6)
    assert sorted(set(table.layer)) == list(range(7))
    assert (table[table.metric == "layernorm_gamma_norm"].groupby("layer").size().loc[1:] == 2).all()


# -- other architectures: random weights (code paths), no hub ---------------------------------------
TEXTS = ["the cat sat on the mat .", "a dog barked at the moon and ran away .", "birds sing",
         "it rained all day in the small town by the sea .", "hello world"]


def byte_bpe_tokenizer(path):
    """A GPT-2-style byte-level BPE tokenizer with no pad token, trained on a few sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 20, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    return tokenizer


def corpus_of(path, texts):
    from tokenuni.corpora import Example, examples_to_table, write_corpus

    write_corpus(examples_to_table([Example((t,)) for t in texts]), path)
    return path


@pytest.fixture(scope="module")
def gpt2_dump(tmp_path_factory):
    from transformers import GPT2Config, GPT2Model

    from tokenuni.embed import embed_corpus

    root = tmp_path_factory.mktemp("gpt2")
    tokenizer = byte_bpe_tokenizer(root / "model")
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_layer=3, n_embd=32, n_head=4, n_positions=64)).save_pretrained(root / "model")
    spec = {**MINILM, "id": "tiny-random-gpt2", "path": str(root / "model"), "batch_size": 2}
    corpus = corpus_of(root / "corpus.parquet", TEXTS)
    out = root / "dump.arrow"
    embed_corpus(corpus, spec, out, corpus_name="tiny", device="cpu", progress=False)
    return out, spec, corpus


def test_decoder_dump_pads_with_eos_and_respects_the_causal_mask(gpt2_dump, tmp_path):
    from tokenuni.embed import embed_corpus

    out, spec, _ = gpt2_dump
    dump = open_dump(out)
    assert dump.metadata["is_decoder"] == "true"
    assert dump.n_layers == 4  # embeddings + 3 blocks
    norms = json.loads(dump.metadata["layernorm"])
    assert {(n["layer"], n["module"]) for n in norms} >= {(1, "ln_1"), (3, "ln_f")}
    # batched with padding == each sentence alone (right padding + attention mask, causal model)
    alone = []
    for i, text in enumerate(TEXTS):
        single = corpus_of(tmp_path / f"c{i}.parquet", [text])
        embed_corpus(single, {**spec, "batch_size": 1}, tmp_path / f"d{i}.arrow", device="cpu", progress=False)
        alone.append(sentences(tmp_path / f"d{i}.arrow", 3)[0][0])
    batched = sentences(out, 3)
    for i in range(len(TEXTS)):
        np.testing.assert_allclose(batched[i][0], alone[i], rtol=1e-4, atol=1e-5)


def test_every_metric_runs_on_a_decoder_dump(gpt2_dump):
    from tokenuni.metrics import METRICS

    out, _, _ = gpt2_dump
    for name in METRICS:
        table = compute_metric(out, name, {}, model="gpt2", corpus="tiny", progress=False)
        assert set(table.layer) <= set(range(4)), name
        assert table.value.notna().all(), name


def test_albert_shared_layernorm_is_reported_for_every_block(tmp_path):
    from transformers import AlbertConfig, AlbertModel, BertTokenizerFast

    from tokenuni.embed import embed_corpus
    from tokenuni.sources import resolve_model

    BertTokenizerFast.from_pretrained(resolve_model(MINILM).location).save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=30522, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                             num_attention_heads=4, intermediate_size=37)).save_pretrained(tmp_path / "model")
    spec = {**MINILM, "id": "tiny-random-albert", "path": str(tmp_path / "model")}
    embed_corpus(corpus_of(tmp_path / "c.parquet", TEXTS), spec, tmp_path / "d.arrow", device="cpu", progress=False)
    table = compute_metric(tmp_path / "d.arrow", "layernorm_scale", {}, model="albert", corpus="tiny", progress=False)
    gamma = table[table.metric == "layernorm_gamma_norm"]
    assert set(gamma.layer) == {0, 1, 2, 3}
    shared = gamma[gamma.layer > 0].groupby("variant").value.nunique()
    assert (shared == 1).all()  # one shared norm, the same at every block
    assert pq.read_schema(tmp_path / "c.parquet").metadata
