"""GlueModel: an encoder with a GLUE head and the token-uniformity repairs as variants.

One model class for every fine-tuning variant of the study (config ``variant`` dict)::

    {"softdecay": null | {"alpha": -0.2, "trainable": true, "lr": 1e-3,
                          "placement": "before_final_norm" | "after_final_norm"},
     "istar": null | {"lambda": -1.0, "zeta": 0.2, "layers": [-1], "c0_tokens": 250000},
     "cosine_regulariser": null | {"lambda": 0.1, "layers": [-1]},
     "fusion": null | {"kind": "concat" | "max" | "gate", "layers": [...] | "all"},
     "pooling": "cls" | "mean"}                       # default cls; a "name" key is ignored

Variants combine freely (e.g. SoftDecay + I-STAR: the regulariser then sees the soft-decayed last
layer). The baseline is every entry null.

Head: the pooled representation (B, d) — the sentence token's last hidden state (``cls``: the first
token of an encoder, the last real token of a causal decoder, the rule of sentence pooling,
:func:`tokenuni.families.sentence_token_index`; not the HF pooler, which the model does not use and
whose parameters are left out of the optimiser groups), the mean over real tokens (``mean``), or the
fusion of several layers — then dropout 0.1 and a Linear to ``num_labels`` logits (cross-entropy) or
to 1 output (regression, MSE; logits shaped (B,)). The encoder runs in float32 with
``output_hidden_states=True`` and the inputs its family takes (token type ids only where the model has
them, position ids over the real tokens for decoders: :meth:`tokenuni.families.Family.model_inputs`);
``GlueOutput.hidden_states`` is its tuple (index 0 = embedding output, i = output of block i; for
decoders the last is the output of the final norm), with the SoftDecay placement applied.
I-STAR, the cosine regulariser and fusion read these hidden states over the real tokens (attention
mask 1). The encoder's family must be supported (:func:`tokenuni.families.family_of`; T5 and other
encoder-decoders are refused).

SoftDecay placements (Yan et al., UAI 2022; :mod:`tokenuni.finetune.softdecay_layer`):

``before_final_norm``  SoftDecay of the input of the family's final norm
    (:func:`tokenuni.families.final_norm_site`), with a forward pre-hook, so the encoder's own
    parameters and ``state_dict`` are untouched:

    * post-LN encoders (BERT, RoBERTa, MPNet, DistilBERT, ALBERT) end a block with
      ``LayerNorm(dropout(dense(h)) + residual)``, so "before the final LayerNorm" is *inside* the
      last block — the input of its output LayerNorm (``encoder.layer[-1].output.LayerNorm``;
      DistilBERT ``transformer.layer[-1].output_layer_norm``), as their code does (without their
      second residual addition). ALBERT's shared layer runs at every depth: the hook counts the calls
      of ``full_layer_layer_norm`` in one forward pass and acts only at the last one, so the earlier
      layers are untouched.
    * pre-norm decoders (GPT-2, Llama, Qwen2): the input of the final ``ln_f`` / ``norm`` after the
      last block; the returned last hidden state is that norm's output.

    The attention mask reaches the hook through :meth:`GlueModel.forward` (a direct call of
    ``model.encoder`` sees every row as real).
``after_final_norm``   SoftDecay of the encoder's final output ``hidden_states[-1]`` (for BERT, the
    output of that LayerNorm, i.e. the last hidden state), for any architecture; the returned
    ``hidden_states[-1]`` is the transformed tensor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from collections.abc import Callable, Iterable

import torch

from tokenuni.families import family_of, final_norm_site
from tokenuni.finetune.fusion import POOLINGS, LayerFusion, pool
from tokenuni.finetune.regularisers import CosineRegulariser, IStar, resolve_layers
from tokenuni.finetune.softdecay_layer import SoftDecay

log = logging.getLogger(__name__)

PLACEMENTS = ("before_final_norm", "after_final_norm")
VARIANT_KEYS = {"softdecay", "istar", "cosine_regulariser", "fusion", "pooling", "name"}
_SUBKEYS = {
    "softdecay": {"alpha", "trainable", "lr", "placement"},
    "istar": {"lambda", "zeta", "layers", "c0_tokens"},
    "cosine_regulariser": {"lambda", "layers"},
    "fusion": {"kind", "layers"},
}
HEAD_DROPOUT = 0.1


@dataclass
class GlueOutput:
    """What :meth:`GlueModel.forward` returns."""

    logits: torch.Tensor  #: (B, num_labels), or (B,) for regression
    hidden_states: tuple  #: per layer (B, T, d); 0 = embedding output, i = block i (SoftDecay applied)
    pooled: torch.Tensor  #: (B, d), the head's input before dropout


class _PreNormSoftDecay:
    """Forward pre-hook: SoftDecay of a norm's input at its ``applications``-th call of a forward pass.

    GlueModel.forward sets the mask and resets the count before each encoder call; the count lets
    ALBERT's shared layer be transformed at its last depth only (one call per depth it serves).
    """

    def __init__(self, softdecay: SoftDecay, applications: int = 1):
        self.softdecay = softdecay
        self.applications = int(applications)
        self.mask: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, module, args):
        self.calls += 1
        if self.calls != self.applications:
            return None
        return (self.softdecay(args[0], self.mask),) + tuple(args[1:])


def _check_keys(where: str, given: dict, allowed: set) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise ValueError(f"variant {where}: unknown keys {sorted(unknown)}; known: {sorted(allowed)}")


class GlueModel(torch.nn.Module):
    """Encoder + GLUE head + the variant's SoftDecay / I-STAR / cosine regulariser / fusion."""

    def __init__(self, encoder, *, num_labels: int, regression: bool, variant: dict | None):
        super().__init__()
        variant = dict(variant or {})
        _check_keys("", variant, VARIANT_KEYS)
        for key, allowed in _SUBKEYS.items():
            if variant.get(key) is not None:
                if not isinstance(variant[key], dict):
                    raise ValueError(f"variant {key}: expected a mapping or null, got {variant[key]!r}")
                _check_keys(key, variant[key], allowed)
        self.variant = variant
        self.regression = bool(regression)
        self.num_labels = 1 if self.regression else int(num_labels)
        if not self.regression and self.num_labels < 2:
            raise ValueError(f"classification needs num_labels >= 2, got {num_labels}")
        self.pooling = variant.get("pooling") or "cls"
        if self.pooling not in POOLINGS:
            raise ValueError(f"variant pooling must be one of {POOLINGS}, got {self.pooling!r}")

        self.encoder = encoder.float()
        config = encoder.config
        self.family = family_of(config, f"model {getattr(config, 'name_or_path', '') or type(encoder).__name__}")
        hidden_size = int(config.hidden_size)
        self.n_hidden = int(config.num_hidden_layers) + 1

        # SoftDecay
        self.softdecay = None
        self.softdecay_placement = None
        self.softdecay_lr = None
        self._pre_norm_hook = None
        spec = variant.get("softdecay")
        if spec is not None:
            self.softdecay = SoftDecay(alpha=float(spec.get("alpha", -0.2)), trainable=bool(spec.get("trainable", True)))
            self.softdecay_lr = spec.get("lr")
            self.softdecay_placement = spec.get("placement", "before_final_norm")
            if self.softdecay_placement not in PLACEMENTS:
                raise ValueError(f"softdecay placement must be one of {PLACEMENTS}, got {self.softdecay_placement!r}")
            if self.softdecay_placement == "before_final_norm":
                site = final_norm_site(encoder)
                self._pre_norm_hook = _PreNormSoftDecay(self.softdecay, site.applications)
                site.module.register_forward_pre_hook(self._pre_norm_hook)

        # regularisers
        spec = variant.get("istar")
        self.istar = None
        if spec is not None:
            if "lambda" not in spec:
                raise ValueError("variant istar: 'lambda' is required")
            self.istar = IStar(spec["lambda"], zeta=spec.get("zeta", 0.2), layers=spec.get("layers", [-1]),
                               c0_tokens=spec.get("c0_tokens", 250_000)).bind(self.n_hidden)
        spec = variant.get("cosine_regulariser")
        self.cosine_regulariser = None
        if spec is not None:
            if "lambda" not in spec:
                raise ValueError("variant cosine_regulariser: 'lambda' is required")
            self.cosine_regulariser = CosineRegulariser(spec["lambda"], layers=spec.get("layers", [-1])).bind(self.n_hidden)

        # fusion and head
        spec = variant.get("fusion")
        self.fusion = None
        if spec is not None:
            layers = resolve_layers(spec.get("layers", "all"), self.n_hidden)
            self.fusion = LayerFusion(spec.get("kind"), layers, hidden_size, self.pooling, self.family.sentence_token)
        self.dropout = torch.nn.Dropout(HEAD_DROPOUT)
        self.head = torch.nn.Linear(hidden_size, self.num_labels)
        std = float(getattr(config, "initializer_range", 0.02))
        torch.nn.init.normal_(self.head.weight, std=std)
        torch.nn.init.zeros_(self.head.bias)
        #: detached values of the last regularisation() call (e.g. isoscore_star, mean_cosine), for logging
        self.last_regulariser_values: dict[str, float] = {}

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, input_ids, attention_mask, token_type_ids=None) -> GlueOutput:
        inputs = self.family.model_inputs(input_ids, attention_mask, token_type_ids)
        hook = self._pre_norm_hook
        if hook is not None:
            hook.mask, hook.calls = attention_mask, 0
        try:
            out = self.encoder(**inputs, output_hidden_states=True, return_dict=True)
        finally:
            if hook is not None:
                hook.mask = None
        if hook is not None and hook.calls != hook.applications:
            raise RuntimeError(f"SoftDecay before_final_norm: the {self.family.name} norm it hooks ran {hook.calls} "
                               f"time(s) in one forward pass, expected {hook.applications}")
        hidden_states = tuple(out.hidden_states)
        if len(hidden_states) != self.n_hidden:
            raise RuntimeError(f"the encoder returned {len(hidden_states)} hidden states, expected {self.n_hidden}")
        if self.softdecay is not None and self.softdecay_placement == "after_final_norm":
            hidden_states = hidden_states[:-1] + (self.softdecay(hidden_states[-1], attention_mask),)
        if self.fusion is not None:
            pooled = self.fusion(hidden_states, attention_mask)
        else:
            pooled = pool(hidden_states[-1], attention_mask, self.pooling, self.family.sentence_token)
        logits = self.head(self.dropout(pooled))
        if self.regression:
            logits = logits.squeeze(-1)
        return GlueOutput(logits=logits, hidden_states=hidden_states, pooled=pooled)

    def task_loss(self, output: GlueOutput, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (classification, integer labels) or MSE (regression, float targets)."""
        if self.regression:
            return torch.nn.functional.mse_loss(output.logits, labels.to(output.logits.dtype))
        return torch.nn.functional.cross_entropy(output.logits, labels.long())

    def regularisation(self, output: GlueOutput, attention_mask) -> dict[str, torch.Tensor]:
        """Named extra loss terms, already multiplied by their λ: ``istar``, ``cosine``; {} for the baseline.

        Also records their unweighted values (``isoscore_star``, ``mean_cosine``) in
        :attr:`last_regulariser_values`.
        """
        terms, values = {}, {}
        if self.istar is not None:
            terms["istar"], score = self.istar(output.hidden_states, attention_mask)
            values["isoscore_star"] = float(score)
        if self.cosine_regulariser is not None:
            terms["cosine"], cosine = self.cosine_regulariser(output.hidden_states, attention_mask)
            values["mean_cosine"] = float(cosine)
        self.last_regulariser_values = values
        return terms

    # -- training hooks ------------------------------------------------------------------------------
    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW groups: weights with decay; biases and norm scales (1-D) without; SoftDecay α alone.

        α gets the variant's ``softdecay.lr`` (default ``lr``) and no weight decay (their code parses an
        α learning rate but never applies it). The unused HF pooler and frozen parameters are left out.
        Each group has a ``name``.
        """
        alpha = self.softdecay.alpha if self.softdecay is not None else None
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad or parameter is alpha or name.startswith("encoder.pooler."):
                continue
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
        groups = [{"name": "decay", "params": decay, "lr": float(lr), "weight_decay": float(weight_decay)},
                  {"name": "no_decay", "params": no_decay, "lr": float(lr), "weight_decay": 0.0}]
        if alpha is not None and alpha.requires_grad:
            alpha_lr = float(lr if self.softdecay_lr is None else self.softdecay_lr)
            groups.append({"name": "softdecay_alpha", "params": [alpha], "lr": alpha_lr, "weight_decay": 0.0})
        return [group for group in groups if group["params"]]

    def start_epoch(self, sample_hidden: Callable[[], Iterable]) -> None:
        """Per-epoch hook: I-STAR rebuilds C0 from ``sample_hidden()`` (skipped when ζ = 0 or no I-STAR).

        ``sample_hidden()`` yields ``(hidden_states, attention_mask)`` batches computed without grad,
        preferably by this model's forward (so SoftDecay and the mask are applied).
        """
        if self.istar is not None and self.istar.zeta > 0:
            self.istar.rebuild_c0(sample_hidden)

    @property
    def alpha(self) -> float | None:
        """The SoftDecay α in use (after the keep-negative clamp), or None."""
        return None if self.softdecay is None else float(self.softdecay.effective_alpha().detach())
