"""``tokenuni check``: what the study's first jobs would find out, found before any job starts.

:func:`study_problems` gathers, as one list of messages (each naming the config key, the file or the
model, and the fix):

1. the sources (:func:`tokenuni.sources.check_sources`): every model and corpus resolvable, the hub
   reachable where something needs it;
2. every local model resolved as a job would load it, without loading a tensor: ``config.json``
   parsed and its depth (``num_hidden_layers``) and width known, tokenizer files present, weight files
   present (every shard of a sharded index), each ``*.safetensors`` header readable (the JSON header
   only, and every tensor's byte range inside the file), and the header's tensor shapes equal to those
   of the architecture the config describes (transformers builds it on the ``meta`` device: no
   memory, no weights) — a mismatch there would otherwise end the embed job with transformers'
   advice to set ``ignore_mismatched_sizes``;
3. the config's references against those facts: ``sts.poolings`` layers, the fine-tuning variants'
   layers (I-STAR, the cosine regulariser, fusion), ``projection.layers`` and ``components``, the STS
   transforms' parameters (whitening ``k`` and all-but-the-top ``d_removed`` against the width);
4. every corpus read through its reader as the import job reads it (every row checked, see
   :mod:`tokenuni.corpora`), with its counts: STS datasets paired and scored, cluster counts of
   ``cluster_removal`` against the sentences it is fit on; the GLUE tasks' mirror files likewise;
5. the model family of each local model first (:func:`tokenuni.families.model_family_problems`: an
   architecture the stages run, encoder or decoder as configured, a token to pad with); a model of a family
   tokenuni does not run is reported with that alone.

The workflow runs the same check when it starts (``workflow/rules/common.smk``).

Modules: :mod:`~tokenuni.check.models` (2), :mod:`~tokenuni.check.references` (3),
:mod:`~tokenuni.check.data` (4), :mod:`~tokenuni.check.study` (all of them, and the error listing them);
every name is importable from ``tokenuni.check``.
"""
from __future__ import annotations

import logging

from tokenuni.check.data import _Quiet, corpus_problems, glue_problems  # noqa: F401
from tokenuni.check.models import (  # noqa: F401
    _DEPTH_KEYS, _MAX_HEADER, _TOKENIZER_FILES, _WIDTH_KEYS, ModelFacts, _block_zero, _expected_shapes,
    _shape_problems, _weight_files, model_facts, safetensors_header)
from tokenuni.check.references import reference_problems, transform_problems  # noqa: F401
from tokenuni.check.study import StudyCheckError, _problems, require_study, study_problems  # noqa: F401

log = logging.getLogger(__name__)
