"""The sufficient statistics of a stream of token batches: per-layer moments, seeded samples, and their file.

The ground the one-pass metrics suite (:mod:`tokenuni.metrics.suite`) and the projection (:mod:`tokenuni.projection`)
stand on, below both (neither imports the other):

* :func:`moment_rows` / :class:`LayerMoments` -- per layer, the :class:`~tokenuni.numerics.MomentSums` of
  z = (x, f, log f, ‖x‖) of the regular and of the special tokens. The embed stage accumulates them while it
  writes a dump and saves them beside it (:func:`moments_path`), so everything that needs the moments before it
  sees the data (partition isotropy's directions, the cosine family's centring) can run in the one read of the
  dump.
* :class:`StatisticsPass` -- a consumer of token batches (from a dump, or from the embed stage when no dump is
  written) that keeps the moments (unless given) and one seeded bottom-k sample per (seed, token set) with every
  layer's vectors; the metrics suite extends it with the metrics' own accumulators.
* :func:`stream_dump` -- the one read of a dump (two when a consumer needs the moments first and the dump has no
  moments file), one float64 conversion per (batch, layer).
* :func:`save_statistics` / :func:`load_statistics` -- one uncompressed ``.npz`` (no pickles): ``plan.json``,
  ``metadata.json`` (the dump's metadata, or the embed stage's without a dump: the provenance that the jobs reading
  the file check, :func:`check_statistics_provenance`), ``reads``, ``n_layers``, ``hidden_size``, ``moments/<set>/<layer>/*``,
  ``sample/<seed>_<set>/*`` (vectors as float32: dump values are float32, bfloat16 or float16, all exact in
  float32); the suite adds ``state/<metric>/<layer>/*`` and ``rows/<metric>.json``.

Modules: :mod:`~tokenuni.statistics.moments`, :mod:`~tokenuni.statistics.sample` (the shared sample),
:mod:`~tokenuni.statistics.stream` (:class:`StatisticsPass`, :func:`stream_dump`), :mod:`~tokenuni.statistics.file`
(the file, :class:`StatisticsError`); every name is importable from ``tokenuni.statistics``.
"""
from __future__ import annotations

import logging

from tokenuni.statistics.file import (  # noqa: F401
    StatisticsError, _load_npz, _save_npz, check_statistics_provenance, json_array, json_default, json_value,
    load_statistics, save_statistics, statistics_size)
from tokenuni.statistics.moments import TOKEN_SETS, LayerMoments, moment_rows, moments_path  # noqa: F401
from tokenuni.statistics.sample import SharedSample, sample_for_layer  # noqa: F401
from tokenuni.statistics.stream import StatisticsPass, check_finite, index_tensors, stream_dump  # noqa: F401

log = logging.getLogger(__name__)
