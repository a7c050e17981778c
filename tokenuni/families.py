"""Model families: the one place that knows how each architecture must be run, pooled and repaired.

tokenuni runs a model's stack of blocks and reads every hidden state (index 0 = the embedding output,
i = the output of block i). What that means differs by architecture, so every stage asks this module
instead of guessing from the model's class or name. A family is keyed by ``config.model_type``:

============  ==============================  =========  ======================  =================  ==================================
family        model types                     kind       tokens it adds          token types        positions
============  ==============================  =========  ======================  =================  ==================================
bert          bert                            encoder    [CLS] … [SEP]           yes                absolute (index)
albert        albert                          encoder    [CLS] … [SEP]           yes                absolute (index)
roberta       roberta                         encoder    <s> … </s>              no (size-1 table)  offset: padding_idx + 1 + index
distilbert    distilbert                      encoder    [CLS] … [SEP]           no                 absolute (index)
mpnet         mpnet                           encoder    <s> … </s>              no                 offset: padding_idx + 1 + index
gpt2          gpt2                            decoder    none                    no (would add wte) absolute, from the attention mask
llama         llama, mistral, qwen2           decoder    BOS (Llama, Mistral);   no                 rotary (relative)
                                                         none (Qwen2)
============  ==============================  =========  ======================  =================  ==================================

Facts every stage relies on:

* **Layer 0** is the embedding output in the hidden size: the ``embeddings`` module's output for
  BERT, RoBERTa, DistilBERT, MPNet; for ALBERT its projection to the hidden size
  (``encoder.embedding_hidden_mapping_in``; the factorised embedding itself is smaller); for GPT-2
  token + position embeddings after dropout (``drop``); for Llama/Qwen2 the token embeddings
  (``embed_tokens``). :attr:`Family.embedding_output` names the module. For decoders the last hidden
  state is the output of the final norm (``ln_f``/``norm``), as transformers returns it.
* **Special tokens** are what the family's tokenizer adds around a sentence (above); they are
  flagged from the tokenizer's ``special_tokens_mask`` in the dump's token index and in every
  pooling. "Real tokens" everywhere means attention mask 1 (never padding); metrics and projections
  leave the special tokens out by default, poolings keep them by default (each has a
  ``special_tokens`` option); fine-tuning's regularisers and heads use the real tokens.
* **Padding** is on the right for every family (a causal model's real tokens then never see the
  padding). Decoders without a pad token pad with their end-of-text token (:func:`prepare_tokenizer`).
  Decoders get position ids counted over the real tokens (:meth:`Family.model_inputs`), so a left
  padded batch would give the same states too (GPT-2's learned positions otherwise shift under left
  padding). Encoders never get position ids from us: RoBERTa and MPNet count positions from
  ``padding_idx + 1`` themselves, so position ≠ index there, and their usable length is
  ``max_position_embeddings − padding_idx − 1`` (:func:`max_positions`).
* **Token type ids** reach only models that have them (:meth:`Family.model_inputs` drops the rest:
  GPT-2 would add the embedding of token 0 to every position, RoBERTa's table has one row).
* **Pooling on a causal model.** ``cls`` means "the token that summarises the sentence": the first
  token for encoders ([CLS] / <s>), and the **last real token** for causal decoders, whose first
  token has seen nothing but itself (as ``GPT2ForSequenceClassification`` does). Sentence pooling
  (:mod:`tokenuni.sentences`, recorded as ``token: last`` in the file's pooling metadata) and the
  fine-tuning head and fusion (:mod:`tokenuni.finetune`) follow the same rule,
  :func:`sentence_token_index`.
* **SoftDecay ``before_final_norm``** (Yan et al., UAI 2022) is a forward pre-hook on
  :attr:`Family.final_norm`: post-LN encoders (BERT, ALBERT, RoBERTa, DistilBERT, MPNet) end each
  block in ``LayerNorm(h + residual)``, so the site is the last block's output LayerNorm; pre-norm
  decoders (GPT-2, Llama, Qwen2) have one final norm after the blocks (``ln_f`` / ``norm``). ALBERT
  applies one shared layer at every depth: the hook acts only at the last of the
  :func:`final_norm_site` ``applications`` calls of one forward pass, never at earlier depths.
* **Encoder-decoder models** (T5, BART, …) are refused (:func:`family_of`, :func:`family_problems`):
  their two stacks have no single "layer i", and tokenuni measures one stack. Use an encoder-only
  or decoder-only model. Model types not listed here are refused too, with the message saying where
  to add them (this table), rather than run with guessed semantics.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenuni.errors import TokenuniError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


class FamilyError(TokenuniError, ValueError):
    """A model whose architecture tokenuni does not run, or a request its family cannot honour."""


@dataclass(frozen=True)
class Family:
    """What tokenuni must know about one architecture (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    causal: bool
    #: what the tokenizer adds around one sentence (documentation and messages)
    added_tokens: str
    #: whether the model takes token_type_ids (segment ids)
    token_type_ids: bool
    #: "absolute" (position = index), "offset" (padding_idx + 1 + index, computed by the model), "rotary"
    positions: str
    #: dotted path of the module whose output is hidden_states[0]
    embedding_output: str
    #: dotted path of the module SoftDecay ``before_final_norm`` hooks (-1: the last block)
    final_norm: str
    #: "post_ln" (the norm ends the last block) or "pre_ln" (one final norm after the blocks)
    norm_style: str
    #: one layer module applied at every depth (ALBERT)
    shared_layers: bool = False

    @property
    def sentence_token(self) -> str:
        """Which token ``cls`` pooling reads: ``first`` (encoders) or ``last`` real token (decoders)."""
        return "last" if self.causal else "first"

    def model_inputs(self, input_ids, attention_mask, token_type_ids=None, **ignored) -> dict:
        """Keyword arguments of the model's forward for a (right- or left-) padded batch.

        Token type ids only where the model has them; position ids counted over the real tokens for
        decoders (equal to the index with right padding); none for encoders (RoBERTa and MPNet compute
        their offset positions from the input ids).
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_type_ids and token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.causal:
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return inputs


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("bert", ("bert",), causal=False, added_tokens="[CLS] … [SEP]", token_type_ids=True,
           positions="absolute", embedding_output="embeddings", final_norm="encoder.layer.-1.output.LayerNorm",
           norm_style="post_ln"),
    Family("albert", ("albert",), causal=False, added_tokens="[CLS] … [SEP]", token_type_ids=True,
           positions="absolute", embedding_output="encoder.embedding_hidden_mapping_in",
           final_norm="encoder.albert_layer_groups.-1.albert_layers.-1.full_layer_layer_norm", norm_style="post_ln",
           shared_layers=True),
    Family("roberta", ("roberta",), causal=False, added_tokens="<s> … </s>", token_type_ids=False,
           positions="offset", embedding_output="embeddings", final_norm="encoder.layer.-1.output.LayerNorm",
           norm_style="post_ln"),
    Family("distilbert", ("distilbert",), causal=False, added_tokens="[CLS] … [SEP]", token_type_ids=False,
           positions="absolute", embedding_output="embeddings", final_norm="transformer.layer.-1.output_layer_norm",
           norm_style="post_ln"),
    Family("mpnet", ("mpnet",), causal=False, added_tokens="<s> … </s>", token_type_ids=False,
           positions="offset", embedding_output="embeddings", final_norm="encoder.layer.-1.output.LayerNorm",
           norm_style="post_ln"),
    Family("gpt2", ("gpt2",), causal=True, added_tokens="none", token_type_ids=False,
           positions="absolute", embedding_output="drop", final_norm="ln_f", norm_style="pre_ln"),
    Family("llama", ("llama", "mistral", "qwen2"), causal=True, added_tokens="BOS (Llama, Mistral); none (Qwen2)",
           token_type_ids=False, positions="rotary", embedding_output="embed_tokens", final_norm="norm",
           norm_style="pre_ln"),
)}
BY_MODEL_TYPE: dict[str, Family] = {t: family for family in FAMILIES.values() for t in family.model_types}
#: encoder-decoder model types, refused with their own message
ENCODER_DECODER_TYPES = ("t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "led", "longt5", "switch_transformers",
                         "prophetnet", "blenderbot", "fsmt", "encoder-decoder")


def _model_type(config) -> str:
    return config if isinstance(config, str) else str(getattr(config, "model_type", "") or "")


def family_of(config, model: str = "") -> Family:
    """The :class:`Family` of a transformers config (or a ``model_type`` string); :class:`FamilyError` if none.

    ``model`` names the model in the message (e.g. ``"model 'bert' (google-bert/bert-base-uncased)"``).
    """
    model_type = _model_type(config)
    where = model or f"model type {model_type!r}"
    encoder_decoder = model_type in ENCODER_DECODER_TYPES or bool(getattr(config, "is_encoder_decoder", False))
    if encoder_decoder:
        raise FamilyError(
            f"{where}: model_type {model_type!r} is an encoder-decoder model; tokenuni measures one stack of "
            "blocks (hidden_states 0..L of an encoder or a decoder-only model) and does not run encoder-decoder "
            "models. Remove it from `models`, or use an encoder-only model (e.g. BERT, RoBERTa) or a decoder-only "
            "one (e.g. GPT-2, Llama)")
    family = BY_MODEL_TYPE.get(model_type)
    if family is None:
        raise FamilyError(
            f"{where}: model_type {model_type!r} is not a supported family (supported: "
            f"{', '.join(sorted(BY_MODEL_TYPE))}); its special tokens, padding, positions and norm placement are "
            "unknown, so it is refused rather than measured with guesses. Use a supported model, or add the family "
            "to FAMILIES in tokenuni/families.py (with a test in tests/test_families.py)")
    if not family.causal and bool(getattr(config, "is_decoder", False)):
        raise FamilyError(f"{where}: a {model_type} configured as a causal decoder (is_decoder: true) is not "
                          "supported; tokenuni runs this family as a bidirectional encoder. Use the encoder "
                          "checkpoint (is_decoder: false)")
    return family


# -- tokenizer, inputs, positions ------------------------------------------------------------------
def prepare_tokenizer(tokenizer, family: Family, model: str = "") -> None:
    """Right padding for every family; a decoder without a pad token pads with its end-of-text token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise FamilyError(f"{model or 'model'}: the tokenizer has neither a pad token nor an end-of-text "
                              "token to pad with; give the tokenizer a pad_token (tokenizer.pad_token = ...; "
                              "save_pretrained) in the model folder")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def max_positions(config) -> int | None:
    """How many tokens a model takes: ``max_position_embeddings``, less the offset of RoBERTa/MPNet positions."""
    family = family_of(config)
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if n is None:
        return None
    if family.positions == "offset":
        return int(n) - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return int(n)


def sentence_token_index(attention_mask: torch.Tensor, sentence_token: str) -> torch.Tensor:
    """(B,) index of the token ``cls`` pooling reads: the first real token, or the last real one.

    Found from the mask, so right and left padding give the same token.
    """
    import torch

    if sentence_token not in ("first", "last"):
        raise ValueError(f"sentence_token must be 'first' or 'last', got {sentence_token!r}")
    real = attention_mask.bool()
    index = torch.arange(real.shape[-1], device=real.device).expand_as(real)
    if sentence_token == "first":
        return index.masked_fill(~real, real.shape[-1]).amin(dim=-1)
    return index.masked_fill(~real, -1).amax(dim=-1)


def sentence_token_states(hidden: torch.Tensor, attention_mask: torch.Tensor, sentence_token: str):
    """(B, T, d) → (B, d): the state at :func:`sentence_token_index` of each row."""
    index = sentence_token_index(attention_mask.to(hidden.device), sentence_token)
    return hidden[range(hidden.shape[0]), index]


# -- modules ---------------------------------------------------------------------------------------
def module_at(model, path: str):
    """The submodule at a dotted ``path`` whose integer parts index module lists (-1 = the last); None if absent."""
    module = model
    for part in path.split("."):
        if part.lstrip("-").isdigit():
            try:
                module = module[int(part)]
            except (TypeError, IndexError):
                return None
        else:
            module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass
class NormSite:
    """Where SoftDecay ``before_final_norm`` goes: a norm module, and at which of its calls per forward pass."""

    module: object
    path: str
    #: calls of ``module`` in one forward pass; the hook acts at the last one (ALBERT: one per depth it serves)
    applications: int


def final_norm_site(model) -> NormSite:
    """The module and call at which SoftDecay ``before_final_norm`` applies (see the module docstring)."""
    config = model.config
    family = family_of(config)
    module = module_at(model, family.final_norm)
    if module is None:
        raise FamilyError(f"{type(model).__name__} ({family.name} family) has no module {family.final_norm}; "
                          "SoftDecay before_final_norm cannot be placed — use placement: after_final_norm")
    applications = 1
    if family.shared_layers:  # ALBERT: block i runs group int(i / (L / G)); the last group serves several depths
        layers, groups = int(config.num_hidden_layers), int(getattr(config, "num_hidden_groups", 1))
        applications = sum(int(i / (layers / groups)) == groups - 1 for i in range(layers))
    return NormSite(module, family.final_norm, applications)


# -- checks before any job -------------------------------------------------------------------------
def local_model_config(spec: dict) -> dict | None:
    """The ``config.json`` of a model that resolves to a local folder (path, package, cache); None for the hub."""
    from tokenuni.sources import SourceError, resolve_model

    try:
        source = resolve_model(spec)
    except SourceError:
        return None  # reported by tokenuni.sources.check_sources
    if not source.local:
        return None
    try:
        return json.loads((Path(source.location) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def family_problems(config: dict) -> list[str]:
    """Every model of a study config that tokenuni cannot run as asked, one line each, naming the key and the fix.

    For each model that resolves locally (its ``config.json`` is read; weights are not loaded): an
    unsupported or encoder-decoder architecture, an encoder configured as a decoder, and a decoder
    whose tokenizer has nothing to pad with. Hub models that are not on disk are checked when their
    job loads them (:func:`tokenuni.embed.load_model`), before any forward pass. ``cls`` pooling on a
    causal model is not a problem: it reads the last real token (module docstring).
    """
    from tokenuni.config import model_specs

    problems = []
    for key, spec in model_specs(config).items():
        raw = local_model_config(spec)
        if raw is not None:
            problems += model_family_problems(raw, spec, f"model '{key}' ({spec['id']})")
    return problems


def model_family_problems(raw_config: dict, spec: dict, where: str) -> list[str]:
    """What :func:`family_problems` finds for one local model, from its parsed ``config.json``."""
    from types import SimpleNamespace

    try:
        family = family_of(SimpleNamespace(**raw_config), where)
    except FamilyError as error:
        return [str(error)]
    if family.causal:
        problem = _decoder_tokenizer_problem(spec, where)
        if problem:
            return [problem]
    return []


def _decoder_tokenizer_problem(spec: dict, where: str) -> str | None:
    from tokenuni.sources import resolve_model

    folder = Path(resolve_model(spec).location)
    tokens = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            tokens.update({k: v for k, v in json.loads((folder / name).read_text(encoding="utf-8")).items()
                           if k in ("pad_token", "eos_token") and v})
        except (OSError, ValueError):
            continue
    if not tokens and not (folder / "tokenizer_config.json").exists():
        return None  # no tokenizer files to read: the job's load reports what is missing
    if not tokens:
        return (f"{where}: a causal decoder whose tokenizer has neither a pad_token nor an eos_token; batches "
                "need one to pad with. Set tokenizer.pad_token (or eos_token) and save_pretrained into its folder")
    return None


def require_supported_families(config: dict) -> None:
    """Raise one :class:`FamilyError` listing everything :func:`family_problems` finds."""
    problems = family_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise FamilyError(f"{len(problems)} model(s) of this study cannot be run as configured:\n{lines}")
