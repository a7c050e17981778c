"""One fine-tuning job: (model, GLUE task, variant, seed) → dev metrics, curves, and the geometry of the
fine-tuned model's layers on the dev set.

The geometry is measured on the hidden states the fine-tuned :class:`GlueModel` itself produces on the
dev sentences (so a SoftDecay variant's last layer is the transformed one): they are written to a
temporary Arrow dump (:mod:`tokenuni.store`) and streamed through the same metric accumulators as
the pretrained dumps (:func:`tokenuni.metrics.compute_metric`) — the I-STAR paper's question, "does
less isotropy help?", then has both answers in one table.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def dev_geometry(model, tokenizer, texts_a, texts_b, *, metrics: list[str], model_key: str, task: str,
                 batch_size: int, max_length: int, device) -> pd.DataFrame:
    """The metrics suite on every layer of the fine-tuned model's dev-set hidden states (special tokens
    excluded, as for pretrained dumps)."""
    import torch

    from tokenuni.metrics import compute_metric
    from tokenuni.store import DumpWriter

    model.eval()
    encoded = tokenizer(list(texts_a), None if texts_b is None else list(texts_b), truncation=True,
                        max_length=max_length, return_special_tokens_mask=True)
    ids, specials = encoded["input_ids"], encoded["special_tokens_mask"]
    frequency = np.bincount(np.concatenate([np.asarray(i) for i in ids]))
    tables = []
    with tempfile.TemporaryDirectory(prefix="tokenuni-finetune-") as tmp:
        path = Path(tmp) / "dev.arrow"
        writer = None
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                chunk = list(range(start, min(start + batch_size, len(ids))))
                features = tokenizer.pad({"input_ids": [ids[i] for i in chunk],
                                          **({"token_type_ids": [encoded["token_type_ids"][i] for i in chunk]}
                                             if "token_type_ids" in encoded else {})}, return_tensors="pt")
                features = {k: v.to(device) for k, v in features.items()}
                output = model(**features)
                mask = features["attention_mask"].bool()
                layers = [h[mask].float().cpu().numpy() for h in output.hidden_states]
                if writer is None:
                    writer = DumpWriter(path, n_layers=len(layers), hidden_size=layers[0].shape[1],
                                        metadata={"model_id": model_key, "corpus": f"{task}-dev", "layernorm": [],
                                                  "family": model.family.name,
                                                  "is_decoder": str(model.family.causal).lower()})
                lengths = [len(ids[i]) for i in chunk]
                writer.write({
                    "sentence_id": np.repeat(np.asarray(chunk), lengths),
                    "position": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
                    "token_id": np.concatenate([ids[i] for i in chunk]).astype(np.int32),
                    "token": [""] * int(sum(lengths)),
                    "special": np.concatenate([np.asarray(specials[i], dtype=bool) for i in chunk]),
                    "frequency": frequency[np.concatenate([ids[i] for i in chunk])],
                }, layers)
        writer.close()
        for name in metrics:
            table = compute_metric(path, name, {}, model=model_key, corpus=f"{task}-dev", device=device, progress=False)
            tables.append(table[table["component"].isna()])
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def run_finetune(model_spec: dict, *, model_key: str, task: str, variant_name: str, variant: dict, seed: int,
                 settings: dict, mirror_root, device, log_metric=None, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Fine-tune ``model_spec`` on ``task`` with ``variant`` and ``seed``; return (summary, geometry table).

    ``settings``: epochs, lr, batch_size, max_length, weight_decay, warmup_ratio, grad_accumulation,
    max_train_examples, max_dev_examples, eval_every, geometry_metrics (the config's ``finetune`` block).
    """
    from tokenuni.embed import effective_max_length, load_model
    from tokenuni.finetune.model import GlueModel
    from tokenuni.finetune.train import finetune, set_seed
    from tokenuni.glue import load_task, task_spec

    spec = task_spec(task)
    train = load_task(task, "train", mirror_root, max_examples=settings.get("max_train_examples"), seed=0)
    dev = load_task(task, "dev", mirror_root, max_examples=settings.get("max_dev_examples"), seed=0)
    set_seed(seed)  # before the head is initialised
    tokenizer, encoder = load_model(model_spec, device)
    # capped at the positions the model takes (RoBERTa/MPNet: max_position_embeddings - padding_idx - 1)
    settings = {**settings, "max_length": effective_max_length({"max_length": settings["max_length"]}, encoder)}
    regression = spec["kind"] == "regression"
    model = GlueModel(encoder, num_labels=spec["num_labels"], regression=regression, variant=variant)
    started = time.perf_counter()
    steps = settings["epochs"] * -(-len(train[0]) // (settings["batch_size"] * settings["grad_accumulation"]))
    summary = finetune(model, tokenizer, task, train, dev, epochs=settings["epochs"], lr=settings["lr"],
                       batch_size=settings["batch_size"], max_length=settings["max_length"],
                       weight_decay=settings["weight_decay"], warmup_ratio=settings["warmup_ratio"],
                       grad_accumulation=settings["grad_accumulation"], seed=seed, device=device, log=log_metric,
                       eval_every=settings.get("eval_every"), progress=progress,
                       log_every=max(1, min(10, steps // 20)))  # ≥ 20 points per curve when there are steps for it
    geometry = dev_geometry(model, tokenizer, dev[0], dev[1], metrics=settings["geometry_metrics"],
                            model_key=model_key, task=task, batch_size=settings["batch_size"],
                            max_length=settings["max_length"], device=summary["device"])
    summary = {**summary, "variant": variant_name, "model": model_key, "seconds_total": time.perf_counter() - started}
    log.info("%s / %s / %s / seed %d: %s = %.4f in %.0f s", model_key, task, variant_name, seed,
             summary["main_metric"], summary["main"], summary["seconds_total"])
    return summary, geometry


def summary_table(results: pd.DataFrame, geometry: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean ± std over seeds of the main dev metric per (model, task, variant), with the isotropy of the
    fine-tuned last layer (IsoScore, average cosine) beside it."""
    keys = ["model", "task", "variant"]
    grouped = results.groupby(keys, sort=False)
    # geometry rows: per (model, task, variant, seed, layer, metric, metric_variant); averaged over seeds
    table = grouped["main"].agg(["mean", "std", "count"]).rename(columns={"count": "seeds"})
    table["metric"] = grouped["main_metric"].first()
    table["mean ± std"] = [f"{100 * m:.2f} ± {100 * (s if s == s else 0):.2f}" for m, s in zip(table["mean"], table["std"])]
    if geometry is not None and len(geometry):
        last = geometry[geometry["layer"] == geometry.groupby(keys)["layer"].transform("max")]
        for label, metric, variant in (("isoscore (last layer)", "isoscore", ""),
                                       ("avg cosine (last layer)", "avg_cosine", "uncentred")):
            rows = last[(last["metric"] == metric) & (last["metric_variant"].fillna("") == variant)]
            if len(rows):
                table[label] = rows.groupby(keys)["value"].mean().reindex(table.index).round(4)
    return table[["metric", "mean ± std", "seeds", *[c for c in table.columns if "last layer" in c]]]
