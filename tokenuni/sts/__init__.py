"""Unsupervised semantic textual similarity (STS), one package: :mod:`~tokenuni.sts.scoring` (cosine of
pooled sentence embeddings against gold scores, Spearman and Pearson × 100, the STS12–16 protocols, the
mirror's pair counts), :mod:`~tokenuni.sts.evaluation` (one model, pooling and transform over every STS
dataset, with the geometry of the transformed embeddings) and :mod:`~tokenuni.sts.summary` (the papers'-style
tables). The model run that pools the sentence embeddings stays in :mod:`tokenuni.sentences`; the file it
writes is read through :mod:`tokenuni.sentence_store`.

``tokenuni.sts`` called as a function is the notebook API's :func:`tokenuni.api.sts`.
"""
from __future__ import annotations

import sys

from tokenuni.sts.scoring import (CORRELATION_COLUMNS, STS_MIRROR_COUNTS, STSError, check_pair_count, pair_cosines,
                                  split_by_dataset, sts_correlations, sts_dataset_key)

__all__ = ["CORRELATION_COLUMNS", "STS_MIRROR_COUNTS", "STSError", "check_pair_count", "pair_cosines",
           "split_by_dataset", "sts_correlations", "sts_dataset_key"]


class _CallableModule(type(sys.modules[__name__])):
    """``tokenuni.sts`` is this module and, called, the notebook API's :func:`tokenuni.api.sts`: the import
    system binds the submodule ``tokenuni.sts`` to the package's attribute ``sts``, so the notebook's
    ``tokenuni.sts(model, pairs, scores)`` must be the module itself."""

    def __call__(self, model, pairs, scores, pooling="mean", transform="none", **options):
        from tokenuni.api import sts

        return sts(model, pairs, scores, pooling=pooling, transform=transform, **options)


sys.modules[__name__].__class__ = _CallableModule
