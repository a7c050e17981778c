"""A fine-tuned model's outputs: logits, the task loss, predictions (:func:`predict`) and the dev
evaluation of the loop (:mod:`tokenuni.finetune.train`)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tokenuni.finetune.batches import Encoded, _model_inputs
from tokenuni.finetune.runtime import _autocast, _device, resolve_precision
from tokenuni.glue import glue_metrics


def _logits(output):
    logits = output.logits
    return logits.squeeze(-1) if logits.ndim == 2 and logits.shape[-1] == 1 else logits


def task_loss(logits, labels, regression: bool):
    """Cross-entropy on class ids, or mean squared error on scores (STS-B), in float32."""
    import torch.nn.functional as F

    if regression:
        return F.mse_loss(logits.float().reshape(-1), labels.float().reshape(-1))
    return F.cross_entropy(logits.float(), labels.long())


# -- inference -------------------------------------------------------------------------------------
def _infer(model, encoded: Encoded, batch_size: int, device, precision: str, progress: bool = False,
           on_batch: Callable | None = None):
    """Logits of every row of ``encoded`` in input order (float32 numpy), batched longest first.

    ``on_batch(index, batch, output)``, when given, sees every batch's rows (indices into ``encoded``),
    inputs and model output (e.g. to keep the hidden states of the final evaluation).
    """
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    order = np.argsort(-encoded.lengths, kind="stable")
    chunks, rows = [], []
    try:
        with torch.inference_mode(), _autocast(precision, device):
            for start in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch", disable=not progress,
                              leave=False):
                index = order[start:start + batch_size]
                batch = encoded.batch(index, device)
                output = model(**_model_inputs(batch))
                chunks.append(_logits(output).float().cpu().numpy())
                rows.append(index)
                if on_batch is not None:
                    on_batch(index, batch, output)
    finally:
        model.train(was_training)
    logits = np.concatenate(chunks, axis=0)
    out = np.empty_like(logits)
    out[np.concatenate(rows)] = logits
    return out


def _to_predictions(logits: np.ndarray) -> np.ndarray:
    return logits if logits.ndim == 1 else logits.argmax(axis=1)


def predict(model, tokenizer, texts_a, texts_b=None, batch_size: int = 32, max_length: int = 128, device="cpu", *,
            precision: str = "auto", return_logits: bool = False, progress: bool = False) -> np.ndarray:
    """Predictions of ``model`` for (pairs of) texts: class ids (N,), or scores (N,) for a regression model.

    ``return_logits`` gives the raw outputs instead ((N, C) logits, or (N,) scores). The model runs in
    eval mode under ``torch.inference_mode`` (and bf16/fp16 autocast on CUDA, see :func:`resolve_precision`),
    on batches sorted by length; the output is in input order. The model's train/eval mode is restored.
    """
    device = _device(device)
    precision = resolve_precision(precision, device)
    encoded = Encoded(tokenizer, texts_a, texts_b, None, max_length)
    logits = _infer(model, encoded, batch_size, device, precision, progress)
    return logits if return_logits else _to_predictions(logits)


def _evaluate(model, encoded: Encoded, task: dict, batch_size: int, device, precision: str,
              on_batch: Callable | None = None) -> tuple[dict[str, float], np.ndarray]:
    """(dev metrics with ``loss``, logits in input order)."""
    import torch

    logits = _infer(model, encoded, batch_size, device, precision, on_batch=on_batch)
    regression = task["regression"]
    metrics = glue_metrics(task, _to_predictions(logits), encoded.labels)
    loss = task_loss(torch.as_tensor(logits), torch.as_tensor(encoded.labels), regression)
    metrics["loss"] = float(loss)
    return metrics, logits
