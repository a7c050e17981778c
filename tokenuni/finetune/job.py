"""One fine-tuning job: (model, GLUE task, variant, seed) → dev metrics, curves, and the geometry of the
fine-tuned model's layers on the dev set.

The geometry is measured on the hidden states the fine-tuned :class:`GlueModel` itself produces on the
dev sentences in its final evaluation (so a SoftDecay variant's last layer is the transformed one, and
no second forward pass is needed: :class:`DevStates`): they are written to a temporary Arrow dump
(:mod:`tokenuni.store`) and streamed through the same metric accumulators as the pretrained dumps
(:func:`tokenuni.metrics.suite.metric_tables`: the metrics suite, one read of the dev dump) — the I-STAR
paper's question, "does less isotropy help?", then has both answers in one table. Each job also keeps its per-example dev predictions, which the
study's statistics pair across variants (:mod:`tokenuni.finetune.statistics`).
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError

log = logging.getLogger(__name__)


class DevStates:
    """Keeps the fine-tuned model's dev-set hidden states from the final evaluation, for the geometry.

    Passed as ``on_final_dev_batch`` to :func:`tokenuni.finetune.train.finetune`: every batch of the final
    dev evaluation (the forward pass that produced the reported metrics) streams its real tokens (padding
    excluded; special tokens flagged, as in pretrained dumps) into a temporary Arrow dump
    (:mod:`tokenuni.store`), so the geometry needs no second forward pass over the dev set. On CUDA the
    evaluation runs under bf16/fp16 autocast, so the states are that precision cast to float32.
    ``max_sentences`` keeps a seeded random subset of the dev examples (``numpy.random.default_rng(seed)``,
    without replacement; None: all): the metrics suite costs more per token than the forward pass, and
    a few hundred sentences (thousands of tokens, ≫ the hidden size) measure a layer's isotropy well.
    :meth:`metrics` then streams the dump through the metric accumulators; :meth:`close` removes it.
    """

    def __init__(self, dev, *, model_key: str, task: str, family=None, max_sentences: int | None = None,
                 seed: int = 0):
        self.dev = dev  # tokenuni.finetune.train.Encoded
        self.family = family  # tokenuni.families.Family of the model (None: recorded as unknown)
        n = len(dev)
        self.keep = (np.ones(n, dtype=bool) if max_sentences is None or max_sentences >= n else
                     np.isin(np.arange(n), np.random.default_rng(seed).choice(n, size=int(max_sentences), replace=False)))
        self.sentences, self.seed = int(self.keep.sum()), seed
        self.frequency = np.bincount(np.concatenate([np.asarray(i, dtype=np.int64) for i in dev.input_ids]))
        self.model_key, self.corpus = model_key, f"{task}-dev"
        self._tmp = tempfile.TemporaryDirectory(prefix="tokenuni-finetune-")
        self.path = Path(self._tmp.name) / "dev.arrow"
        self.writer = None
        self.seconds = self.cpu_seconds = 0.0  #: time spent keeping the states (inside the evaluation)

    def __call__(self, index, batch, output) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            self._keep(index, batch, output)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu_seconds += time.process_time() - cpu

    def _keep(self, index, batch, output) -> None:
        import torch

        chosen = self.keep[np.asarray(index)]
        if not chosen.any():
            return
        mask = batch["attention_mask"].bool() & torch.as_tensor(chosen, device=batch["attention_mask"].device)[:, None]
        layers = [h[mask].float().cpu().numpy() for h in output.hidden_states]
        if self.writer is None:
            from tokenuni.store import DumpWriter

            self.writer = DumpWriter(self.path, n_layers=len(layers), hidden_size=layers[0].shape[1],
                                     metadata={"model_id": self.model_key, "corpus": self.corpus, "layernorm": [],
                                               **({"family": self.family.name,
                                                   "is_decoder": str(self.family.causal).lower()}
                                                  if self.family is not None else {})})
        rows = [int(i) for i, kept in zip(index, chosen) if kept]
        ids = [np.asarray(self.dev.input_ids[i], dtype=np.int64) for i in rows]
        specials = self.dev.special_tokens_mask
        self.writer.write({
            "sentence_id": np.repeat(np.asarray(rows), [len(i) for i in ids]),
            "position": np.concatenate([np.arange(len(i), dtype=np.int32) for i in ids]),
            "token_id": np.concatenate(ids).astype(np.int32),
            "token": [""] * int(sum(len(i) for i in ids)),
            "special": np.concatenate([np.asarray(specials[i], dtype=bool) for i in rows]) if specials is not None
            else np.zeros(sum(len(i) for i in ids), dtype=bool),
            "frequency": self.frequency[np.concatenate(ids)],
        }, layers)

    def metrics(self, names: list[str], device) -> pd.DataFrame:
        """The metrics suite on every layer of the kept states (scalar rows only), every metric from one read of
        the dump (two when one needs the moments first: the centred cosine family, partition isotropy;
        :func:`tokenuni.metrics.suite.metric_tables`)."""
        from tokenuni.metrics.suite import metric_tables

        if self.writer is None:
            raise RuntimeError("no dev-set hidden states were kept (the final evaluation did not run)")
        self.writer.close()
        if not names:
            return pd.DataFrame()
        tables = metric_tables(self.path, {name: {} for name in names}, model=self.model_key, corpus=self.corpus,
                               device=device)
        return pd.concat([table[table["component"].isna()] for table in tables.values()], ignore_index=True)

    def close(self) -> None:
        self._tmp.cleanup()


def dev_digest(dev) -> str:
    """A digest of the dev examples (texts and labels) a job scored: runs are paired only when they agree."""
    texts_a, texts_b, labels = dev
    digest = hashlib.sha256()
    for text in texts_a:
        digest.update(text.encode("utf-8") + b"\x00")
    for text in texts_b or []:
        digest.update(text.encode("utf-8") + b"\x01")
    digest.update(np.ascontiguousarray(np.asarray(labels, dtype=np.float64)).tobytes())
    return digest.hexdigest()[:16]


def run_finetune(model_spec: dict, *, model_key: str, task: str, variant_name: str, variant: dict, seed: int,
                 settings: dict, mirror_root, device, log_metric=None, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Fine-tune ``model_spec`` on ``task`` with ``variant`` and ``seed``; return (summary, geometry table).

    ``settings``: epochs, lr, batch_size, max_length, weight_decay, warmup_ratio, grad_accumulation,
    max_train_examples, max_dev_examples, eval_every, geometry_metrics, geometry_max_sentences (the
    config's ``finetune`` block).
    The summary holds, besides :func:`tokenuni.finetune.train.finetune`'s keys, ``dev_labels`` (numpy,
    with ``dev_logits``: the per-example dev outputs the study's statistics pair), ``dev_digest``,
    ``train_majority_class`` (the chance predictor; None for regression) and ``timings``: seconds per
    stage — ``imports`` (torch, transformers, the library), ``data`` (reading the task), ``model_load``,
    ``tokenise``, ``train``, ``epoch_hook`` (I-STAR's C0), ``evaluate``, ``geometry`` (keeping the dev
    states and the metrics suite); ``timings_cpu``: the same stages in the process's CPU time (all threads;
    with one thread close to the wall time of an idle machine, so comparable on a busy one).
    """
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    started, started_cpu = time.perf_counter(), time.process_time()

    def lap(stage: str) -> None:
        nonlocal started, started_cpu
        timings[stage], cpu[stage] = time.perf_counter() - started, time.process_time() - started_cpu
        started, started_cpu = time.perf_counter(), time.process_time()

    from tokenuni.embed import effective_max_length, load_model
    from tokenuni.finetune.model import GlueModel
    from tokenuni.finetune.statistics import majority_class
    from tokenuni.finetune.train import Encoded, finetune, set_seed
    from tokenuni.glue import load_task, task_spec

    lap("imports")
    spec = task_spec(task)  # resolved once; the spec itself goes on to loading, training and scoring
    train = load_task(spec, "train", mirror_root, max_examples=settings.get("max_train_examples"), seed=0)
    dev = load_task(spec, "dev", mirror_root, max_examples=settings.get("max_dev_examples"), seed=0)
    lap("data")
    set_seed(seed)  # before the head is initialised
    tokenizer, encoder = load_model(model_spec, device)
    # capped at the positions the model takes (RoBERTa/MPNet: max_position_embeddings - padding_idx - 1)
    settings = {**settings, "max_length": effective_max_length({"max_length": settings["max_length"]}, encoder)}
    regression = spec["regression"]
    model = GlueModel(encoder, num_labels=spec["num_labels"], regression=regression, variant=variant)
    lap("model_load")
    train_data = Encoded(tokenizer, *train, settings["max_length"])
    dev_data = Encoded(tokenizer, *dev, settings["max_length"])
    lap("tokenise")
    steps = settings["epochs"] * -(-len(train[0]) // (settings["batch_size"] * settings["grad_accumulation"]))
    states = DevStates(dev_data, model_key=model_key, task=task, family=model.family,
                       max_sentences=settings.get("geometry_max_sentences"))
    try:
        summary = finetune(model, tokenizer, spec, train_data, dev_data, epochs=settings["epochs"], lr=settings["lr"],
                           batch_size=settings["batch_size"], max_length=settings["max_length"],
                           weight_decay=settings["weight_decay"], warmup_ratio=settings["warmup_ratio"],
                           grad_accumulation=settings["grad_accumulation"], seed=seed, device=device,
                           log=log_metric, eval_every=settings.get("eval_every"), progress=progress,
                           log_every=max(1, min(10, steps // 20)),  # ≥ 20 points per curve when there are steps
                           on_final_dev_batch=states)
        started, started_cpu = time.perf_counter(), time.process_time()
        geometry = states.metrics(settings["geometry_metrics"], summary["device"])
        lap("geometry")
    finally:
        states.close()
    timings["geometry"] += states.seconds
    cpu["geometry"] += states.cpu_seconds
    timings.update(train=summary["train_seconds"], epoch_hook=summary["start_epoch_seconds"],
                   evaluate=summary["eval_seconds"] - states.seconds)
    cpu.update(train=summary["train_cpu_seconds"], epoch_hook=summary["start_epoch_cpu_seconds"],
               evaluate=summary["eval_cpu_seconds"] - states.cpu_seconds)
    summary = {**summary, "variant": variant_name, "model": model_key, "timings": timings, "timings_cpu": cpu,
               "geometry_sentences": states.sentences, "geometry_seed": states.seed,
               "seconds_total": sum(timings.values()), "dev_labels": np.asarray(dev[2]), "dev_digest": dev_digest(dev),
               "train_majority_class": None if regression else majority_class(train[2])}
    log.info("%s / %s / %s / seed %d: %s = %.4f in %.0f s (%s)", model_key, task, variant_name, seed,
             summary["main_metric"], summary["main"], summary["seconds_total"],
             ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return summary, geometry


PREDICTIONS_META = b"tokenuni.finetune"


class PredictionsError(TokenuniError, ValueError):
    """A fine-tuning predictions file that is missing its metadata or does not match the runs it is paired with."""


def write_predictions(path, summary: dict) -> None:
    """The job's per-example dev outputs as Parquet: ``example`` (row of the dev set), ``label``,
    ``prediction`` (class id or score) and, for classification, ``logit_<k>``; the schema metadata
    ``tokenuni.finetune`` holds model, task, variant, seed, main metric, dev digest and the training
    majority class (the chance predictor)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokenuni.store import atomic_path

    logits = np.asarray(summary["dev_logits"], dtype=np.float32)
    labels = np.asarray(summary["dev_labels"])
    columns = {"example": np.arange(len(labels), dtype=np.int32), "label": labels}
    if logits.ndim == 1:
        columns["prediction"] = logits
    else:
        columns["prediction"] = logits.argmax(axis=1).astype(np.int64)
        columns.update({f"logit_{k}": logits[:, k] for k in range(logits.shape[1])})
    meta = {key: summary.get(key) for key in ("model", "task", "variant", "seed", "main_metric", "dev_digest",
                                               "train_majority_class")}
    table = pa.table(columns).replace_schema_metadata({PREDICTIONS_META: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_predictions(path) -> tuple[pd.DataFrame, dict]:
    """(rows, metadata) of a file :func:`write_predictions` wrote."""
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(PREDICTIONS_META)
    if raw is None:
        raise PredictionsError(f"{path}: not a tokenuni fine-tuning predictions file (no {PREDICTIONS_META.decode()} "
                               "metadata); rerun its finetune job")
    return table.to_pandas(), json.loads(raw)
